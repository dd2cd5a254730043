"""The daemon as a service: readiness, the socket's mode and ownership, non-loopback refusal,
SIGTERM drain, SIGHUP reload, and a runner dying under a stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import psutil
import pytest
import yaml

from tests.fixtures.daemon import DaemonHandle, free_port
from tests.integration.test_daemon import curl, runner_pids

pytestmark = pytest.mark.llama

MODEL = "test/tiny"
LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "talk"}],
    "max_tokens": 3000,
    "ignore_eos": True,
    "stream": True,
}


def wait_for_log(d: DaemonHandle, needle: str, timeout_s: float = 20.0) -> None:
    """Deadline-bounded poll of another process's log (no event to await across processes)."""
    deadline = time.monotonic() + timeout_s
    while needle not in d.log_text():
        assert time.monotonic() < deadline, f"{needle!r} not logged:\n{d.log_text()[-3000:]}"
        time.sleep(0.02)


def serve(d: DaemonHandle, *flags: str) -> subprocess.CompletedProcess[str]:
    """A second `modelrunner serve` on the same home (expected to refuse and exit)."""
    argv = [sys.executable, "-m", "modelrunner", "--config", str(d.config_path), "serve", *flags]
    return subprocess.run(argv, env=d.env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def long_ctx(daemon: DaemonHandle, tiny_gguf_factory: Callable[..., Path]) -> DaemonHandle:
    """A daemon whose model has room for a long answer: trained on 8192 tokens, so the answer
    lasts seconds (a 512-token one ends in ~0.8 s, before a loaded CI box's kill lands)."""
    daemon.add_model(MODEL, tiny_gguf_factory(ctx=8192))
    assert curl(daemon, "POST", "/engines/_configure", {"model": MODEL, "context-size": 4096}) == (
        202,
        "",
    )
    return daemon


def test_socket_is_0600_a_live_one_is_refused_a_stale_one_replaced(daemon: DaemonHandle) -> None:
    st = os.stat(daemon.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    second = serve(daemon)
    assert second.returncode == 1
    assert "modelrunner: another daemon is already listening on" in second.stderr
    assert curl(daemon, "GET", "/")[0] == 200  # the first one is untouched
    daemon.kill()
    assert daemon.socket_path.exists()  # left behind by the SIGKILL
    daemon.restart()  # replaced, not refused
    assert curl(daemon, "GET", "/")[0] == 200
    assert "daemon.stale_socket_removed" in daemon.log_text()


def test_flags_and_non_loopback_needs_allow_remote(daemon: DaemonHandle) -> None:
    """--host off loopback is refused without --allow-remote; with it (and --socket/--port)
    the daemon listens where the flags say and warns."""
    other = daemon.home / "b.sock"
    refused = serve(daemon, "--host", "0.0.0.0", "--socket", str(other))
    assert refused.returncode == 1
    assert "not a loopback address; pass --allow-remote" in refused.stderr
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "modelrunner",
        "--config",
        str(daemon.config_path),
        "serve",
        "--host",
        "0.0.0.0",
        "--allow-remote",
        "--socket",
        str(other),
        "--port",
        str(port),
    ]
    err = daemon.home / "b.stderr"
    with open(err, "wb") as f:
        proc = subprocess.Popen(argv, env=daemon.env, stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + 20
        while "daemon.ready" not in err.read_text():
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.02)
        text = err.read_text()
        assert "daemon.remote_access" in text
        ready = json.loads(next(x for x in text.splitlines() if "daemon.ready" in x))
        assert (ready["socket"], ready["port"], ready["host"]) == (str(other), port, "0.0.0.0")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


@pytest.fixture
def draining(daemon_factory: Callable[..., DaemonHandle], tiny_gguf: Path) -> DaemonHandle:
    """Like long_ctx, with a drain bound far above the answer's length (not what is tested)."""
    d = daemon_factory(server={"drain_timeout_s": 60.0})
    d.add_model(MODEL, tiny_gguf)
    assert curl(d, "POST", "/engines/_configure", {"model": MODEL, "context-size": 4096})[0] == 202
    return d


async def test_sigterm_drains_the_stream_in_flight_then_exits_0(draining: DaemonHandle) -> None:
    d = draining
    async with aiohttp.ClientSession(base_url=d.base_url) as http:
        resp = await http.post("/engines/v1/chat/completions", json={**LONG, "max_tokens": 1500})
        assert resp.status == 200
        first = await resp.content.readline()
        assert first.startswith(b"data: ")
        os.kill(d.pid, signal.SIGTERM)
        await asyncio.to_thread(wait_for_log, d, "daemon.draining")
        async with (
            aiohttp.ClientSession(base_url=d.base_url) as late,
            late.get("/") as refused,  # no new requests while draining: a 503
        ):
            assert refused.status == 503
            assert "Retry-After" in refused.headers
        body = await resp.read()
        resp.close()
    assert body.rstrip().endswith(b"data: [DONE]"), d.log_text()[-6000:]  # finished whole
    assert await asyncio.to_thread(d.stop) == 0
    assert "daemon.stopped" in d.log_text()
    assert not d.socket_path.exists()


@pytest.fixture
def short_drain(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf_factory: Callable[..., Path]
) -> DaemonHandle:
    """A drain bound (3 s) far below the answer's length (8000 tokens: seconds); long enough
    for a request to arrive during it."""
    d = daemon_factory(server={"drain_timeout_s": 3.0})
    d.add_model(MODEL, tiny_gguf_factory(ctx=8192))
    assert curl(d, "POST", "/engines/_configure", {"model": MODEL, "context-size": 8192})[0] == 202
    return d


async def test_sigterm_drain_is_bounded_then_runners_stop(short_drain: DaemonHandle) -> None:
    """A stream far longer than server.drain_timeout_s is cut at the bound, not waited for;
    the daemon still exits 0 and its llama-server is gone."""
    d = short_drain
    async with aiohttp.ClientSession(base_url=d.base_url) as http:
        resp = await http.post("/engines/v1/chat/completions", json={**LONG, "max_tokens": 8000})
        assert (await resp.content.readline()).startswith(b"data: ")
        pids = await asyncio.to_thread(runner_pids, d)
        runner = psutil.Process(pids["test/tiny:latest/completion"])
        os.kill(d.pid, signal.SIGTERM)
        try:
            body = await resp.read()
        except aiohttp.ClientPayloadError:
            body = b""  # the connection was closed mid-body: cut, as expected
        resp.close()
    assert not body.rstrip().endswith(b"data: [DONE]")  # cut at the bound, not finished
    assert await asyncio.to_thread(d.stop) == 0
    assert "daemon.stopped" in d.log_text()
    assert not runner.is_running()


async def test_drain_answers_503_then_cuts_the_stream_with_an_error_event(
    short_drain: DaemonHandle,
) -> None:
    """Issue 16.4: a request during the drain gets a JSON 503 with Retry-After (the listeners
    stay open until it ends); a stream cut at the bound ends with an error event saying the
    daemon is stopping, not a bare close."""
    d = short_drain
    async with aiohttp.ClientSession(base_url=d.base_url) as http:
        resp = await http.post("/engines/v1/chat/completions", json={**LONG, "max_tokens": 8000})
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b"data: ")
        os.kill(d.pid, signal.SIGTERM)
        await asyncio.to_thread(wait_for_log, d, "daemon.draining")

        # A new connection during the drain: answered, in the route's own error shape.
        async with aiohttp.ClientSession(base_url=d.base_url) as other:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
            async with other.post("/engines/v1/completions", json=body) as late:
                assert late.status == 503
                assert int(late.headers["Retry-After"]) >= 1
                error = (await late.json())["error"]
                assert "stopping" in error["message"]
            async with other.get("/models") as manage:
                assert manage.status == 503
                assert "stopping" in (await manage.json())["error"]

        text = (await resp.read()).decode()
        resp.close()
    events = [x for x in text.splitlines() if x.startswith("data:")]
    assert events[-1] != "data: [DONE]"  # cut at the bound, not finished
    last = json.loads(events[-1].removeprefix("data:"))
    assert "stopping" in last["error"]["message"]
    assert await asyncio.to_thread(d.stop) == 0
    assert "daemon.stopped" in d.log_text()


