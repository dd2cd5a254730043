"""Issue 16 against the real daemon: SIGHUP applies ``runners.*`` live, a pinned preloaded model
comes back after a reload reconfigures it, the ``context_size`` precedence between
``modelrunner configure`` and the config file, and the small ones (reload of a bad file is a 4xx
naming the key, the pinned-slots 503 carries Retry-After, unload and pinned models)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.fixtures.daemon import DaemonHandle
from tests.integration.test_cli import mr, ok
from tests.integration.test_daemon import curl, runner_pids

pytestmark = pytest.mark.llama

A, B = "test/a", "test/b"
A_KEY, B_KEY = "test/a:latest/completion", "test/b:latest/completion"


def complete(d: DaemonHandle, model: str) -> int:
    body = {"model": model, "prompt": "x", "max_tokens": 1}
    return curl(d, "POST", "/v1/completions", body)[0]


def rewrite(d: DaemonHandle, **sections: Any) -> None:
    for name, value in sections.items():
        d.sections[name] = value
    d.config_path.write_text(yaml.safe_dump(d.sections))


def hup(d: DaemonHandle) -> dict[str, Any]:
    """SIGHUP, then the new `daemon.reloaded` line (deadline-bounded poll of its log)."""
    seen = d.log_text().count("daemon.reloaded")
    os.kill(d.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while d.log_text().count("daemon.reloaded") == seen:
        assert "daemon.reload_failed" not in d.log_text()[-2000:], d.log_text()[-2000:]
        assert time.monotonic() < deadline, d.log_text()[-3000:]
        time.sleep(0.02)
    lines = [x for x in d.log_text().splitlines() if "daemon.reloaded" in x]
    reloaded: dict[str, Any] = json.loads(lines[-1])
    return reloaded


def wait_pids(d: DaemonHandle, pred: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """Poll the daemon's own view (a background load) until *pred* holds."""
    deadline = time.monotonic() + 30
    while not pred(pids := runner_pids(d)):
        assert time.monotonic() < deadline, (pids, d.log_text()[-3000:])
        time.sleep(0.05)
    return pids


def ctx_of(pid: int) -> str:
    argv = psutil.Process(pid).cmdline()
    return argv[argv.index("--ctx-size") + 1]


def log_events(d: DaemonHandle, event: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in d.log_text().splitlines() if f'"{event}"' in x]


