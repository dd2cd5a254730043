"""Process mechanics with scripted ``python -c`` children: stop escalation, exits, stalls, records.

These test our process layer; everything llama-server-specific uses the real binary elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import psutil
import pytest

from modelrunner.runners.process import (
    ChildFailed,
    ChildProcess,
    LogSink,
    diagnose,
    run_capture,
    sweep_leftovers,
)

IGNORE_TERM = "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready'); time.sleep(60)"


def python(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", "import sys, signal, time, os, socket; " + code]


async def wait_dead(pid: int, timeout_s: float = 5.0) -> None:
    """Deadline-bounded wait for an external process to be gone (or a zombie)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            await asyncio.sleep(0.01)


def sink(tmp_path: Path, **kw: int) -> LogSink:
    opts = {"max_bytes": 1 << 20, "backups": 2, "tail_lines": 50} | kw
    return LogSink(tmp_path / "logs" / "child.log", **opts)


async def spawn(tmp_path: Path, code: str, **kw: object) -> ChildProcess:
    return await ChildProcess.spawn(python(code), sink=sink(tmp_path), **kw)  # type: ignore[arg-type]


class TestTerminate:
    async def test_sigterm_ignored_is_killed_after_grace(self, tmp_path: Path) -> None:
        """A child that ignores SIGTERM is SIGKILLed once the grace period ends."""
        child = await spawn(tmp_path, IGNORE_TERM)
        await asyncio.wait_for(child.wait_for_output("ready"), 10)
        assert await child.terminate(grace_s=0.2) == -9

    async def test_polite_child_exits_on_sigterm(self, tmp_path: Path) -> None:
        child = await spawn(tmp_path, "print('ready'); time.sleep(60)")
        await asyncio.wait_for(child.wait_for_output("ready"), 10)
        assert await child.terminate(grace_s=10) == -15

    async def test_terminate_is_idempotent_and_concurrent_calls_agree(self, tmp_path: Path) -> None:
        child = await spawn(tmp_path, "print('ready'); time.sleep(60)")
        await asyncio.wait_for(child.wait_for_output("ready"), 10)
        codes = await asyncio.gather(*(child.terminate(grace_s=5) for _ in range(3)))
        assert codes == [-15, -15, -15]
        assert await child.terminate(grace_s=5) == -15

    async def test_a_cancelled_caller_does_not_interrupt_the_stop(self, tmp_path: Path) -> None:
        """The stop runs on under its shield; the child is still reaped."""
        child = await spawn(tmp_path, IGNORE_TERM)
        await asyncio.wait_for(child.wait_for_output("ready"), 10)
        caller = asyncio.create_task(child.terminate(grace_s=0.3))
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert await child.terminate(grace_s=0.3) == -9

    async def test_grandchildren_die_with_the_group(self, tmp_path: Path) -> None:
        code = (
            "import subprocess; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); print('child', p.pid); time.sleep(60)"
        )
        child = await spawn(tmp_path, code)
        try:
            await asyncio.wait_for(child.wait_for_output("child "), 10)
            grandchild = int(next(x for x in child.tail() if x.startswith("child ")).split()[1])
        finally:
            await child.terminate(grace_s=5)
        await wait_dead(grandchild)  # the signal went to the whole group


class TestWaitReady:
    async def test_instant_exit_fails_with_its_output_quoted(self, tmp_path: Path) -> None:
        child = await spawn(tmp_path, "print('error loading model: bad magic'); sys.exit(3)")
        with pytest.raises(ChildFailed) as info:
            await child.wait_ready(tmp_path / "x.sock", stall_timeout_s=30, interval_s=0.05)
        assert info.value.returncode == 3
        assert "exit code 3" in info.value.reason
        assert "failed to load the model" in info.value.reason
        assert "bad magic" in info.value.tail
        await child.terminate(grace_s=1)

    async def test_never_healthy_and_silent_fails_on_the_stall_timeout(
        self, tmp_path: Path
    ) -> None:
        child = await spawn(tmp_path, "print('starting'); time.sleep(60)")
        with pytest.raises(ChildFailed, match=r"no progress for 0\.3s"):
            await child.wait_ready(tmp_path / "x.sock", stall_timeout_s=0.3, interval_s=0.05)
        await child.terminate(grace_s=1)

    async def test_output_counts_as_progress(self, tmp_path: Path) -> None:
        """A slow but chatty load is not a stall: it fails only after the output stops."""
        code = "[(print('tick', i), time.sleep(0.05)) for i in range(12)]; time.sleep(60)"
        child = await spawn(tmp_path, code)
        with pytest.raises(ChildFailed, match="no progress"):
            await child.wait_ready(tmp_path / "x.sock", stall_timeout_s=0.3, interval_s=0.05)
        assert child.tail()[-1] == "tick 11"
        await child.terminate(grace_s=1)

    async def test_ready_when_health_answers_200(self, tmp_path: Path) -> None:
        """503 while "loading", then 200: ready, over the Unix socket."""
        sock = tmp_path / "h.sock"
        code = f"""
import http.server, socketserver
hits = [0]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        hits[0] += 1
        self.send_response(200 if hits[0] > 2 else 503)
        self.send_header('Content-Length', '0'); self.end_headers()
    def log_message(self, *a): pass
class S(socketserver.UnixStreamServer):
    def get_request(self):
        conn, _ = self.socket.accept(); return conn, ('local', 0)
S({str(sock)!r}, H).serve_forever()
"""
        child = await ChildProcess.spawn(
            [sys.executable, "-c", code], sink=sink(tmp_path), socket=sock
        )
        await child.wait_ready(sock, stall_timeout_s=10, interval_s=0.01)
        assert child.returncode is None
        await child.terminate(grace_s=5)
        assert not sock.exists()


