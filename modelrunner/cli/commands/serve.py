"""`modelrunner serve`: run the daemon in the foreground (Unix socket and TCP 127.0.0.1:12434)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelrunner.cli.base import Command
from modelrunner.config import Config


class Serve(Command):
    name = "serve"
    help = "Run the model runner daemon in the foreground (Unix socket and TCP)"
    epilog = (
        "examples:\n"
        "  modelrunner serve\n"
        "  modelrunner serve --port 0 --socket /tmp/mr.sock\n"
        "  modelrunner --config ~/.modelrunner/config.yaml serve --port 12435\n"
        "  MODEL_RUNNER_API_KEYS=sk-mr-1 modelrunner serve --host 0.0.0.0  # TCP needs the key\n"
        "signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads the config file"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--socket", help="Unix socket path (default ~/.modelrunner/run/model-runner.sock)"
        )
        parser.add_argument(
            "--port", type=int, help="TCP port (default 12434, MODEL_RUNNER_PORT; 0 = no TCP)"
        )
        parser.add_argument("--host", help="TCP address (default 127.0.0.1)")
        parser.add_argument(
            "--allow-unauthenticated",
            "--allow-remote",
            dest="allow_remote",
            action="store_true",
            help="allow a non-loopback --host without API keys (server.api_keys): anyone who "
            "reaches it can use and manage your models",
        )

    def run(self, args: argparse.Namespace) -> int:
        from modelrunner.server import daemon

        server: dict[str, Any] = {}
        if args.socket:
            server["socket"] = str(Path(args.socket).expanduser().absolute())
        if args.port is not None:
            server["port"] = args.port
        if args.host:
            server["host"] = args.host
        if args.allow_remote:
            server["allow_unauthenticated"] = True
        overrides = {"server": server} if server else None
        path = Path(args.config).expanduser() if getattr(args, "config", None) else None
        config = Config.load(path, overrides=overrides)
        return daemon.run(config, config_path=path, overrides=overrides)
