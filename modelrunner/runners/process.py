"""One child process: spawn, log capture, readiness, stop, and the pid records that outlive us.

The only module that starts processes.  Rules (house style §6.3): argv list, own process group,
stdin from /dev/null, stdout+stderr through a pipe that a drain task empties into a rotating log
file and a bounded in-memory tail; stop = SIGTERM to the group, grace, SIGKILL, reap, under a
shield and idempotent.  A pid record (pid, create time, argv) is kept for every live child so the
next daemon can kill what a SIGKILLed one left behind.  Knows nothing of models or scheduling.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import aiohttp
import psutil
import structlog

from modelrunner.runners.engine.cpu import CpuInfo, read_flags, sigill_reason

log = structlog.get_logger(__name__)

QUOTED_LINES = 15  # log lines quoted in an error
QUOTED_CHARS = 4000
LOG_FLUSH_S = 0.05  # runner output is written to its log file in batches this far apart
READY_BATCH_S = 0.25  # a ready runner's output is read this far apart (see batch_output)
PIPE_BYTES = 1 << 20


class ChildFailed(Exception):
    """The child could not start, exited, or stalled; *tail* is the end of its output."""

    def __init__(self, reason: str, tail: str = "", returncode: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tail = tail
        self.returncode = returncode


class LogSink:
    """A per-runner log file rotated by size, plus the last lines kept in memory.

    ``write`` does file I/O: call it from a thread.  ``feed`` (the tail) is loop-side.
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int, tail_lines: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._partial = ""
        self._file: IO[bytes] | None = None
        self._size = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._size = self._file.tell()
        if self._size >= self.max_bytes:
            self._rotate()

    def write(self, chunk: bytes) -> None:
        while chunk and self._file is not None:
            room = self.max_bytes - self._size
            part = chunk
            if len(chunk) > room:
                # Split at the last line end that fits, so files hold whole lines when they can.
                cut = chunk.rfind(b"\n", 0, max(room, 0)) + 1
                part = chunk[: cut or max(room, 1)]
            self._file.write(part)
            self._file.flush()
            self._size += len(part)
            chunk = chunk[len(part) :]
            if self._size >= self.max_bytes or chunk:
                self._rotate()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _rotate(self) -> None:
        self.close()
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("ab")
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        """Keep the last lines of output in memory (decoded leniently)."""
        text = self._partial + chunk.decode("utf-8", errors="replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        self._partial = lines.pop()
        self._tail.extend(lines)

    def tail(self, n: int | None = None, *, complete: bool = False) -> list[str]:
        """The last lines; with *complete*, only those already ended by a newline."""
        lines = list(self._tail) + ([self._partial] if self._partial and not complete else [])
        return lines if n is None else lines[-n:]


async def _read_end(fd: int) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    """A stream reader on the read end of a child's output pipe, and its pausable transport."""
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: room for a batch of output while paused
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return reader, transport


def quote_tail(lines: Sequence[str]) -> str:
    """The last lines of a log, bounded, for an error message."""
    text = "\n".join(lines[-QUOTED_LINES:])
    return text[-QUOTED_CHARS:]


_DIAGNOSES = (
    (
        re.compile(
            r"failed to allocate .*buffer|cudaMalloc failed: out of memory|out of memory|"
            r"unable to allocate|failed to allocate",
            re.I,
        ),
        "not enough memory to load the model",
    ),
    (
        re.compile(
            r"failed to load model|error loading model|exiting due to model loading error|"
            r"gguf_init_from_file|invalid magic",
            re.I,
        ),
        "llama-server failed to load the model",
    ),
)


def diagnose(lines: Sequence[str]) -> str | None:
    """A short human reason from llama-server's output (Docker's ExtractLlamaCppError idea)."""
    text = "\n".join(lines)
    for pattern, reason in _DIAGNOSES:
        if pattern.search(text):
            return reason
    return None


def is_oom(lines: Sequence[str]) -> bool:
    return diagnose(lines) == "not enough memory to load the model"


# --- pid records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PidRecord:
    pid: int
    create_time: float
    argv: list[str]
    socket: str | None
    owner_pid: int
    owner_create_time: float


def _write_record(record_dir: Path, pid: int, argv: Sequence[str], socket: Path | None) -> Path:
    record_dir.mkdir(parents=True, exist_ok=True)
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        created = 0.0
    me = psutil.Process()
    rec = PidRecord(
        pid, created, list(argv), str(socket) if socket else None, me.pid, me.create_time()
    )
    path = record_dir / f"{pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec)), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _same_process(pid: int, create_time: float, argv: Sequence[str] | None = None) -> bool:
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - create_time) > 0.05:
            return False
        return argv is None or p.cmdline() == list(argv)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def sweep_leftovers(record_dir: Path, *, grace_s: float = 2.0) -> list[int]:
    """Kill the process groups of children recorded by a daemon that died; blocking (use a thread).

    A record is acted on only if its process still has the recorded create time and argv (pids are
    reused) and the daemon that wrote it is gone (two daemons must not kill each other's runners).
    """
    killed: list[int] = []
    if not record_dir.is_dir():
        return killed
    for path in sorted(record_dir.glob("*.json")):
        try:
            rec = PidRecord(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if rec.owner_pid != os.getpid() and _same_process(rec.owner_pid, rec.owner_create_time):
            continue  # a live daemon still owns it
        if _same_process(rec.pid, rec.create_time, rec.argv):
            _kill_group(rec.pid, grace_s)
            killed.append(rec.pid)
        if rec.socket:
            Path(rec.socket).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return killed


def _gone(pid: int, deadline: float) -> bool:
    """Wait (blocking) until *pid* is dead or a zombie; never reaps it (it is not ours to reap)."""
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _kill_group(pid: int, grace_s: float) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    if not _gone(pid, time.monotonic() + grace_s):
        log.warning("runner.leftover_kill", pid=pid, grace_s=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _gone(pid, time.monotonic() + 5.0)
    log.info("runner.leftover_killed", pid=pid)


# --- one child --------------------------------------------------------------------------------


class ChildProcess:
    """A spawned child with its log drain; created by ``spawn``, ended by ``terminate``."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        argv: Sequence[str],
        sink: LogSink,
        record: Path | None,
        socket: Path | None,
        output: tuple[asyncio.StreamReader, asyncio.ReadTransport],
        name: str = "llama-server",
    ) -> None:
        self.proc = proc
        self.name = name  # what the child is called in errors (the backend's process)
        self._stdout, self._pipe = output  # the child's stdout and stderr (_read_end)
        # Once the runner is ready its output is read in batches (READY_BATCH_S apart), not line
        # by line: llama-server logs ~10 lines a request, and each read woke the event loop
        # (about a quarter of the daemon's CPU per request; at 50 ms apart a busy runner's
        # batches still cost the daemon 5 % of its CPU).  Loading reads every line at once,
        # since new output is what makes wait_ready poll again.
        self.batch_output = False
        self.pid = proc.pid
        self.argv = list(argv)
        self.sink = sink
        self.socket = socket
        self._record = record
        self.output_bytes = 0
        self._output = asyncio.Event()
        self._drain = asyncio.create_task(self._drain_output(), name=f"drain {proc.pid}")
        self._stopping: asyncio.Task[int] | None = None
        self.exited: asyncio.Task[int] = asyncio.create_task(proc.wait(), name=f"wait {proc.pid}")

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        sink: LogSink,
        env: Mapping[str, str] | None = None,
        record_dir: Path | None = None,
        socket: Path | None = None,
        name: str = "llama-server",
    ) -> ChildProcess:
        """Start *argv* in its own process group, output to *sink*, with a pid record."""
        try:
            await asyncio.to_thread(sink.open)
        except OSError as e:
            raise ChildFailed(f"cannot open the runner log {sink.path}: {e}") from e
        if socket is not None:
            await asyncio.to_thread(socket.unlink, missing_ok=True)  # a stale one breaks the bind
        # Our own pipe rather than asyncio's, so that its reading can be paused (see _drain).
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # own process group, so killpg reaches grandchildren
                env=dict(os.environ if env is None else env),
            )
        except OSError as e:
            os.close(read_fd)
            await asyncio.to_thread(sink.close)
            raise ChildFailed(f"cannot start {argv[0]}: {e}") from e
        finally:
            os.close(write_fd)
        output = await _read_end(read_fd)
        child = cls(proc, argv, sink, None, socket, output, name)
        log.info("runner.spawned", pid=proc.pid, argv=list(argv))
        if record_dir is not None:
            try:
                child._record = await asyncio.to_thread(
                    _write_record, record_dir, proc.pid, argv, socket
                )
            except BaseException:
                await child.terminate(grace_s=0)
                raise
        return child

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def tail(self, n: int | None = None) -> list[str]:
        return self.sink.tail(n)

    async def wait_for_output(self, text: str) -> None:
        """Return once a complete line of output contains *text* (a child signalling readiness)."""
        while not any(text in line for line in self.sink.tail(complete=True)):
            if self.exited.done() and self._drain.done():
                raise ChildFailed(f"exited before printing {text!r}", quote_tail(self.tail()))
            self._output.clear()
            waiter = asyncio.create_task(self._output.wait())
            try:
                await asyncio.wait({waiter, self._drain}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def _drain_output(self) -> None:
        stream = self._stdout
        pending = bytearray()
        flusher: asyncio.Task[None] | None = None

        async def flush() -> None:
            # One thread hop per LOG_FLUSH_S batch, not per line: llama-server logs ~10 lines
            # per request, and a hop each cost the proxy a measurable share of its latency.
            while pending:
                await asyncio.sleep(LOG_FLUSH_S)
                batch = bytes(pending)
                pending.clear()
                await asyncio.to_thread(self.sink.write, batch)

        try:
            while chunk := await stream.read(65536):
                self.sink.feed(chunk)
                self.output_bytes += len(chunk)
                self._output.set()
                pending += chunk
                if flusher is None or flusher.done():
                    if flusher is not None:
                        flusher.result()  # a write error (OSError) surfaces here
                    flusher = asyncio.create_task(flush())
                if self.batch_output:
                    # The kernel's pipe buffer holds what comes meanwhile (1 MiB on Linux).
                    self._pipe.pause_reading()
                    await asyncio.sleep(READY_BATCH_S)
                    self._pipe.resume_reading()
        except OSError as e:
            log.warning("runner.log_write_failed", pid=self.pid, error=str(e))
        finally:
            try:
                if flusher is not None:
                    await flusher
                if pending:
                    await asyncio.to_thread(self.sink.write, bytes(pending))
            except OSError as e:
                log.warning("runner.log_write_failed", pid=self.pid, error=str(e))
            # uvloop leaves a read pipe open at EOF (asyncio closes it): closed here, once the
            # output is all read, or each runner that ever ran would keep its fd.
            self._pipe.close()
            await asyncio.to_thread(self.sink.close)

    async def wait_ready(self, socket: Path, *, stall_timeout_s: float, interval_s: float) -> None:
        """Poll ``GET /health`` over *socket* until 200, racing the child's exit.

        Stall-based: fails only if neither the log grew nor the health answer changed for
        *stall_timeout_s*.  New output triggers an immediate poll, so readiness is seen within
        milliseconds rather than a poll interval.
        """
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        seen_bytes, seen_status = -1, "start"
        timeout = aiohttp.ClientTimeout(total=max(1.0, min(5.0, stall_timeout_s)))
        connector = aiohttp.UnixConnector(path=str(socket))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while True:
                if self.exited.done():
                    raise await self.failure("exited while loading")
                self._output.clear()
                status = await self._poll(session)
                if status == "200":
                    self.batch_output = True
                    return
                if status != seen_status or self.output_bytes != seen_bytes:
                    seen_status, seen_bytes = status, self.output_bytes
                    last_progress = loop.time()
                stalled = loop.time() - last_progress
                if stalled >= stall_timeout_s:
                    raise ChildFailed(
                        f"no progress for {stall_timeout_s:g}s while loading (last health "
                        f"check: {status}; runners.load_timeout_s)",
                        quote_tail(self.tail()),
                    )
                output = asyncio.create_task(self._output.wait())
                try:
                    await asyncio.wait(
                        {output, self.exited},
                        timeout=min(interval_s, stall_timeout_s - stalled),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    output.cancel()

    async def _poll(self, session: aiohttp.ClientSession) -> str:
        """One health check: the status code as text, or why there was none."""

        async def get() -> str:
            try:
                async with session.get("http://localhost/health") as resp:
                    await resp.read()
                    return str(resp.status)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                return type(e).__name__

        poll = asyncio.create_task(get())
        try:
            await asyncio.wait({poll, self.exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            poll.cancel()  # a no-op once done; else the child exited first, or we are cancelled
        return poll.result() if poll.done() and not poll.cancelled() else "exited"

    def _exit_error(self, what: str, cpu: CpuInfo) -> ChildFailed:
        lines = self.tail()
        reason = diagnose(lines)
        rc = self.proc.returncode
        msg = f"{self.name} {what} (exit code {rc})"
        if rc == -signal.SIGILL:
            # "exit code -4" tells a user nothing: name the cause and the fix.
            msg = f"{sigill_reason(self.argv[0], cpu, lines)} ({what}, exit code {rc})"
        elif reason:
            msg = f"{reason}: {msg}"
        return ChildFailed(msg, quote_tail(lines), rc)

    async def failure(self, what: str) -> ChildFailed:
        """The error for an exit, once the drain has read the child's last words."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._drain)
        cpu = await asyncio.to_thread(read_flags)  # a file read, once per process (cached)
        return self._exit_error(what, cpu)

    async def terminate(self, *, grace_s: float) -> int:
        """SIGTERM the group, SIGKILL after *grace_s*, reap; idempotent, and a cancelled caller
        does not interrupt it (it runs on under a shield)."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._terminate(grace_s), name=f"stop {self.pid}")
        return await asyncio.shield(self._stopping)

    async def _terminate(self, grace_s: float) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await asyncio.shield(self.exited)
            except TimeoutError:
                log.warning("runner.kill", pid=self.pid, grace_s=grace_s)
        # The group may outlive its leader (grandchildren): SIGKILL whatever is left of it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        rc = await asyncio.shield(self.exited)
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._drain)
        except TimeoutError:
            self._drain.cancel()
        await asyncio.to_thread(self._cleanup_files)
        log.info("runner.exited", pid=self.pid, returncode=rc)
        return rc

    def _cleanup_files(self) -> None:
        if self._record is not None:
            self._record.unlink(missing_ok=True)
        if self.socket is not None:
            self.socket.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def _piped(
    argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A short-lived command, output (stdout+stderr) through a pipe, in its own process group;
    the group is killed and reaped on the way out if it is still running (timeout, cancel)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        cwd=cwd,
        env=None if env is None else dict(env),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())


async def run_capture(argv: Sequence[str], *, timeout_s: float = 10.0) -> tuple[int, str]:
    """Run a short command (``llama-server --version``) and return (exit code, output)."""
    async with _piped(argv) as proc:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode("utf-8", errors="replace")


async def run_lines(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stall_timeout_s: float = 900.0,
) -> int:
    """Run a long command (a compiler build), handing each output line to *on_line*.

    Fails with TimeoutError when no line came for *stall_timeout_s*; the process group is killed
    and reaped whatever happens, cancellation included.
    """
    async with _piped(argv, cwd=cwd, env=env) as proc:
        assert proc.stdout is not None  # noqa: S101 (spawned with a pipe)
        while True:
            async with asyncio.timeout(stall_timeout_s):
                raw = await proc.stdout.readline()
            if not raw:
                break
            on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        async with asyncio.timeout(stall_timeout_s):
            return await proc.wait()