def tcp(d: DaemonHandle, method: str, path: str, body: Any = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    return conn.getresponse()


@pytest.fixture
def two(
    daemon_factory: Callable[..., DaemonHandle], tiny_gguf_factory: Callable[..., Path]
) -> Callable[..., DaemonHandle]:
    def make(**sections: Any) -> DaemonHandle:
        d = daemon_factory(**sections)
        d.add_model(A, tiny_gguf_factory(seed=1, name="a"))
        d.add_model(B, tiny_gguf_factory(seed=2, name="b"))
        return d

    return make


def test_sighup_applies_runners_keys_live(two: Callable[..., DaemonHandle]) -> None:
    """Issue 16.1: idle_ttl_s and max_loaded change without a restart; engine needs one."""
    d = two(runners={"idle_ttl_s": 300, "max_loaded": 1})
    assert complete(d, A) == 200
    (row,) = json.loads(curl(d, "GET", "/engines/ps")[1])
    assert row["until"] > time.time() + 200  # "5 minutes from now"
    pid_a = runner_pids(d)[A_KEY]

    runners = {**d.sections["runners"], "idle_ttl_s": 30, "max_loaded": 2, "engine": "wheel"}
    rewrite(d, runners=runners)
    reloaded = hup(d)
    assert "runners.idle_ttl_s" in reloaded["applied"]
    assert "runners.max_loaded" in reloaded["applied"]
    assert reloaded["restart_required"] == ["runners.engine"]  # named, not "runners"
    (warning,) = log_events(d, "daemon.restart_required")
    assert warning["level"] == "warning"
    assert warning["keys"] == ["runners.engine"]
    (row,) = json.loads(curl(d, "GET", "/engines/ps")[1])
    assert row["until"] < time.time() + 40  # the new TTL, on the runner already loaded

    assert complete(d, B) == 200  # max_loaded=2 now: A stays
    assert runner_pids(d) == {A_KEY: pid_a, B_KEY: runner_pids(d)[B_KEY]}

    status, text = curl(d, "POST", "/admin/reload")  # nothing changed since
    assert status == 200
    assert json.loads(text)["restart_required"] == ["runners.engine"]  # still not applied


def test_pinned_preloaded_model_comes_back_after_a_reload(
    two: Callable[..., DaemonHandle],
) -> None:
    """Issue 16.2: reconfigured by SIGHUP, a pinned preloaded model loads again by itself."""
    d = two(models={A: {"pinned": True, "preload": True}})
    d.restart()  # the model is in the store now: preload it at start
    # A pid, not only the key: a runner still spawning is listed with pid None.
    first = wait_pids(d, lambda p: p.get(A_KEY) is not None)[A_KEY]

    rewrite(d, models={A: {"pinned": True, "preload": True, "context_size": 384}})
    reloaded = hup(d)
    assert reloaded["reconfigured"] == ["test/a:latest"]
    pids = wait_pids(d, lambda p: p.get(A_KEY) not in (None, first))  # no request sent
    assert ctx_of(pids[A_KEY]) == "384"


def test_context_size_precedence_configure_wins_and_says_so(
    two: Callable[..., DaemonHandle],
) -> None:
    """Issue 16.6: `configure` (settings.json) beats config.yaml; the reload log names the value
    it kept, `configure --show` names each value's source, `--reset` hands back to the file."""
    d = two(models={A: {"context_size": 256}})
    env = d.env
    out = ok("configure", "--context-size", "320", A, env=env)
    assert "context-size 320" in out  # it says what it set
    assert complete(d, A) == 200
    pid = runner_pids(d)[A_KEY]
    assert ctx_of(pid) == "320"

    rewrite(d, models={A: {"context_size": 384}})
    reloaded = hup(d)
    assert reloaded["reconfigured"] == []  # the effective value did not change: no restart
    (kept,) = reloaded["overridden"]
    assert kept["model"] == "test/a:latest"
    assert (kept["key"], kept["kept"], kept["config_file"]) == ("context_size", 320, 384)
    (warning,) = log_events(d, "daemon.setting_overridden")
    assert warning["level"] == "warning"
    assert warning["kept"] == 320
    assert runner_pids(d)[A_KEY] == pid

    (row,) = json.loads(ok("configure", "--show", A, env=env))
    assert row["Sources"]["context_size"] == {"value": 320, "source": "modelrunner configure"}
    (row,) = json.loads(ok("configure", "--show", B, env=env))  # nothing stored for B
    assert row["Config"] == {}
    assert row["Sources"]["context_size"]["source"].startswith("runners.default_context_size")

    out = ok("configure", "--reset", A, env=env)
    assert "reset" in out
    (row,) = json.loads(ok("configure", "--show", A, env=env))
    assert row["Sources"]["context_size"]["value"] == 384
    assert row["Sources"]["context_size"]["source"] == f"config file ({d.config_path})"
    assert complete(d, A) == 200
    assert ctx_of(runner_pids(d)[A_KEY]) == "384"


def test_reload_of_a_bad_config_is_a_4xx_naming_the_key(two: Callable[..., DaemonHandle]) -> None:
    d = two()
    rewrite(d, runners={**d.sections["runners"], "max_loaded": 0})
    status, text = curl(d, "POST", "/admin/reload")
    assert status == 422, text
    error = json.loads(text)["error"]
    assert "runners.max_loaded" in error
    assert "unchanged" in error  # the running config stays
    assert curl(d, "GET", "/")[0] == 200


def test_pinned_slots_503_has_retry_after_and_unload_stops_pinned(
    two: Callable[..., DaemonHandle],
) -> None:
    d = two(runners={"max_loaded": 1}, models={A: {"pinned": True}})
    assert complete(d, A) == 200
    resp = tcp(d, "POST", "/v1/completions", {"model": B, "prompt": "x", "max_tokens": 1})
    body = json.loads(resp.read())
    assert resp.status == 503
    assert "held by pinned models" in body["error"]["message"]
    assert int(resp.headers["Retry-After"]) >= 1

    # unload stops pinned models too (you named it); the help and the answer say so.
    assert "pinned" in ok("unload", "--help", env=d.env)
    out = ok("unload", A, env=d.env)
    assert "Unloaded 1 model(s)" in out
    assert "pinned" in out
    assert runner_pids(d) == {}
    result = mr("unload", "--all", env=d.env)
    assert result.returncode == 0
