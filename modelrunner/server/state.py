"""
What every route handler reaches through ``request.app[STATE]``: one object, typed.

Holds the current config (replaced on reload), the store, the supervisor, the catalog (resolve),
the on-disk settings, the metrics and the upstream connection pool.  No logic beyond reload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from modelrunner.config import Config
from modelrunner.runners.supervisor import Supervisor
from modelrunner.server.auth import KeyRing
from modelrunner.server.catalog import Catalog
from modelrunner.server.drain import Drain
from modelrunner.server.hosts import HostPolicy
from modelrunner.server.observe.events import EventBus
from modelrunner.server.observe.metrics import Metrics
from modelrunner.server.observe.request_log import RequestLog
from modelrunner.server.relay.proxy import UpstreamPool
from modelrunner.server.settings import SettingsFile

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from modelrunner.distribution.store import Store

    ReloadFn = Callable[[], Awaitable[dict[str, object]]]


@dataclass
class ServerState:
    catalog: Catalog
    supervisor: Supervisor
    upstream: UpstreamPool
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.time)
    reload: ReloadFn | None = None  # set by the daemon; None = no config file to reload
    daemon_log: Path | None = None
    config_path: Path | None = None  # the file a reload reads (None: <home>/config.yaml)
    drain: Drain = field(default_factory=Drain)  # SIGTERM: late requests, cut streams
    events: EventBus = field(default_factory=EventBus)  # GET /engines/events
    requests: RequestLog = field(default_factory=RequestLog)  # GET /engines/requests
    api_keys: KeyRing = field(default_factory=KeyRing)  # filled before the first request
    hosts: HostPolicy = field(init=False)  # the Host check (DNS rebinding), both lanes

    def __post_init__(self) -> None:
        self.hosts = HostPolicy(lambda: self.config.server.allowed_hosts)

    @property
    def config(self) -> Config:
        return self.catalog.config

    @property
    def store(self) -> Store:
        return self.catalog.store

    @property
    def settings(self) -> SettingsFile:
        return self.catalog.settings


STATE = web.AppKey("state", ServerState)
