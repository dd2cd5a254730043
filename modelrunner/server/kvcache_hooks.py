"""Where the server composes the runners' prompt cache with the store (runners never see it).

The cache's free-space margin is the store's (both live on the daemon's home disk), and a model
that leaves the store takes its cache files with it: ``rm`` and ``purge`` here, models removed by
another process (or by gc) when the daemon starts.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import structlog

from modelrunner.config import Config, RunnersConfig

if TYPE_CHECKING:
    from modelrunner.distribution.store import Store
    from modelrunner.runners.supervisor import Supervisor

log = structlog.get_logger(__name__)


def runners_config(config: Config) -> RunnersConfig:
    """The runners' section with the cache's free-space margin at least the store's."""
    kv = config.runners.kv_cache
    margin = max(kv.min_free_bytes, config.store.min_free_bytes)
    if margin == kv.min_free_bytes:
        return config.runners
    kv = dataclasses.replace(kv, min_free_bytes=margin)
    return dataclasses.replace(config.runners, kv_cache=kv)


async def forget_models(supervisor: Supervisor, model_ids: list[str] | None) -> None:
    """Delete the cache files of *model_ids* (None = every model: purge)."""
    if model_ids is None:
        await supervisor.kv.clear()
        return
    for model_id in model_ids:
        await supervisor.kv.remove_model(model_id)


async def retain_stored(supervisor: Supervisor, store: Store) -> None:
    """Drop cache entries of models the store no longer has (removed while we were down)."""
    models = await store.list_models()
    freed = await supervisor.kv.retain(m.id for m in models)
    if freed:
        log.info("kvcache.gc", bytes=freed)
