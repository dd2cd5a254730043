"""`modelrunner status`: is the daemon up, which version, which llama-server, where it listens."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from modelrunner.cli.base import Command, connect, load_config
from modelrunner.cli.client import DaemonNotRunning

LABELS = {"llama_server": "llama-server"}


class Status(Command):
    name = "status"
    help = "Check whether the daemon is running (exit 1 if not)"
    epilog = "example:\n  modelrunner status"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args: argparse.Namespace) -> int:
        client = connect(args)
        try:
            version = client.get_json("/version") or {}
        except DaemonNotRunning:
            if args.json:
                print(json.dumps({"running": False, "endpoint": client.endpoint.display}))
            raise
        backends = client.get_json("/engines/status") or {}
        info: dict[str, Any] = {"running": True, "endpoint": client.endpoint.display}
        info.update(version if isinstance(version, dict) else {"version": str(version)})
        if not os.environ.get("MODEL_RUNNER_HOST", "").strip():
            port = load_config(args).server.port
            info.setdefault("port", port or None)
        info["backends"] = backends
        if args.json:
            print(json.dumps(info, indent=4, ensure_ascii=False))
            return 0
        print("modelrunner daemon is running")
        for key, value in info.items():
            if key in ("running", "backends"):
                continue
            label = LABELS.get(key) or key.replace("_", " ").capitalize()
            shown = value if not isinstance(value, (dict, list)) else json.dumps(value)
            print(f"{label}: {'-' if shown is None else shown}")
        for backend, state in sorted(backends.items()):
            print(f"{backend}: {state}")
        return 0