class TestLogs:
    async def test_output_goes_to_a_rotated_file_and_a_bounded_tail(self, tmp_path: Path) -> None:
        log_sink = sink(tmp_path, max_bytes=2000, backups=2, tail_lines=5)
        child = await ChildProcess.spawn(
            python("[print('line %04d' % i + 'x' * 40) for i in range(200)]"), sink=log_sink
        )
        assert await child.exited == 0
        await child.terminate(grace_s=5)
        assert child.tail()[-1].startswith("line 0199")
        assert len(child.tail()) == 5
        files = sorted(p.name for p in log_sink.path.parent.iterdir())
        assert files == ["child.log", "child.log.1", "child.log.2"]
        assert all(p.stat().st_size <= 2100 for p in log_sink.path.parent.iterdir())

    def test_diagnose_recognises_oom_and_bad_models(self) -> None:
        assert diagnose(["ggml: failed to allocate buffer, size = 9 MiB"]) == (
            "not enough memory to load the model"
        )
        assert diagnose(["gguf_init_from_file: invalid magic"]) == (
            "llama-server failed to load the model"
        )
        assert diagnose(["all good"]) is None


class TestPidRecords:
    async def test_record_written_and_removed(self, tmp_path: Path) -> None:
        records = tmp_path / "runners"
        child = await spawn(tmp_path, "print('ready'); time.sleep(60)", record_dir=records)
        rec = json.loads((records / f"{child.pid}.json").read_text())
        assert rec["pid"] == child.pid
        assert rec["argv"] == child.argv
        await child.terminate(grace_s=5)
        assert list(records.iterdir()) == []

    async def test_sweep_kills_recorded_leftovers(self, tmp_path: Path) -> None:
        """What a crashed daemon left (a record whose owner is gone) is killed, group and all."""
        records = tmp_path / "runners"
        child = await spawn(tmp_path, IGNORE_TERM, record_dir=records)
        await asyncio.wait_for(child.wait_for_output("ready"), 10)
        path = records / f"{child.pid}.json"
        rec = json.loads(path.read_text())
        rec["owner_pid"] = 2**22 + 7  # a daemon that no longer exists
        path.write_text(json.dumps(rec))
        killed = await asyncio.to_thread(sweep_leftovers, records, grace_s=0.2)
        assert killed == [child.pid]
        assert await child.terminate(grace_s=0) == -9
        assert not path.exists()

    async def test_sweep_spares_a_reused_pid(self, tmp_path: Path) -> None:
        """A record whose create time does not match is stale: removed, nothing killed."""
        records = tmp_path / "runners"
        child = await spawn(tmp_path, "print('ready'); time.sleep(60)", record_dir=records)
        path = records / f"{child.pid}.json"
        rec = json.loads(path.read_text())
        rec["create_time"] -= 1000
        rec["owner_pid"] = 2**22 + 7
        path.write_text(json.dumps(rec))
        assert await asyncio.to_thread(sweep_leftovers, records) == []
        assert child.returncode is None
        await child.terminate(grace_s=5)

    async def test_sweep_spares_runners_of_a_live_daemon(self, tmp_path: Path) -> None:
        records = tmp_path / "runners"
        owner = await spawn(tmp_path, "print('ready'); time.sleep(60)")
        child = await spawn(tmp_path, "print('ready'); time.sleep(60)", record_dir=records)
        path = records / f"{child.pid}.json"
        rec = json.loads(path.read_text())
        rec["owner_pid"] = owner.pid
        rec["owner_create_time"] = psutil.Process(owner.pid).create_time()
        path.write_text(json.dumps(rec))
        assert await asyncio.to_thread(sweep_leftovers, records) == []
        assert path.exists()
        await asyncio.gather(child.terminate(grace_s=5), owner.terminate(grace_s=5))


async def test_run_capture_returns_code_and_output() -> None:
    code, out = await run_capture(python("print('v1'); sys.exit(2)"))
    assert (code, out.strip()) == (2, "v1")


async def test_spawn_of_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ChildFailed, match="cannot start"):
        await ChildProcess.spawn([str(tmp_path / "nope")], sink=sink(tmp_path))


def test_python_helper_runs_this_interpreter() -> None:
    assert python("pass")[0] == sys.executable
    assert os.access(sys.executable, os.X_OK)
