"""
The daemon process: both listeners, signals, readiness, reload and a draining shutdown.

Owns the lifecycles the app does not: the store, the supervisor, the aiohttp runner and its two
sites (the Unix socket, mode 0600, and TCP on a loopback address unless remote access is allowed
explicitly).  Before it makes anything it adds 0o077 to the umask and tightens its folders
(``fsmodes.py``): other local users must not reach a runner's socket behind the API's back.
``daemon.ready`` is logged (and ``READY=1`` sent to systemd's ``NOTIFY_SOCKET``) only once both
listen.  SIGTERM/SIGINT: drain with the listeners open (late requests get a 503,
``server/drain.py``), let in-flight requests finish (at most ``server.drain_timeout_s``, then cut
them), stop accepting, stop every runner, exit 0.
SIGHUP (and ``POST /admin/reload``): re-read the config file; live ``runners.*`` keys apply
(``runners/live.py``), models whose settings changed are reconfigured, every other runner stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import signal
import socket
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog
from aiohttp import web

from modelrunner import fsmodes, logs
from modelrunner.config import Config
from modelrunner.errors import ConfigError, InvalidConfig, ModelRunnerError, Unavailable
from modelrunner.runners import live
from modelrunner.runners.supervisor import Supervisor
from modelrunner.server import auth, eventloop, provenance
from modelrunner.server.api import activity_api
from modelrunner.server.app import make_app, settings_path
from modelrunner.server.catalog import Catalog, display_name
from modelrunner.server.drain import Drain
from modelrunner.server.fastlane import FastAppRunner
from modelrunner.server.header_guard import GuardedAppRunner
from modelrunner.server.kvcache_hooks import retain_stored, runners_config
from modelrunner.server.state import STATE

log = structlog.get_logger(__name__)

DAEMON_LOG = "daemon.log"
# server.* keys a reload applies at once; the others (listeners, timeouts) need a restart.
LIVE_SERVER_KEYS = ("max_body_bytes", "disable_metrics", "origins", "allowed_hosts")
LOG_ROTATE_BYTES = 10 * 1024 * 1024
RESTART_S = 2  # Retry-After during a drain: the bound plus about one restart
CUT_GRACE_S = 2.0  # after the drain bound, for cut requests to write their error event


class Tee:
    """A text stream writing to stderr and to the daemon's log file (served by ``/logs``)."""

    def __init__(self, *streams: TextIO) -> None:
        self._streams = streams

    def write(self, text: str) -> int:
        for s in self._streams:
            with contextlib.suppress(OSError, ValueError):
                s.write(text)
                s.flush()
        return len(text)

    def flush(self) -> None:
        for s in self._streams:
            with contextlib.suppress(OSError, ValueError):
                s.flush()

    def isatty(self) -> bool:
        return False


class LogFile:
    """The daemon's log file, rotated to ``.1`` whenever it grows past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = LOG_ROTATE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._size = self._file.tell()
        if self._size > max_bytes:
            self._rotate()

    def write(self, text: str) -> int:
        # Blocking, like every write of a log line to stderr: a few microseconds on a local disk.
        self._file.write(text)
        self._size += len(text)
        if self._size > self.max_bytes:
            self._rotate()
        return len(text)

    def flush(self) -> None:
        self._file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self._file.close()

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = 0


def sd_notify(state: str) -> bool:
    """Tell systemd (``Type=notify``) our state, e.g. ``READY=1``; False when not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("daemon.notify_failed", state=state, error=str(e))
        return False
    return True


def is_loopback(host: str) -> bool:
    return auth.is_loopback(host)


def check_host(config: Config) -> None:
    """A non-loopback ``server.host`` only with API keys or ``server.allow_unauthenticated``."""
    auth.check_exposure(config.server)


