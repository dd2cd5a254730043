"""The supervisor with the real llama-server and tiny GGUFs: residency, admission, crashes, cleanup.

Requests go straight to each runner's Unix socket with aiohttp, as the server's proxy does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from structlog.testing import capture_logs

from modelrunner.config import ModelSettings, RunnersConfig
from modelrunner.errors import (
    BinaryNotFound,
    ModelNotFound,
    RunnerFailed,
    TooManyRequests,
    Unavailable,
)
from modelrunner.runners import live
from modelrunner.runners.locate import locate
from modelrunner.runners.memory import estimate_bytes
from modelrunner.runners.model import ModelFiles
from modelrunner.runners.runner import Runner
from modelrunner.runners.supervisor import Supervisor

pytestmark = pytest.mark.llama

Factory = Callable[..., Awaitable[Supervisor]]


class Models:
    """The resolve callable: model ids mapped straight to files (no store needed)."""

    def __init__(self, make_gguf: Callable[..., Path]) -> None:
        self.make_gguf = make_gguf
        self.files: dict[str, ModelFiles] = {}
        self.gate: asyncio.Event | None = None  # set to hold loads inside resolve

    def add(self, model_id: str, seed: int = 0, **settings: Any) -> ModelFiles:
        path = self.make_gguf(seed=seed, name=model_id)
        self.files[model_id] = ModelFiles(
            id=model_id,
            name=f"test/{model_id}",
            gguf_path=path,
            trained_context=512,
            estimated_bytes=path.stat().st_size,
            settings=ModelSettings(**settings),
        )
        return self.files[model_id]

    async def __call__(self, model_id: str) -> ModelFiles:
        if self.gate is not None:
            await self.gate.wait()
        if model_id not in self.files:
            raise ModelNotFound(model_id)
        return self.files[model_id]


@pytest.fixture
def models(tiny_gguf_factory: Callable[..., Path]) -> Models:
    m = Models(tiny_gguf_factory)
    for i in range(3):
        m.add(f"m{i}", seed=i)
    return m


@pytest.fixture
async def make_supervisor(
    tmp_path: Path, llama_server_bin: Path, models: Models
) -> AsyncIterator[Factory]:
    made: list[Supervisor] = []

    async def factory(**overrides: Any) -> Supervisor:
        settings: dict[str, Any] = {"stop_grace_s": 5.0, "load_timeout_s": 30.0} | overrides
        config = RunnersConfig(
            llama_server_path=llama_server_bin,
            run_dir=tmp_path / "run",
            log_dir=tmp_path / "logs",
            **settings,
        )
        sup = Supervisor(config, models)
        await sup.start()
        made.append(sup)
        return sup

    yield factory
    for sup in made:
        await sup.aclose()


async def chat(runner: Runner, max_tokens: int = 4) -> str:
    connector = aiohttp.UnixConnector(path=str(runner.socket_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            "http://localhost/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        content: str = body["choices"][0]["message"]["content"]
        return content


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Deadline-bounded wait on an external process or a timer (no event to await)."""
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.02)


