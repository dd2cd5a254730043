"""`modelrunner service install|uninstall|status|logs`: the daemon as a launchd or systemd unit."""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from pathlib import Path

from modelrunner.cli.base import Command
from modelrunner.config import Config
from modelrunner.errors import InvalidRequest
from modelrunner.service import (
    ServiceManager,
    ServiceSpec,
    build_spec,
    config_path_for,
    detect,
    ensure_config,
    manager_for,
)
from modelrunner.service.spec import carried_env
from modelrunner.service.units import parse_env

MANAGERS = ("launchd", "systemd")
MANAGER_HELP = "service manager (default: launchd on macOS, systemd on Linux)"


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _probe(path: Path) -> str:
    """Whether a daemon accepts connections on the Unix socket *path* (whoever started it)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return "nothing listening"
    return "a daemon is listening"


class Service(Command):
    name = "service"
    help = "Install, remove or inspect the modelrunner service (launchd agent / systemd user unit)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--manager", choices=MANAGERS, help=MANAGER_HELP)
        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        install = sub.add_parser("install", help="write the service file and start the service")
        install.add_argument(
            "--dry-run", action="store_true", help="print the service file instead of installing"
        )
        install.add_argument(
            "--env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="an extra environment variable for the daemon (repeatable; prefer the config)",
        )
        uninstall = sub.add_parser("uninstall", help="stop the service and remove its file")
        uninstall.add_argument(
            "--dry-run", action="store_true", help="say what would be removed, change nothing"
        )
        status = sub.add_parser(
            "status", help="is the service installed and running (exit 3 if not)"
        )
        status.add_argument(
            "--dry-run", action="store_true", help="accepted: status changes nothing anyway"
        )
        logs = sub.add_parser("logs", help="the daemon's log as the service manager keeps it")
        logs.add_argument("-n", "--lines", type=int, default=100, help="lines to show (100)")
        logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
        logs.add_argument(
            "--dry-run", action="store_true", help="print the command that shows the log"
        )
        # `service install --manager launchd` as well as `service --manager launchd install`:
        # SUPPRESS keeps the action's copy from resetting one given before the action.
        for action in (install, uninstall, status, logs):
            action.add_argument(
                "--manager", choices=MANAGERS, default=argparse.SUPPRESS, help=MANAGER_HELP
            )

    def run(self, args: argparse.Namespace) -> int:
        config = Config.load(Path(args.config) if args.config else None)
        config_path = config_path_for(config, args.config)
        try:
            extra_env = carried_env(config, os.environ) | parse_env(getattr(args, "env", []))
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        spec = build_spec(config, config_path, extra_env=extra_env)
        mgr = manager_for(args.manager or detect(), Path.home())
        action = {
            "install": self._install,
            "uninstall": self._uninstall,
            "status": self._status,
            "logs": self._logs,
        }[args.action]
        return action(mgr, spec, args, config)

    def _install(
        self, mgr: ServiceManager, spec: ServiceSpec, args: argparse.Namespace, config: Config
    ) -> int:
        if args.dry_run:
            _err(f"# {mgr.kind}: would write {mgr.path}")
            sys.stdout.write(mgr.render(spec).decode())
            return 0
        if ensure_config(spec.config_path):
            print(f"wrote a starter config to {spec.config_path}")
        mgr.install(spec)
        for name, value in spec.env.items():
            print(f"env:    {name}={value} (in the service file: it overrides the config)")
        print(f"config: {spec.config_path} (edit it, then reload or restart the service)")
        print("logs:   modelrunner service logs [-f]")
        return 0

    def _uninstall(
        self, mgr: ServiceManager, spec: ServiceSpec, args: argparse.Namespace, config: Config
    ) -> int:
        if args.dry_run:
            verb = "would stop the service and remove" if mgr.path.exists() else "nothing at"
            print(f"{mgr.kind}: {verb} {mgr.path}")
            return 0
        mgr.uninstall()
        print(f"kept: {spec.config_path}, the models and the logs under {spec.home}")
        return 0

    def _status(
        self, mgr: ServiceManager, spec: ServiceSpec, args: argparse.Namespace, config: Config
    ) -> int:
        state = mgr.state()
        sock = config.server.socket
        print(f"manager:   {mgr.kind} ({mgr.label})")
        print(f"file:      {mgr.path} ({'installed' if state.installed else 'not installed'})")
        pid = f", pid {state.pid}" if state.pid else ""
        print(f"state:     {state.detail}{pid}")
        print(f"config:    {spec.config_path}")
        print(f"socket:    {sock} ({_probe(sock)})")
        return 0 if state.running else 3

    def _logs(
        self, mgr: ServiceManager, spec: ServiceSpec, args: argparse.Namespace, config: Config
    ) -> int:
        argv = mgr.logs_argv(spec, args.lines, args.follow)
        if args.dry_run:
            print(shlex.join(argv))
            return 0
        return mgr.run_logs(argv)