async def clear_socket(path: Path) -> None:
    """Remove a stale socket file; refuse if a daemon answers on it or it is not a socket."""
    try:
        st = await asyncio.to_thread(os.lstat, path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; remove it or choose --socket")
    try:
        async with asyncio.timeout(2):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
        await asyncio.to_thread(path.unlink, missing_ok=True)
        log.info("daemon.stale_socket_removed", socket=str(path))
        return
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise ConfigError(
        f"another daemon is already listening on {path}; stop it first "
        "(or use --socket to choose another path)"
    )


async def tighten(config: Config) -> None:
    """Take group and other bits off what an older version (or a loose umask) left there."""
    changed, errors = await asyncio.to_thread(fsmodes.tighten, config.own_dirs())
    if changed:
        log.info("daemon.modes_tightened", entries=changed)
    if errors:  # one line, not one per file (a disk that refuses chmod would flood the log)
        log.warning("daemon.modes_not_tightened", count=len(errors), first=errors[:5])


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None,
        overrides: Mapping[str, Any] | None,
        log_path: Path | None,
        log_stream: TextIO | None = None,
        json_logs: bool | None = None,
    ) -> None:
        self.json_logs = json_logs
        self.config = config
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.log_path = log_path
        self.log_stream = log_stream
        self.stop = asyncio.Event()
        self.catalog: Catalog | None = None
        self.supervisor: Supervisor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> int:
        from modelrunner.distribution.store import Store

        config = self.config
        check_host(config)
        fsmodes.private_umask()  # run() did already; kept here so Daemon.run stands alone
        await tighten(config)
        socket_path = config.server.socket
        await asyncio.to_thread(socket_path.parent.mkdir, parents=True, exist_ok=True)
        await clear_socket(socket_path)
        store = Store(config.store)
        await store.open()
        try:
            self.catalog = Catalog(config, store, settings_path(config))
            supervisor = Supervisor(runners_config(config), self.catalog.resolve)
            self.supervisor = supervisor
            try:
                await supervisor.start()
                await retain_stored(supervisor, store)
                await self._serve(store, supervisor)
            finally:
                await supervisor.aclose()
        finally:
            await store.close()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(socket_path.unlink, missing_ok=True)
        logs.flush_lines()  # the last access lines before the last line
        log.info("daemon.stopped")
        return 0

    async def _serve(self, store: Any, supervisor: Supervisor) -> None:
        config = self.config
        app = make_app(config, store, supervisor, catalog=self._ready()[0])
        state = app[STATE]
        state.daemon_log = self.log_path
        state.reload = self.reload
        state.config_path = self.config_path or config.home / "config.yaml"
        supervisor.observers.append(state.events.on_runner)  # GET /engines/events
        runner_class = FastAppRunner if config.server.fast_lane else GuardedAppRunner
        runner = runner_class(
            app,
            header_timeout_s=config.server.header_timeout_s,
            max_pending=config.server.max_pending_header_connections,
            handle_signals=False,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=config.server.drain_timeout_s,
        )
        await runner.setup()
        try:
            port = await self._listen(runner)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_stop, sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_hup)
            log.info(
                "daemon.ready",
                socket=str(config.server.socket),
                port=port,
                host=config.server.host if port else None,
                pid=os.getpid(),
                store=str(config.store.path),
            )
            # systemd's Type=notify: `systemctl start` returns once both listeners are up.
            await asyncio.to_thread(sd_notify, f"READY=1\nMAINPID={os.getpid()}")
            await self._preload()
            await self.stop.wait()
        finally:
            # The handlers stay until the loop closes: a second SIGTERM while draining must not
            # kill the process mid-shutdown (runners would be left to the next start's sweep).
            # Drain first with the listeners open (late requests get a 503, server/drain.py),
            # then stop accepting, so `daemon.stopping` means "no new connections".
            activity_api.close_streams(state)  # followers first: they never end by themselves
            await self._drain(state.drain)
            for site in list(runner.sites):
                await site.stop()
            log.info("daemon.stopping", drain_timeout_s=config.server.drain_timeout_s)
            await runner.cleanup()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self, drain: Drain) -> None:
        """Let requests in flight finish within server.drain_timeout_s, then cut the rest."""
        bound = self.config.server.drain_timeout_s
        # Retry once a restarted daemon can answer: the drain, then a start's few seconds.
        drain.start(retry_after_s=math.ceil(bound) + RESTART_S)
        await asyncio.to_thread(sd_notify, "STOPPING=1")
        log.info("daemon.draining", in_flight=drain.in_flight, drain_timeout_s=bound)
        if await drain.wait_idle(bound):
            return
        log.warning("daemon.drain_timeout", cut=drain.cut(), drain_timeout_s=bound)
        await drain.wait_idle(CUT_GRACE_S)  # each cut request writes its last event

    async def _listen(self, runner: web.AppRunner) -> int | None:
        server = self.config.server
        unix = web.UnixSite(runner, str(server.socket))
        # The process umask (fsmodes.private_umask) makes the socket 0700 from its bind: no
        # window where others can connect.  It used to be swapped to 0o177 around the bind, which
        # also hit whatever a worker thread created meanwhile (a folder 0600 cannot be entered).
        try:
            await unix.start()
        except OSError as e:
            raise ConfigError(
                f"cannot listen on the Unix socket {server.socket}: {e.strerror or e} "
                "(choose another with --socket; the path must be short, under ~100 bytes)"
            ) from None
        await asyncio.to_thread(os.chmod, server.socket, 0o600)
        await self._listen_ollama(runner)
        if not server.port:
            return None
        await self._listen_tcp(
            runner, server.port, "", "is another daemon running? (choose another with --port)"
        )
        return server.port

    async def _listen_tcp(self, runner: web.AppRunner, port: int, key: str, hint: str) -> None:
        """A TCP site on ``server.host``; a port in use is one ConfigError naming *hint*."""
        host = self.config.server.host
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port}{key}: {e.strerror or e}; {hint}"
            ) from None

    async def _listen_ollama(self, runner: web.AppRunner) -> None:
        """``server.ollama_port``: the same app on a second port (Ollama's 11434), if set."""
        server = self.config.server
        if not server.ollama_port or server.ollama_port == server.port:
            return
        await self._listen_tcp(
            runner,
            server.ollama_port,
            " (server.ollama_port)",
            "is Ollama itself running? (set server.ollama_port: 0)",
        )
        log.info("daemon.ollama_listener", host=server.host, port=server.ollama_port)

    def _on_stop(self, sig: signal.Signals) -> None:
        log.info("daemon.signal", signal=sig.name, already_stopping=self.stop.is_set())
        self.stop.set()

    def _on_hup(self) -> None:
        log.info("daemon.signal", signal="SIGHUP")
        self._own(self._reload_logged())

    def _own(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        error = None
        try:
            await self.reload()
        except ModelRunnerError as e:
            error = e.message
        if error is not None:
            log.error("daemon.reload_failed", error=error)

    def _ready(self) -> tuple[Catalog, Supervisor]:
        if self.catalog is None or self.supervisor is None:
            raise Unavailable("the daemon is not running yet")
        return self.catalog, self.supervisor

    async def _preload(self, refs: list[str] | None = None) -> None:
        catalog, supervisor = self._ready()
        if refs is None:
            refs = [ref for ref, s in self.config.models.items() if s.preload]
        ids = []
        for ref in refs:
            error = None
            try:
                ids.append((await catalog.lookup(ref)).id)
            except ModelRunnerError as e:
                error = e.message
            if error is not None:
                log.error("daemon.preload_skipped", model=ref, error=error)
        if ids:
            await supervisor.preload(ids)

    async def reload(self) -> dict[str, object]:
        """Re-read the config file; reconfigure only the models whose settings changed.

        ``runners.*`` keys apply live where they can (``runners/live.py``); the others, like
        listeners and paths, are named in a warning and in the answer.  A bad file changes
        nothing and is an InvalidConfig (422) naming the key.
        """
        catalog, supervisor = self._ready()
        try:
            new = await asyncio.to_thread(Config.load, self.config_path, None, self.overrides)
        except ConfigError as e:
            raise InvalidConfig(f"{e.message}; the running config is unchanged") from None
        old = catalog.config
        change = live.plan(old.runners, new.runners)
        restart = [name for name in ("home", "store") if getattr(old, name) != getattr(new, name)]
        restart += change.restart_required
        if old.server != new.server:
            diff = [
                f"server.{f.name}"
                for f in dataclasses.fields(old.server)
                if getattr(old.server, f.name) != getattr(new.server, f.name)
                and f.name not in LIVE_SERVER_KEYS
            ]
            restart += diff
        try:
            await supervisor.apply_config(change)
        except ConfigError as e:
            raise InvalidConfig(f"{e.message}; the running config is unchanged") from None
        models = await catalog.store.list_models()
        before = {m.id: (catalog.file_settings(m), catalog.effective_settings(m)) for m in models}
        catalog.config = dataclasses.replace(
            old,
            models=new.models,
            runners=change.config,
            log_level=new.log_level,
            server=dataclasses.replace(
                old.server, **{k: getattr(new.server, k) for k in LIVE_SERVER_KEYS}
            ),
        )
        if new.log_level != old.log_level:
            logs.configure(new.log_level, stream=self.log_stream, json=self.json_logs)
        changed, hidden, preload = [], [], []
        for m in models:
            after = catalog.effective_settings(m)
            file_before, effective_before = before[m.id]
            if after != effective_before:
                changed.append(m)
            elif after.preload and not effective_before.preload:
                preload.append(m.id)
            for entry in provenance.overridden(
                file_before, catalog.file_settings(m), catalog.settings.get(m.id)
            ):
                hidden.append({"model": display_name(m), **entry})
        for model in changed:
            settings = catalog.effective_settings(model)
            await supervisor.reconfigure(model.id, reload=settings.pinned or settings.preload)
        if preload:
            await self._preload(preload)
        for entry in hidden:
            log.warning(
                "daemon.setting_overridden",
                **entry,
                note="`modelrunner configure` settings win over the config file; "
                f"`modelrunner configure --reset {entry['model']}` hands it back to the file",
            )
        if restart:
            log.warning("daemon.restart_required", keys=restart, note="restart the daemon")
        names = [display_name(m) for m in changed]
        applied = list(change.applied)
        log.info(
            "daemon.reloaded",
            reconfigured=names,
            applied=applied,
            restart_required=restart,
            overridden=hidden,
        )
        return {
            "reloaded": True,
            "reconfigured": names,
            "applied": applied,
            "restart_required": restart,
            "overridden": hidden,
        }


def run(
    config: Config,
    *,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; the process's exit code."""
    fsmodes.private_umask()  # before the log file: everything made from here on is owner-only
    log_path = config.runners.log_dir / DAEMON_LOG
    try:
        log_file = LogFile(log_path)
    except OSError as e:
        raise ConfigError(
            f"cannot write the daemon's log in {config.runners.log_dir}: {e.strerror or e}"
        ) from None
    json_logs = not sys.stderr.isatty()
    stream = Tee(sys.stderr, log_file)  # type: ignore[arg-type]
    logs.configure(config.log_level, stream=stream, json=json_logs)  # type: ignore[arg-type]
    daemon = Daemon(
        config,
        config_path=config_path,
        overrides=overrides,
        log_path=log_path,
        log_stream=stream,  # type: ignore[arg-type]
        json_logs=json_logs,
    )
    try:
        return eventloop.run(daemon.run())
    finally:
        log_file.close()