async def loaded(sup: Supervisor) -> dict[str, int | None]:
    return {s.model: s.pid for s in await sup.status()}


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class TestResidency:
    async def test_two_models_loaded_at_once(self, make_supervisor: Factory) -> None:
        sup = await make_supervisor(max_loaded=2)
        async with sup.acquire("m0") as a, sup.acquire("m1") as b:
            assert a.pid != b.pid
            assert await chat(a)
            assert await chat(b)
        rows = await sup.status()
        assert [(r.model, r.state) for r in rows] == [("m0", "ready"), ("m1", "ready")]
        assert all(r.rss_bytes and r.loaded_since and r.last_used for r in rows)

    async def test_a_third_model_evicts_the_least_recently_used(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor(max_loaded=2)
        for model in ("m0", "m1", "m0"):  # m1 is now the least recently used
            async with sup.acquire(model) as r:
                await chat(r)
        m1_pid = (await loaded(sup))["m1"]
        async with sup.acquire("m2") as r:
            await chat(r)
        assert set(await loaded(sup)) == {"m0", "m2"}
        assert sup.stats.evictions == 1
        assert m1_pid is not None
        assert dead(m1_pid)

    async def test_a_pinned_model_is_never_the_victim(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        models.add("m0", seed=0, pinned=True)
        sup = await make_supervisor(max_loaded=2)
        for model in ("m0", "m1", "m2"):
            async with sup.acquire(model):
                pass
        assert set(await loaded(sup)) == {"m0", "m2"}

    async def test_slots_all_pinned_is_a_clear_503(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        models.add("m0", seed=0, pinned=True)
        sup = await make_supervisor(max_loaded=1)
        await sup.load("m0")
        with pytest.raises(Unavailable, match="held by pinned models"):
            await sup.load("m1")

    async def test_memory_budget_evicts_to_fit(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        need = estimate_bytes(models.files["m0"], 512)
        total = psutil.virtual_memory().total
        sup = await make_supervisor(max_loaded=3, memory_fraction=1.5 * need / total)
        await sup.load("m0")
        await sup.load("m1")
        assert set(await loaded(sup)) == {"m1"}
        assert sup.stats.evictions == 1

    async def test_a_model_bigger_than_the_budget_is_refused(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        need = estimate_bytes(models.files["m0"], 512)
        total = psutil.virtual_memory().total
        sup = await make_supervisor(memory_fraction=0.5 * need / total)
        with pytest.raises(Unavailable, match="memory budget"):
            await sup.load("m0")


class TestIdle:
    async def test_idle_timeout_unloads(self, make_supervisor: Factory) -> None:
        sup = await make_supervisor(idle_ttl_s=0.2)
        async with sup.acquire("m0") as r:
            pid = r.pid
            assert (await sup.status())[0].until is None  # the clock stops while in flight
        assert (await sup.status())[0].until is not None

        async def unloaded() -> bool:
            return not await sup.status()

        await eventually(unloaded)
        assert pid is not None
        assert dead(pid)

    async def test_keep_alive_zero_unloads_after_the_request(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor()
        async with sup.acquire("m0", keep_alive_s=0) as r:
            await chat(r)
        assert [row.state for row in await sup.status()] == ["stopping"]  # decided at once

        async def unloaded() -> bool:
            return not await sup.status()

        await eventually(unloaded)

    async def test_keep_alive_minus_one_never_expires(self, make_supervisor: Factory) -> None:
        sup = await make_supervisor(idle_ttl_s=0.01)
        async with sup.acquire("m0", keep_alive_s=-1):
            pass
        [row] = await sup.status()
        assert row.until is None

    async def test_per_model_idle_ttl(self, make_supervisor: Factory, models: Models) -> None:
        models.add("m0", seed=0, idle_ttl_s=3600)
        sup = await make_supervisor(idle_ttl_s=0.01)
        async with sup.acquire("m0"):
            pass
        [row] = await sup.status()
        assert row.until is not None
        assert row.until > time.time() + 3000


class TestSharedLoads:
    async def test_20_concurrent_first_requests_start_one_process(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor(max_in_flight=32)

        async def request() -> int | None:
            async with sup.acquire("m0") as r:
                await chat(r)
                return r.pid

        pids = await asyncio.gather(*(request() for _ in range(20)))
        assert len(set(pids)) == 1
        assert sup.stats.loads == 1

    async def test_a_cancelled_waiter_does_not_abort_the_load(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        sup = await make_supervisor()
        models.gate = asyncio.Event()  # the load is held inside resolve
        first = asyncio.create_task(sup.acquire("m0").__aenter__())
        await asyncio.sleep(0)
        assert sup.in_use("m0")  # a load is in progress
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        models.gate.set()
        async with sup.acquire("m0") as r:  # joins the same load
            assert await chat(r)
        assert sup.stats.loads == 1

    async def test_a_client_leaving_mid_spawn_leaves_the_runner_loading(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor()
        waiter = asyncio.create_task(sup.load("m0"))

        async def spawned() -> bool:
            return any(s.pid for s in await sup.status())

        await eventually(spawned)
        waiter.cancel()
        await sup.load("m0")
        [row] = await sup.status()
        assert row.state == "ready"
        assert sup.stats.loads == 1


class TestAdmission:
    async def test_in_flight_limit_answers_429_with_retry_after(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor(max_in_flight=1)
        async with sup.acquire("m0"):
            with pytest.raises(TooManyRequests) as info:
                async with sup.acquire("m0"):
                    pass
        assert info.value.retry_after_s >= 1
        assert info.value.status == 429
        assert sup.stats.rate_limited == 1

    async def test_a_full_queue_answers_503(self, make_supervisor: Factory, models: Models) -> None:
        sup = await make_supervisor(max_queue=1)
        models.gate = asyncio.Event()
        waiting = asyncio.create_task(sup.load("m0"))
        block = sup.acquire("m0")
        first = asyncio.create_task(block.__aenter__())
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="already waiting") as info:
            async with sup.acquire("m0"):
                pass
        assert info.value.status == 503
        assert sup.stats.queue_full == 1
        models.gate.set()
        assert await chat(await first)
        await block.__aexit__(None, None, None)
        await waiting

    async def test_nothing_evictable_waits_then_503(self, make_supervisor: Factory) -> None:
        sup = await make_supervisor(max_loaded=1, queue_timeout_s=0.3)
        await sup.load("m0")  # not under the short queue timeout, whatever the machine's load
        async with sup.acquire("m0"):
            with pytest.raises(Unavailable, match="retry later"):
                async with sup.acquire("m1"):
                    pass
        assert sup.stats.queue_timeouts == 1

    async def test_two_models_racing_for_one_slot_do_not_evict_each_other_before_use(
        self, make_supervisor: Factory
    ) -> None:
        """A fresh runner with requests queued for it is not a victim: no load thrashing."""
        sup = await make_supervisor(max_loaded=1)

        async def request(model: str) -> str:
            async with sup.acquire(model) as r:
                return await chat(r)

        answers = await asyncio.gather(*(request(m) for m in ["m0", "m1"] * 3))
        assert all(answers)
        assert sup.stats.loads == 2  # before the fix: dozens of loads, then a timeout

    async def test_a_busy_runner_is_not_evicted_the_load_waits_for_it(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor(max_loaded=1)
        hold = asyncio.Event()

        async def busy() -> None:
            async with sup.acquire("m0"):
                await hold.wait()

        holder = asyncio.create_task(busy())
        await eventually(lambda: _true(sup.in_use("m0") and sup.stats.loads == 1))
        other = asyncio.create_task(sup.load("m1"))
        await asyncio.sleep(0.1)
        assert not other.done()  # waiting for room
        assert set(await loaded(sup)) == {"m0"}
        hold.set()
        await holder
        await other
        assert set(await loaded(sup)) == {"m1"}


async def _true(value: bool) -> bool:
    return value


async def stream_then_kill(sup: Supervisor) -> None:
    """Start a streamed answer, SIGKILL the runner after its first chunk, read on."""
    async with sup.acquire("m0") as r:
        connector = aiohttp.UnixConnector(path=str(r.socket_path))
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "stream": True}
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post("http://localhost/v1/chat/completions", json=body) as resp,
        ):
            await resp.content.readline()
            assert r.pid is not None
            os.kill(r.pid, signal.SIGKILL)
            async for _ in resp.content:
                pass
            raise aiohttp.ClientPayloadError("stream ended early")


class TestFailures:
    async def test_sigkill_mid_request_is_a_clear_error_and_the_next_request_works(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor()
        with pytest.raises(RunnerFailed, match="crashed while serving") as info:
            await stream_then_kill(sup)
        assert "exit code -9" in info.value.message
        assert sup.stats.crashes == 1
        async with sup.acquire("m0") as r2:
            assert await chat(r2)

    async def test_a_corrupt_gguf_fails_fast_with_its_log_quoted(
        self, make_supervisor: Factory, models: Models, tmp_path: Path
    ) -> None:
        bad = tmp_path / "corrupt.gguf"
        bad.write_bytes(b"GGUF" + os.urandom(256))
        models.files["bad"] = replace(models.files["m0"], id="bad", name="test/bad", gguf_path=bad)
        sup = await make_supervisor()
        for _ in range(2):  # no sticky failure: the second request tries again
            with pytest.raises(RunnerFailed, match="failed to load") as info:
                async with sup.acquire("bad"):
                    pass
            assert "last lines of the runner's log" in info.value.message
            assert str(bad) in info.value.log_tail or "gguf" in info.value.log_tail.lower()
        assert sup.stats.load_failures == 2
        assert await sup.status() == []
        async with sup.acquire("m0") as r:  # others are unaffected
            assert await chat(r)

    async def test_every_waiter_of_a_failed_load_gets_the_error_and_crashes_back_off(
        self, make_supervisor: Factory, models: Models, tmp_path: Path
    ) -> None:
        bad = tmp_path / "corrupt.gguf"
        bad.write_bytes(b"GGUF" + os.urandom(256))
        models.files["bad"] = replace(models.files["m0"], id="bad", name="test/bad", gguf_path=bad)
        sup = await make_supervisor(crash_backoff_s=0.05)

        async def request() -> None:
            async with sup.acquire("bad"):
                pass

        results = await asyncio.gather(*(request() for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, RunnerFailed) for r in results)
        assert sup.stats.load_failures == 1  # one process for all five
        with capture_logs() as logs:
            for _ in range(2):
                with pytest.raises(RunnerFailed):
                    await request()
        backoffs = [e["delay_s"] for e in logs if e["event"] == "runner.backoff"]
        assert backoffs == [0.05]  # the third failure in a row waits; the second did not

    async def test_out_of_memory_evicts_idle_runners_and_retries_once(
        self, tmp_path: Path, llama_server_bin: Path, models: Models
    ) -> None:
        """A wrapper fails m1's first start as llama-server does when it can't allocate."""
        wrapper = tmp_path / "llama-server"
        wrapper.write_text(OOM_WRAPPER.format(python=sys.executable, real=str(llama_server_bin)))
        wrapper.chmod(0o755)
        env = {
            **os.environ,
            "FAKE_OOM_FOR": str(models.files["m1"].gguf_path),
            "FAKE_OOM_MARK": str(tmp_path / "oom-once"),
        }
        config = RunnersConfig(
            llama_server_path=wrapper, run_dir=tmp_path / "run", log_dir=tmp_path / "logs"
        )
        async with Supervisor(config, models, env=env) as sup:
            await sup.load("m0")
            await sup.load("m1")
            assert set(await loaded(sup)) == {"m1"}
            assert (sup.stats.evictions, sup.stats.load_failures) == (1, 0)

    async def test_a_pinned_model_is_restarted_after_a_crash(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        models.add("m0", seed=0, pinned=True)
        sup = await make_supervisor()
        await sup.load("m0")
        [before] = await sup.status()
        assert before.pid is not None
        os.kill(before.pid, signal.SIGKILL)

        async def restarted() -> bool:
            rows = await sup.status()
            return bool(rows) and rows[0].pid != before.pid and rows[0].state == "ready"

        await eventually(restarted)
        assert sup.stats.crashes == 1


class TestShutdownAndCleanup:
    async def test_aclose_leaves_no_llama_server(self, make_supervisor: Factory) -> None:
        sup = await make_supervisor()
        async with sup.acquire("m0"), sup.acquire("m1"):
            pass
        pids = [pid for pid in (await loaded(sup)).values() if pid]
        assert len(pids) == 2
        await sup.aclose()
        await sup.aclose()  # idempotent
        assert all(dead(pid) for pid in pids)
        assert not any("llama-server" in p.name() for p in psutil.Process().children(True)), (
            "a llama-server (even a zombie: the supervisor reaps its children) outlived aclose"
        )
        with pytest.raises(Unavailable, match="shutting down"):
            async with sup.acquire("m0"):
                pass

    async def test_aclose_cancels_a_load_in_progress(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        sup = await make_supervisor()
        models.gate = asyncio.Event()
        waiter = asyncio.create_task(sup.load("m0"))
        await asyncio.sleep(0)
        await sup.aclose()
        with pytest.raises(Unavailable, match="shutting down"):
            await waiter

    async def test_leftovers_of_a_killed_daemon_are_cleaned_by_the_next_start(
        self, tmp_path: Path, llama_server_bin: Path, models: Models
    ) -> None:
        """A daemon SIGKILLed with a runner up: the next start() kills that runner."""
        run_dir, log_dir = tmp_path / "run", tmp_path / "logs"
        script = tmp_path / "daemon.py"
        script.write_text(DAEMON_SCRIPT)
        spec = {
            "bin": str(llama_server_bin),
            "run_dir": str(run_dir),
            "log_dir": str(log_dir),
            "gguf": str(models.files["m0"].gguf_path),
        }
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, str(script), json.dumps(spec), stdout=asyncio.subprocess.PIPE
        )
        assert daemon.stdout is not None
        try:
            async with asyncio.timeout(30):
                while not (line := await daemon.stdout.readline()).startswith(b"PID "):
                    assert line, "the daemon script exited"
        except BaseException:
            daemon.kill()
            await daemon.wait()
            raise
        runner_pid = int(line.split()[1])
        assert not dead(runner_pid)
        daemon.kill()
        await daemon.wait()
        assert not dead(runner_pid)  # orphaned, still running

        sup = Supervisor(
            RunnersConfig(llama_server_path=llama_server_bin, run_dir=run_dir, log_dir=log_dir),
            models,
        )
        await sup.start()
        try:
            await eventually(lambda: _true(dead(runner_pid)))
            assert list((run_dir / "runners").iterdir()) == []
        finally:
            await sup.aclose()


OOM_WRAPPER = """#!{python}
import os, sys
target, mark = os.environ["FAKE_OOM_FOR"], os.environ["FAKE_OOM_MARK"]
if target in sys.argv and not os.path.exists(mark):
    open(mark, "w").close()
    print("ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 99 GiB")
    sys.exit(1)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""

DAEMON_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from modelrunner.config import RunnersConfig
from modelrunner.runners.model import ModelFiles
from modelrunner.runners.supervisor import Supervisor

spec = json.loads(sys.argv[1])

async def resolve(model_id):
    return ModelFiles(id=model_id, name=model_id, gguf_path=Path(spec["gguf"]), trained_context=512)

async def main():
    config = RunnersConfig(
        llama_server_path=Path(spec["bin"]),
        run_dir=Path(spec["run_dir"]),
        log_dir=Path(spec["log_dir"]),
    )
    sup = Supervisor(config, resolve)
    await sup.start()
    await sup.load("m0")
    [row] = await sup.status()
    print("PID", row.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class TestManagement:
    async def test_unload_stops_idle_runners_and_skips_busy_ones(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor()
        await sup.load("m0")
        async with sup.acquire("m1"):
            assert await sup.unload() == [("m0", "completion")]
            assert set(await loaded(sup)) == {"m1"}
        assert await sup.unload(["m1"]) == [("m1", "completion")]
        assert await sup.status() == []

    async def test_reconfigure_restarts_with_new_settings(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        sup = await make_supervisor()
        await sup.load("m0")
        models.add("m0", seed=0, context_size=256)
        await sup.reconfigure("m0")
        assert await sup.status() == []
        async with sup.acquire("m0") as r:
            assert r.pid is not None
            argv = psutil.Process(r.pid).cmdline()
        assert argv[argv.index("--ctx-size") + 1] == "256"

    async def test_reconfigure_of_a_busy_runner_waits_for_it_to_go_idle(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        sup = await make_supervisor()
        async with sup.acquire("m0") as r:
            models.add("m0", seed=0, context_size=256)
            await sup.reconfigure("m0")
            assert await chat(r)  # the busy runner keeps serving
        assert [row.state for row in await sup.status()] == ["stopping"]
        async with sup.acquire("m0") as r2:
            assert r2.pid is not None
            assert r2.pid != r.pid
            argv = psutil.Process(r2.pid).cmdline()
        assert argv[argv.index("--ctx-size") + 1] == "256"

    async def test_an_unknown_model_fails_with_the_resolvers_error_and_leaves_nothing(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor()
        with pytest.raises(ModelNotFound):
            async with sup.acquire("nope"):
                pass
        assert await sup.status() == []
        assert not sup.in_use("nope")

    async def test_preload_and_embedding_mode_are_separate_runners(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor(max_loaded=3)
        await sup.preload(["m0"], wait=True)
        async with sup.acquire("m0", "embedding") as r:
            assert r.mode == "embedding"
        rows = await sup.status()
        assert sorted((row.model, row.mode) for row in rows) == [
            ("m0", "completion"),
            ("m0", "embedding"),
        ]
        assert sup.runner_log("m0", "embedding").exists()

    async def test_a_deep_run_dir_still_gets_a_short_socket_path(
        self, tmp_path: Path, llama_server_bin: Path, models: Models
    ) -> None:
        """AF_UNIX paths are capped near 104 bytes: sockets move to a short private directory."""
        deep = tmp_path / ("d" * 60) / ("e" * 60) / "run"
        config = RunnersConfig(llama_server_path=llama_server_bin, run_dir=deep, log_dir=deep)
        async with Supervisor(config, models) as sup, sup.acquire("m0") as r:
            assert len(str(r.socket_path)) < 100
            assert await chat(r)

    async def test_binary_reports_path_version_and_backend(
        self, make_supervisor: Factory, llama_server_bin: Path
    ) -> None:
        sup = await make_supervisor()
        info = await sup.binary()
        assert info.path == llama_server_bin
        assert info.version
        assert info.version != "unknown"
        assert info.backend
        assert info.source.startswith("runners.llama_server_path=")
        assert info.probe == "passed: generated a token"

    async def test_no_binary_lists_every_place_tried(self, tmp_path: Path) -> None:
        with pytest.raises(BinaryNotFound) as info:
            await locate(tmp_path / "nope", env={"PATH": str(tmp_path)})
        assert str(tmp_path / "nope") in info.value.message
        assert "install" in info.value.message


@pytest.mark.slow
async def test_gemma_answers_through_a_runner(
    make_supervisor: Factory, models: Models, gemma_gguf: Path
) -> None:
    models.files["gemma"] = ModelFiles(
        id="gemma",
        name="ai/gemma3:270M",
        gguf_path=gemma_gguf,
        trained_context=32768,
        estimated_bytes=gemma_gguf.stat().st_size,
    )
    sup = await make_supervisor(load_timeout_s=60)
    # The engine's probe ran Q4_K kernels before this binary was chosen: no SIGILL escape here.
    async with sup.acquire("gemma") as r:
        answer = await chat(r, max_tokens=16)
    assert answer.strip()


class TestLiveConfig:
    """Issue 16: a reload's runners.* settings and a reconfigure that brings a model back."""

    async def test_a_busy_pinned_runner_reconfigured_comes_back_once_idle(
        self, make_supervisor: Factory, models: Models
    ) -> None:
        models.add("m0", seed=0, pinned=True)
        sup = await make_supervisor()
        async with sup.acquire("m0") as r:
            models.add("m0", seed=0, pinned=True, context_size=256)
            await sup.reconfigure("m0", reload=True)
            assert await chat(r)  # the busy runner keeps serving
        # Once idle it stops and loads again by itself, with the new settings.
        await eventually(lambda: _true(loaded_again(sup, r.pid)), timeout_s=30)
        (row,) = await sup.status()
        assert row.pid is not None
        argv = psutil.Process(row.pid).cmdline()
        assert argv[argv.index("--ctx-size") + 1] == "256"

    async def test_apply_config_lowers_max_loaded_and_sets_the_new_ttl(
        self, make_supervisor: Factory
    ) -> None:
        sup = await make_supervisor(max_loaded=2, idle_ttl_s=300)
        await sup.preload(["m0"], wait=True)
        await sup.preload(["m1"], wait=True)
        old = sup._config
        await sup.apply_config(live.plan(old, replace(old, max_loaded=1, idle_ttl_s=30)))
        await eventually(lambda: _true(len(sup._runners) == 1))
        (row,) = [s for s in await sup.status() if s.state == "ready"]
        assert row.model == "m1"  # the least recently used one went
        assert row.until is not None
        assert row.until < time.time() + 40


def loaded_again(sup: Supervisor, old_pid: int | None) -> bool:
    runners = list(sup._runners.values())
    return len(runners) == 1 and runners[0].pid != old_pid and runners[0].state.value == "ready"
