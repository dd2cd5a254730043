"""The supervisor: one runner per (model, mode), which ones stay loaded, and who waits.

Owns every runner, load and stop task (a dict of tasks, not a TaskGroup: one failed load must not
cancel the others).  Loads belong to the supervisor; requests only wait on them, so a client that
leaves cancels its wait, never the load.  Decisions follow "read state, call ``policy``, commit to
the maps, then await": no ``await`` between a read that gates a mutation and the mutation.
Knows nothing of HTTP routes or OCI: models come from the injected ``resolve`` callable.  What
differs between engines (llama.cpp, MLX) is the backends' (``runners/backend.py``): the policy
here is the same for all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from modelrunner.config import RunnersConfig
from modelrunner.errors import (
    ModelRunnerError,
    RunnerFailed,
    TooManyRequests,
    Unavailable,
    UpstreamError,
)
from modelrunner.runners import live, policy
from modelrunner.runners.args import context_size
from modelrunner.runners.backend import Backend, Backends, EngineStatus, default_backends
from modelrunner.runners.events import RunnerEvent, RunnerObserver, Transition, notify, stop_reason
from modelrunner.runners.kvcache import KVCache
from modelrunner.runners.llamacpp import LlamaCpp
from modelrunner.runners.locate import BinaryInfo
from modelrunner.runners.memory import estimate_bytes, rss_bytes, total_memory_bytes
from modelrunner.runners.model import Mode, ModelFiles, ResolveFn
from modelrunner.runners.process import ChildFailed, ChildProcess, LogSink, is_oom, sweep_leftovers
from modelrunner.runners.runner import (
    Changed,
    Key,
    Runner,
    RunnerStatus,
    SupervisorStats,
    gib,
    prepare_dirs,
    slug,
)
from modelrunner.runners.state import Event, RunnerState

__all__ = ["BinaryInfo", "Runner", "RunnerStatus", "Supervisor", "SupervisorStats"]

log = structlog.get_logger(__name__)

CRASH_WAIT_S = 2.0  # how long a failed request waits to learn whether its runner died
PINNED_RETRY_AFTER_S = 30  # all slots pinned: only an operator frees one (unload, reload)


class Supervisor:
    """Starts, shares, evicts and stops runners of every backend; see docs/architecture.md."""

    def __init__(
        self,
        config: RunnersConfig,
        resolve: ResolveFn,
        *,
        env: Mapping[str, str] | None = None,
        backends: Backends | None = None,
    ) -> None:
        self._env = dict(os.environ if env is None else env)
        self.backends = default_backends(self._env) if backends is None else backends
        for backend in self.backends:
            backend.check(config)
        self._config = config
        self._resolve = resolve
        self._runners: dict[Key, Runner] = {}
        # Not a TaskGroup: one failed load must not cancel the other models' loads.
        self._loads: dict[Key, asyncio.Task[Runner]] = {}
        self._stops: set[asyncio.Task[None]] = set()
        self._stopping: set[Runner] = set()  # shown by status() until reaped
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queued: collections.Counter[Key] = collections.Counter()
        self._failures: dict[Key, int] = {}
        self._changed = Changed()
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._budget_bytes: int | None = None
        self._socket_dir = config.run_dir
        self._record_dir = config.run_dir / "runners"
        self._generation = itertools.count(1)
        self.stats = SupervisorStats()
        self.kv = KVCache(config.kv_cache, home=config.run_dir.parent)  # prompt caches
        # Told of every runner transition (the server's event bus); see runners/events.py.
        self.observers: list[RunnerObserver] = []

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Make the directories and kill runners a crashed daemon left; starts nothing else."""
        if self._started:  # every request comes through here: no lock once started
            return
        async with self._start_lock:
            await self._start_once()

    async def _start_once(self) -> None:
        if not self._started:
            cfg = self._config
            self._socket_dir = await asyncio.to_thread(prepare_dirs, cfg.run_dir, cfg.log_dir)
            killed = await asyncio.to_thread(
                sweep_leftovers, self._record_dir, grace_s=min(cfg.stop_grace_s, 5.0)
            )
            if killed:
                log.warning("runner.leftovers_killed", pids=killed)
            await self.kv.open()
            if cfg.memory_fraction is not None:
                self._budget_bytes = int(await total_memory_bytes() * cfg.memory_fraction)
            self._started = True

    async def aclose(self) -> None:
        """Refuse new work, cancel loads, stop every runner in parallel; idempotent."""
        self._closed = True
        self._changed.notify()
        for task in list(self._tasks):
            task.cancel()
        while self._loads:
            loads = list(self._loads.values())
            for task in loads:
                task.cancel()
            await asyncio.gather(*loads, return_exceptions=True)
        for runner in list(self._runners.values()):
            self._stop(runner, "shutdown")
        while self._stops or self._tasks:
            await asyncio.gather(*self._stops, *self._tasks, return_exceptions=True)
        await self.kv.aclose()  # conversation saves still committing (runners/kv_store.py)

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- requests ------------------------------------------------------------------------------

    def acquire(
        self, model_id: str, mode: Mode = "completion", keep_alive_s: float | None = None
    ) -> Acquired:
        """``async with``: a ready runner, counted in flight until the block exits.

        Raises TooManyRequests (the model's in-flight limit), Unavailable (queue full, queue
        timeout, shutting down) or RunnerFailed (the load failed, or the runner died under the
        block: an error inside the block becomes RunnerFailed with the runner's log tail).
        """
        return Acquired(self, (model_id, mode), keep_alive_s)

    def _admit_now(self, key: Key) -> Runner | None:
        """The common case of ``_admit`` without its coroutines: started, open, and the key's
        runner ready with room (else None: ``_admit`` decides)."""
        if not self._started or self._closed:
            return None
        runner = self._ready(key)
        if runner is None or runner.in_flight >= self._config.max_in_flight:
            return None
        return self._take(runner)

    async def _admit(self, key: Key) -> Runner:
        self._check_open()
        await self.start()
        cfg = self._config
        runner = self._ready(key)
        if runner is not None:
            if runner.in_flight < cfg.max_in_flight:
                return self._take(runner)
            self.stats.rate_limited += 1
            raise TooManyRequests(
                f"model {runner.model.name!r} already has {runner.in_flight} requests in flight "
                f"(limit {cfg.max_in_flight}, runners.max_in_flight); retry later",
                retry_after_s=policy.retry_after_s(runner.in_flight, cfg.max_in_flight),
            )
        # The first waiter is always let in (it starts the load), so max_queue=0 stays usable.
        if self._queued[key] >= max(1, cfg.max_queue):
            self.stats.queue_full += 1
            raise Unavailable(
                f"{self._queued[key]} requests are already waiting for model {key[0]!r} "
                f"(runners.max_queue); retry later"
            )
        self._queued[key] += 1
        try:
            async with asyncio.timeout(cfg.queue_timeout_s):
                return await self._wait_for_runner(key)
        except TimeoutError:
            self.stats.queue_timeouts += 1
            raise Unavailable(
                f"model {key[0]!r} ({key[1]}) was not ready after waiting "
                f"{cfg.queue_timeout_s:g}s (runners.queue_timeout_s): every runner slot is busy "
                "or the load is slow; retry later"
            ) from None
        finally:
            self._queued[key] -= 1
            if not self._queued[key]:
                del self._queued[key]
                self._rearm_if_idle(key)

    async def _wait_for_runner(self, key: Key) -> Runner:
        while True:
            self._check_open()
            runner = self._ready(key)
            if runner is not None:
                if runner.in_flight < self._config.max_in_flight:
                    return self._take(runner)
                await self._changed.wait()  # queued behind the in-flight limit
                continue
            await self._join(self._loads.get(key) or self._start_load(key))

    async def _join(self, load: asyncio.Task[Runner]) -> None:
        """Wait for a load without owning it: a waiter that is cancelled (client gone) leaves the
        load running; a load cancelled by shutdown is an Unavailable, not the caller's cancel."""
        try:
            await asyncio.shield(load)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if load.cancelled() and task is not None and not task.cancelling():
                self._check_open()
                return  # cancelled for another reason: the caller looks again
            raise

    def _ready(self, key: Key) -> Runner | None:
        """The key's runner if it is ready and its process alive (a dead one is a crash)."""
        runner = self._runners.get(key)
        if runner is not None and runner.child is not None and runner.child.exited.done():
            self._mark_crashed(runner)
            runner = self._runners.get(key)
        return runner if runner is not None and runner.state is RunnerState.READY else None

    def _take(self, runner: Runner) -> Runner:
        runner.in_flight += 1
        runner.last_used = time.monotonic()
        runner.idle.clear()
        runner.expires_at = None
        return runner

    def _release(self, runner: Runner) -> None:
        runner.in_flight -= 1
        runner.last_used = time.monotonic()
        runner.last_used_wall = time.time()
        if (
            runner.in_flight == 0
            and self._runners.get(runner.key) is runner
            and runner.state is RunnerState.READY
        ):
            self._arm_idle(runner)
        self._changed.notify()

    async def _crash_error(self, runner: Runner, error: Exception) -> RunnerFailed | None:
        """If *runner* died under a request, the clear error to raise instead of *error*."""
        child = runner.child
        if child is None or isinstance(error, TooManyRequests):
            return None
        transport = isinstance(
            error, aiohttp.ClientError | OSError | UpstreamError | asyncio.IncompleteReadError
        )
        if not child.exited.done() and transport:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CRASH_WAIT_S):
                    await asyncio.shield(child.exited)
        if not child.exited.done() or runner.stop_task is not None:
            return None  # alive, or stopped on purpose (shutdown, unload)
        self._mark_crashed(runner)
        if runner.failure is None:
            failed = await child.failure("crashed while serving")
            runner.failure = self._runner_failed(runner, failed)
        return runner.failure

    # --- loads ---------------------------------------------------------------------------------

    def _start_load(self, key: Key) -> asyncio.Task[Runner]:
        task = asyncio.create_task(self._load(key), name=f"load {key[0]} {key[1]}")
        self._loads[key] = task

        def done(t: asyncio.Task[Runner]) -> None:
            if self._loads.get(key) is t:
                del self._loads[key]
            if not t.cancelled():
                t.exception()  # retrieved: the load logged it; waiters re-raise it
            self._changed.notify()

        task.add_done_callback(done)
        return task

    async def _load(self, key: Key) -> Runner:
        model_id, mode = key
        cfg = self._config
        delay = policy.backoff_delay_s(
            self._failures.get(key, 0), base_s=cfg.crash_backoff_s, max_s=cfg.crash_backoff_max_s
        )
        if delay:
            log.warning("runner.backoff", model=model_id, mode=mode, delay_s=delay)
            await asyncio.sleep(delay)
        files = await self._resolve(model_id)
        backend = self.backends.for_files(files, mode)
        oom_retry = True
        while True:
            runner = self._new_runner(key, files, backend)
            argv = await backend.command(runner, cfg, self.kv)
            await self._reserve(runner)
            try:
                # At most max_loaded processes: let the victims (and any other stop) exit first.
                if self._stops:
                    await asyncio.gather(*(asyncio.shield(t) for t in list(self._stops)))
                await self._spawn(runner, argv, backend)
                return runner
            except ChildFailed as e:
                lines = runner.child.tail() if runner.child is not None else []
                await self._abort_load(runner, failed=True)
                victims = self._oom_victims() if oom_retry and is_oom(lines) else ()
                if victims:
                    log.warning("runner.oom_retry", model=files.name, evict=len(victims))
                    oom_retry = False
                    for victim in victims:
                        self._stop(victim, "memory")
                    continue
                self._load_failed(runner, e)
                raise self._runner_failed(runner, e, loading=True) from None
            except BaseException:
                await self._abort_load(runner, failed=False)
                raise

    def _new_runner(self, key: Key, files: ModelFiles, backend: Backend) -> Runner:
        tag = hashlib.sha256(f"{key[0]}\0{key[1]}".encode()).hexdigest()[:10]
        socket = self._socket_dir / f"r-{tag}-{next(self._generation)}.sock"
        runner = Runner(key, files, socket, self.runner_log(*key), backend.name)
        runner.need_bytes = estimate_bytes(files, context_size(files, self._config))
        return runner

    async def _reserve(self, runner: Runner) -> None:
        """Make room (true LRU) and register *runner* as loading; waits while all are busy."""
        cfg = self._config
        waiting = False
        try:
            async with asyncio.timeout(cfg.queue_timeout_s):
                while True:
                    self._check_open()
                    loaded = [
                        policy.Loaded(
                            key=r.key,
                            need_bytes=r.need_bytes,
                            last_used=r.last_used,
                            busy=self._busy(r),
                            pinned=r.model.settings.pinned,
                        )
                        for r in self._runners.values()
                    ]
                    cfg = self._config  # a reload may raise max_loaded while this waits
                    plan = policy.plan_load(
                        runner.need_bytes,
                        loaded,
                        max_loaded=cfg.max_loaded,
                        budget_bytes=self._budget_bytes,
                    )
                    if plan.fits:
                        for key in plan.evict:
                            self._stop(self._runners[key], "lru")
                        runner.move(Event.SPAWN)
                        self._runners[runner.key] = runner
                        break
                    if plan.blocked == "too_big":
                        raise Unavailable(
                            f"model {runner.model.name!r} needs about {gib(runner.need_bytes)} "
                            f"but the memory budget is {gib(self._budget_bytes or 0)} "
                            "(runners.memory_fraction); lower its context size or raise the budget"
                        )
                    if plan.blocked == "pinned":
                        raise Unavailable(
                            f"cannot load model {runner.model.name!r}: all {cfg.max_loaded} runner "
                            "slots are held by pinned models (runners.max_loaded); unload one or "
                            "raise the limit",
                            retry_after_s=PINNED_RETRY_AFTER_S,
                        )
                    if not waiting:  # once per load, not on every wake-up
                        waiting = True
                        log.info("runner.waiting_for_room", model=runner.model.name)
                    await self._changed.wait()
        except TimeoutError:
            raise Unavailable(
                f"no room to load model {runner.model.name!r}: every loaded runner stayed busy for "
                f"{cfg.queue_timeout_s:g}s (runners.max_loaded={cfg.max_loaded}); retry later"
            ) from None

    async def _spawn(self, runner: Runner, argv: list[str], backend: Backend) -> None:
        cfg = self._config
        started = time.monotonic()
        sink = LogSink(
            runner.log_path,
            max_bytes=cfg.log_max_bytes,
            backups=cfg.log_backups,
            tail_lines=cfg.log_tail_lines,
        )
        runner.child = await ChildProcess.spawn(
            argv,
            sink=sink,
            env=self._env,
            record_dir=self._record_dir,
            socket=runner.socket_path,
            name=backend.process,
        )
        log.info(
            "runner.loading",
            model=runner.model.name,
            mode=runner.mode,
            backend=runner.backend,
            pid=runner.pid,
        )
        self._emit("loading", runner)
        await runner.child.wait_ready(
            runner.socket_path,
            stall_timeout_s=cfg.load_timeout_s,
            interval_s=cfg.health_interval_s,
        )
        await self.kv.restore(runner)  # before any request can take it
        runner.move(Event.READY)
        runner.loaded_since = time.time()
        runner.ready_at = runner.last_used = time.monotonic()
        self.stats.loads += 1
        self._own(self._watch(runner), f"watch {runner.pid}")
        log.info(
            "runner.ready",
            model=runner.model.name,
            mode=runner.mode,
            pid=runner.pid,
            load_ms=round((time.monotonic() - started) * 1000, 1),
        )
        self._emit("ready", runner)
        if not self._queued[runner.key]:
            self._arm_idle(runner)

    async def _abort_load(self, runner: Runner, *, failed: bool) -> None:
        """Undo a load that did not finish: no process, no map entry, no sticky state."""
        if self._runners.get(runner.key) is runner:
            del self._runners[runner.key]
        if runner.state is RunnerState.STARTING:
            runner.move(Event.FAIL if failed else Event.STOP)
        self._changed.notify()
        if runner.child is not None:
            await runner.child.terminate(grace_s=self._config.stop_grace_s)
        runner.move(Event.EXITED)
        if runner.pid is not None:
            self._emit("failed" if failed else "stopped", runner, "load_failed" if failed else None)

    def _load_failed(self, runner: Runner, error: ChildFailed) -> None:
        self.stats.load_failures += 1
        self._failures[runner.key] = self._failures.get(runner.key, 0) + 1
        log.error(
            "runner.load_failed",
            model=runner.model.name,
            mode=runner.mode,
            reason=error.reason,
            failures=self._failures[runner.key],
        )

    def _busy(self, runner: Runner) -> bool:
        """Not evictable: serving, loading, or just loaded with requests queued to take it.

        The last case matters: without it two models under max_loaded=1 can evict each other
        between "load done" and "waiters take the runner", forever.
        """
        return (
            runner.in_flight > 0
            or runner.state is not RunnerState.READY
            or self._queued[runner.key] > 0
        )

    def _oom_victims(self) -> list[Runner]:
        loaded = [
            policy.Loaded(r.key, r.need_bytes, r.last_used, self._busy(r), r.model.settings.pinned)
            for r in self._runners.values()
            if r.state is RunnerState.READY
        ]
        return [self._runners[k] for k in policy.plan_oom_retry(loaded)]

    def _runner_failed(
        self, runner: Runner, error: ChildFailed, *, loading: bool = False
    ) -> RunnerFailed:
        what = "failed to load" if loading else "failed"
        return RunnerFailed(
            f"runner for model {runner.model.name!r} ({runner.mode}) {what}: {error.reason}; "
            f"full log: {runner.log_path}",
            error.tail,
        )

    # --- crashes, idle, stops ------------------------------------------------------------------

    async def _watch(self, runner: Runner) -> None:
        """Notice a runner that exits without being asked."""
        child = runner.child
        if child is None:
            return
        await asyncio.shield(child.exited)
        self._mark_crashed(runner)

    def _mark_crashed(self, runner: Runner) -> None:
        """Commit a crash at once (whoever notices first): out of the maps, counted, backoff.

        The cleanup that needs awaiting is owned like a stop: shutdown awaits, never cancels it.
        """
        if runner.state is not RunnerState.READY or runner.child is None:
            return  # stopped on purpose, or already handled
        runner.move(Event.CRASH)
        self.stats.crashes += 1
        if self._runners.get(runner.key) is runner:
            del self._runners[runner.key]
        runner.idle.cancel()
        ready_for = time.monotonic() - (runner.ready_at or 0.0)
        recent = ready_for < self._config.crash_backoff_max_s
        self._failures[runner.key] = (self._failures.get(runner.key, 0) if recent else 0) + 1
        self._changed.notify()
        task = asyncio.create_task(self._after_crash(runner, runner.child), name="crashed")
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    async def _after_crash(self, runner: Runner, child: ChildProcess) -> None:
        failed = await child.failure("crashed while serving")
        if runner.failure is None:
            runner.failure = self._runner_failed(runner, failed)
        log.error(
            "runner.crashed",
            model=runner.model.name,
            mode=runner.mode,
            pid=child.pid,
            returncode=child.returncode,
            in_flight=runner.in_flight,
        )
        self._emit("crashed", runner, "crashed", exit_code=child.returncode)
        await child.terminate(grace_s=0)  # reap the group, drop the pid record and socket
        runner.move(Event.EXITED)
        if runner.model.settings.pinned and not self._closed:
            self._own(self._restart(runner.key), f"restart {runner.model_id}")

    async def _restart(self, key: Key) -> None:
        """Bring a pinned model back after a crash; backoff grows inside each load."""
        while not self._closed:
            abandon = None
            try:
                await self.load(*key)
                return
            except RunnerFailed as e:
                log.warning("runner.restart_failed", model=key[0], mode=key[1], error=e.message)
            except ModelRunnerError as e:  # gone from the store, bad settings: not a crash loop
                abandon = e.message
            if abandon is not None:
                log.error("runner.restart_abandoned", model=key[0], mode=key[1], error=abandon)
                return

    def _arm_idle(self, runner: Runner) -> None:
        """Start the idle clock of a runner with nothing in flight (or stop it right away)."""
        if runner.stale:
            stop = self._stop(runner, "reconfigured")
            if runner.reload:
                self._own(self._load_after(stop, runner.key), f"reload {runner.model_id}")
            return
        ttl = policy.effective_ttl(
            request_keep_alive_s=runner.keep_alive_s,
            model_idle_ttl_s=runner.model.settings.idle_ttl_s,
            default_idle_ttl_s=self._config.idle_ttl_s,
            pinned=runner.model.settings.pinned,
        )
        runner.expires_at = None
        if ttl is None:
            runner.idle.cancel()
            return
        if ttl == 0:
            self._stop(runner, "keep_alive")
            return
        runner.expires_at = time.time() + ttl
        runner.idle.set(ttl, self._idle_expired, runner)

    def _idle_expired(self, runner: Runner) -> None:
        if (
            self._runners.get(runner.key) is runner
            and runner.state is RunnerState.READY
            and runner.in_flight == 0
        ):
            self._stop(runner, "idle")

    def _rearm_if_idle(self, key: Key) -> None:
        """The last waiter left before taking a fresh runner: give it its idle timer."""
        runner = self._runners.get(key)
        if (
            runner is not None
            and runner.state is RunnerState.READY
            and runner.in_flight == 0
            and not runner.idle.armed
            and not self._closed
        ):
            self._arm_idle(runner)

    def _stop(self, runner: Runner, reason: str) -> asyncio.Task[None]:
        """Decide to stop *runner* now (sync: it leaves the maps at once); the task reaps it."""
        if runner.stop_task is not None:
            return runner.stop_task
        save = runner.state is RunnerState.READY  # a planned stop of a ready runner, not a crash
        runner.move(Event.STOP)
        runner.idle.cancel()
        if self._runners.get(runner.key) is runner:
            del self._runners[runner.key]
        if reason in ("lru", "memory"):
            self.stats.evictions += 1
            log.info("runner.evicted", model=runner.model.name, mode=runner.mode, reason=reason)
        else:
            log.info("runner.stopping", model=runner.model.name, mode=runner.mode, reason=reason)
        if reason in ("idle", "lru", "memory", "unload", "keep_alive"):
            self._failures.pop(runner.key, None)  # it served and left cleanly
        self._stopping.add(runner)
        self._emit("stopping", runner, reason)
        task = asyncio.create_task(
            self._finish_stop(runner, reason, save=save), name=f"stop {runner.pid}"
        )
        runner.stop_task = task
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
        self._changed.notify()
        return task

    async def _finish_stop(self, runner: Runner, reason: str = "", *, save: bool = False) -> None:
        try:
            if save:
                await self.kv.save(runner)  # bounded by runners.kv_cache.save_timeout_s
            if runner.child is not None:
                await runner.child.terminate(grace_s=self._config.stop_grace_s)
            runner.move(Event.EXITED)
        finally:
            self._stopping.discard(runner)
            self._changed.notify()
            self._emit("stopped", runner, reason or None)

    # --- explicit management -------------------------------------------------------------------

    async def load(self, model_id: str, mode: Mode = "completion") -> None:
        """Load a model now (or join its load) without sending it a request."""
        self._check_open()
        await self.start()
        key = (model_id, mode)
        runner = self._runners.get(key)
        if runner is not None and runner.state is RunnerState.READY:
            runner.last_used = time.monotonic()
            if runner.in_flight == 0:
                self._arm_idle(runner)
            return
        await self._join(self._loads.get(key) or self._start_load(key))

    async def preload(
        self, model_ids: Iterable[str], *, wait: bool = False, mode: Mode = "completion"
    ) -> None:
        """Start loading *model_ids* in the background (the config's preload list)."""

        async def one(model_id: str) -> None:
            error = None
            try:
                await self.load(model_id, mode)
            except ModelRunnerError as e:
                error = e.message
            if error is not None:
                log.error("runner.preload_failed", model=model_id, error=error)

        tasks = [self._own(one(m), f"preload {m}") for m in model_ids]
        if wait:
            await asyncio.gather(*(asyncio.shield(t) for t in tasks))

    async def unload(
        self, model_ids: Sequence[str] | None = None, mode: Mode | None = None
    ) -> list[Key]:
        """Stop idle runners of *model_ids* (None = every idle runner); busy ones are skipped."""
        targets = [
            r
            for r in list(self._runners.values())
            if (model_ids is None or r.model_id in model_ids)
            and (mode is None or r.mode == mode)
            and r.state is RunnerState.READY
            and r.in_flight == 0
        ]
        stops = [self._stop(r, "unload") for r in targets]
        await asyncio.gather(*(asyncio.shield(t) for t in stops))
        return [r.key for r in targets]

    async def reconfigure(self, model_id: str, *, reload: bool = False) -> None:
        """New settings for *model_id*: stop its idle runners now and busy ones once idle.

        *reload* (a pinned or preloaded model): each runner stopped loads again, with the new
        settings, without waiting for a request.
        """
        for key in [k for k in self._failures if k[0] == model_id]:
            del self._failures[key]
        stops = []
        for runner in [r for r in self._runners.values() if r.model_id == model_id]:
            if runner.state is RunnerState.READY and runner.in_flight == 0:
                stop = self._stop(runner, "reconfigured")
                stops.append(stop)
                if reload:
                    self._own(self._load_after(stop, runner.key), f"reload {model_id}")
            else:
                runner.stale = True
                runner.reload = reload
        await asyncio.gather(*(asyncio.shield(t) for t in stops))

    async def _load_after(self, stop: asyncio.Task[None], key: Key) -> None:
        """Once *stop* is done, load *key* again (one try: a failure is logged, not retried)."""
        await asyncio.shield(stop)
        await self.preload([key[0]], wait=True, mode=key[1])

    async def apply_config(self, change: live.RunnersChange) -> None:
        """A reload's new runners.* settings (see runners/live.py): TTLs re-armed from now,
        limits and queues at the next decision, runners over a lowered max_loaded stopped."""
        cfg = change.config
        if not change.applied:
            return
        for backend in self.backends:
            backend.check(cfg)
        total = await total_memory_bytes() if cfg.memory_fraction is not None else 0
        # Committed with no await from here on: decide, then act.
        self._config = cfg
        self.kv.reconfigure(cfg.kv_cache)
        self._budget_bytes = int(total * cfg.memory_fraction) if cfg.memory_fraction else None
        if "runners.idle_ttl_s" in change.applied:  # the new TTL, counted from the reload
            for runner in list(self._runners.values()):
                if runner.state is RunnerState.READY and runner.in_flight == 0:
                    self._arm_idle(runner)
        loaded = [
            policy.Loaded(r.key, r.need_bytes, r.last_used, self._busy(r), r.model.settings.pinned)
            for r in self._runners.values()
        ]
        for key in live.over_limit(loaded, change.config.max_loaded):
            self._stop(self._runners[key], "max_loaded")
        self._changed.notify()  # waiters re-plan: a raised max_loaded or max_in_flight admits

    # --- queries -------------------------------------------------------------------------------

    async def status(self) -> list[RunnerStatus]:
        """One row per runner (loading, ready, stopping), with RSS read off the loop."""
        runners = sorted(
            [*self._runners.values(), *self._stopping], key=lambda r: (r.model.name, r.mode)
        )
        rss = await rss_bytes(r.pid for r in runners if r.pid is not None)
        return [
            RunnerStatus(
                model=r.model_id,
                name=r.model.name,
                mode=r.mode,
                pid=r.pid,
                state=r.state.value,
                rss_bytes=rss.get(r.pid) if r.pid is not None else None,
                loaded_since=r.loaded_since,
                last_used=r.last_used_wall,
                in_flight=r.in_flight,
                until=r.expires_at,
                pinned=r.model.settings.pinned,
                restored_tokens=r.restored_tokens,
                backend=r.backend,
            )
            for r in runners
        ]

    def in_use(self, model_id: str) -> bool:
        """True while a runner of *model_id* is loading or serving a request."""
        return any(k[0] == model_id for k in self._loads) or any(
            r.model_id == model_id and r.in_flight > 0 for r in self._runners.values()
        )

    @property
    def budget_bytes(self) -> int | None:
        """The memory budget loads are planned against (runners.memory_fraction), None: none."""
        return self._budget_bytes

    def runner_log(self, model_id: str, mode: Mode = "completion") -> Path:
        """The log file of the runner for (model, mode), whether or not it runs now."""
        return self._config.log_dir / f"{slug(model_id)}-{mode}.log"

    async def binary(self) -> BinaryInfo:
        """The llama-server in use, its version and device (looked up once)."""
        llama = self.backends[LlamaCpp.name]
        if not isinstance(llama, LlamaCpp):  # a test's backends may replace it
            raise TypeError(f"the {LlamaCpp.name} backend is not llama-server: {llama!r}")
        return await llama.binary(self._config)

    async def engines(self) -> list[EngineStatus]:
        """Each backend and whether it is installed here (``GET /engines/status``)."""
        return list(await asyncio.gather(*(b.status(self._config) for b in self.backends)))

    # --- helpers -------------------------------------------------------------------------------

    def _emit(
        self,
        state: Transition,
        runner: Runner,
        detail: str | None = None,
        *,
        exit_code: int | None = None,
    ) -> None:
        if self.observers:
            event = RunnerEvent(
                state=state,
                model=runner.model.name,
                model_id=runner.model_id,
                mode=runner.mode,
                pid=runner.pid,
                reason=stop_reason(detail) if detail is not None else None,
                detail=detail,
                exit_code=exit_code,
                backend=runner.backend,
            )
            notify(self.observers, event)

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the model runner is shutting down")

    def _own(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("runner.task_failed", task=t.get_name(), error=repr(t.exception()))

        task.add_done_callback(done)
        return task


class Acquired:
    """``Supervisor.acquire``'s block, as a class: once per request, and an async generator's
    context manager costs several calls more on the proxy's hot path."""

    __slots__ = ("_keep_alive_s", "_key", "_runner", "_supervisor")

    def __init__(self, supervisor: Supervisor, key: Key, keep_alive_s: float | None) -> None:
        self._supervisor = supervisor
        self._key = key
        self._keep_alive_s = keep_alive_s
        self._runner: Runner | None = None

    async def __aenter__(self) -> Runner:
        supervisor = self._supervisor
        runner = supervisor._admit_now(self._key) or await supervisor._admit(self._key)
        runner.keep_alive_s = self._keep_alive_s  # Ollama: each request's keep_alive wins
        self._runner = runner
        return runner

    async def __aexit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        runner = self._runner
        if runner is None:
            return
        try:
            if isinstance(error, Exception):
                failure = await self._supervisor._crash_error(runner, error)
                if failure is not None:
                    raise failure from error
        finally:
            self._supervisor._release(runner)