async def test_runner_killed_mid_stream_ends_with_an_error_event(long_ctx: DaemonHandle) -> None:
    d = long_ctx
    async with aiohttp.ClientSession(base_url=d.base_url) as http:
        resp = await http.post("/engines/v1/chat/completions", json=LONG)
        await resp.content.readline()
        pid = runner_pids(d)["test/tiny:latest/completion"]
        psutil.Process(pid).kill()
        text = (await resp.read()).decode()
        last = [x for x in text.splitlines() if x.startswith("data:")][-1]
        error = json.loads(last.removeprefix("data:"))["error"]
        assert "crashed while serving" in error["message"]
        async with http.post(
            "/engines/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1}
        ) as again:
            assert again.status == 200  # a fresh runner
    metrics = curl(d, "GET", "/metrics")[1]
    assert "modelrunner_stream_errors_total 1" in metrics
    assert "modelrunner_runner_crashes_total 1" in metrics


def test_sighup_reconfigures_only_the_changed_model(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf_factory: Callable[..., Path]
) -> None:
    d = daemon_factory(models={"test/a": {"context_size": 256}})
    d.add_model("test/a", tiny_gguf_factory(seed=1, name="a"))
    d.add_model("test/b", tiny_gguf_factory(seed=2, name="b"))
    for m in ("test/a", "test/b"):
        curl(d, "POST", "/v1/completions", {"model": m, "prompt": "x", "max_tokens": 1})
    before = runner_pids(d)
    argv = psutil.Process(before["test/a:latest/completion"]).cmdline()
    assert argv[argv.index("--ctx-size") + 1] == "256"

    d.sections["models"] = {"test/a": {"context_size": 384}}
    d.sections["server"]["origins"] = ["https://app.example"]  # applied live too
    d.config_path.write_text(yaml.safe_dump(d.sections))
    os.kill(d.pid, signal.SIGHUP)
    wait_for_log(d, "daemon.reloaded")
    reloaded = json.loads(next(x for x in d.log_text().splitlines() if "daemon.reloaded" in x))
    assert reloaded["reconfigured"] == ["test/a:latest"]
    assert reloaded["restart_required"] == []
    assert curl(d, "GET", "/", headers=("Origin: https://app.example",))[0] == 200
    after = runner_pids(d)
    assert after == {"test/b:latest/completion": before["test/b:latest/completion"]}
    curl(d, "POST", "/v1/completions", {"model": "test/a", "prompt": "x", "max_tokens": 1})
    argv = psutil.Process(runner_pids(d)["test/a:latest/completion"]).cmdline()
    assert argv[argv.index("--ctx-size") + 1] == "384"

    status, text = curl(d, "POST", "/admin/reload")  # the same, on an endpoint; nothing changed
    assert status == 200
    assert json.loads(text) == {
        "reloaded": True,
        "reconfigured": [],
        "applied": [],
        "restart_required": [],
        "overridden": [],
    }
    assert set(runner_pids(d)) == {"test/a:latest/completion", "test/b:latest/completion"}

    # `preload: true` in the config file: loaded at start, before any request.
    d.sections["models"]["test/b"] = {"preload": True}
    d.config_path.write_text(yaml.safe_dump(d.sections))
    d.restart()
    deadline = time.monotonic() + 20
    while not (pids := runner_pids(d)):  # a background load: poll the daemon's own view
        assert time.monotonic() < deadline, d.log_text()[-2000:]
        time.sleep(0.02)
    assert set(pids) == {"test/b:latest/completion"}


def test_ready_means_both_listeners_answer(daemon: DaemonHandle) -> None:
    """`daemon.ready` carries both addresses; the fixture already waited for it."""
    line = next(x for x in daemon.log_text().splitlines() if "daemon.ready" in x)
    ready = json.loads(line)
    assert ready["socket"] == str(daemon.socket_path)
    assert ready["port"] == daemon.port
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5):
        pass
