"""
Models as the daemon serves them: store lookups and the supervisor's ``resolve``.

``resolve(model_id)`` turns a store model into the runners' ``ModelFiles``, with the effective
settings: the config file's ``models:`` entry (keyed by reference or id), overlaid field by field
by the ``_configure`` settings kept on disk.  The config is replaced on reload (SIGHUP), so it is
read at every resolve.  Knows nothing of HTTP.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from modelrunner.config import Config, ModelSettings
from modelrunner.distribution.reference import try_parse
from modelrunner.errors import InvalidRequest
from modelrunner.runners.memory import kv_bytes_per_token
from modelrunner.runners.model import ModelFiles
from modelrunner.runners.pooling import default_pooling
from modelrunner.server.settings import SettingsFile

if TYPE_CHECKING:
    from modelrunner.distribution.model import Model
    from modelrunner.distribution.store import Store

LOOKUP_TTL_S = 2.0
LOOKUP_CACHE_MAX = 256
_KV_REQUIRED = ("n_layers", "n_embd", "n_head")
_KV_OPTIONAL = ("n_head_kv", "key_length", "value_length")


def display_name(model: Model) -> str:
    """The name ps and logs show: the first tag, else the short id."""
    return model.name


def chosen_context_size(model: Model) -> int | None:
    """The artifact's context size when somebody chose it; None when it only echoes the GGUF.

    Docker's package copies ``<arch>.context_length`` into ``config.context_size`` (since
    fd89a193), so a 270M Gemma would ask for 32768 tokens of KV cache on every load.  A value
    equal to the trained context was chosen by nobody: the runners' capped default applies.
    """
    context = model.context_size
    if context is None or context <= 0 or context == model.trained_context:
        return None
    return context


def normalise(ref: str) -> str | None:
    """``ai/x`` -> ``ai/x:latest`` (display form); None if it does not parse."""
    parsed = try_parse(ref)
    return parsed.display if parsed is not None else None


def kv_per_token(model: Model) -> int | None:
    params: dict[str, Any] = dict(model.arch_params)
    if not all(isinstance(params.get(k), int) and params[k] > 0 for k in _KV_REQUIRED):
        return None
    kwargs = {k: params[k] for k in (*_KV_REQUIRED, *_KV_OPTIONAL) if params.get(k)}
    return kv_bytes_per_token(**kwargs)


class Catalog:
    """The store, the on-disk settings and the current config, seen together."""

    def __init__(self, config: Config, store: Store, settings: SettingsFile) -> None:
        self.config = config
        self.store = store
        self.settings = settings
        # Hits only, for LOOKUP_TTL_S: the inference path skips a thread hop and a read of
        # models.json per request.  Every change made through the daemon clears it; a change
        # made by another process on the same store is seen within LOOKUP_TTL_S.
        self._hits: dict[str, tuple[float, Model]] = {}

    def invalidate(self) -> None:
        """Forget cached lookups (after tag, remove, pull, load, purge)."""
        self._hits.clear()

    async def lookup(self, ref: Any) -> Model:
        """A model by reference or id; InvalidRequest for a non-string, ModelNotFound if absent."""
        if not isinstance(ref, str) or not ref.strip():
            raise InvalidRequest("a model reference (a non-empty string) is required")
        if "\x00" in ref or len(ref) > 1024:
            raise InvalidRequest(f"invalid model reference {ref[:80]!r}")
        model = self.cached(ref)
        if model is not None:
            return model
        model = await self.store.get(ref)
        if len(self._hits) >= LOOKUP_CACHE_MAX:
            self._hits.clear()
        self._hits[ref] = (time.monotonic() + LOOKUP_TTL_S, model)
        return model

    def cached(self, ref: Any) -> Model | None:
        """A model that *ref* found less than LOOKUP_TTL_S ago (no coroutine: the hot path)."""
        hit = self._hits.get(ref) if isinstance(ref, str) else None
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def file_settings(self, model: Model) -> ModelSettings:
        """The config file's ``models:`` entry that names this model (by tag or id)."""
        models = self.config.models
        if not models:
            return ModelSettings()
        names = {model.id, model.id.removeprefix("sha256:")}
        names.update(model.tags)
        names.update(n for n in (normalise(t) for t in model.tags) if n)
        for key, settings in models.items():
            if key in names or normalise(key) in names:
                return settings
        return ModelSettings()

    def effective_settings(self, model: Model) -> ModelSettings:
        base = self.file_settings(model)
        stored = self.settings.get(model.id)
        return stored.apply(base) if stored is not None else base

    def files(self, model: Model) -> ModelFiles:
        """The runners' view of *model* with its effective settings."""
        return ModelFiles(
            id=model.id,
            name=display_name(model),
            format=model.format,
            gguf_path=model.gguf_paths[0] if model.gguf_paths else None,
            model_dir=model.model_dir,
            mmproj_path=model.mmproj_path,
            chat_template_path=model.chat_template_path,
            context_size=chosen_context_size(model),
            trained_context=model.trained_context,
            estimated_bytes=model.estimated_bytes,
            kv_bytes_per_token=kv_per_token(model),
            sliding_window=model.arch_params.get("sliding_window"),
            settings=self.effective_settings(model),
            # The header's map, not config.gguf: another tool's artifact may carry none.
            pooling=default_pooling(model.gguf),
        )

    async def resolve(self, model_id: str) -> ModelFiles:
        """The supervisor's ResolveFn: called once per load."""
        model = await self.store.get(model_id)
        if not model.gguf_paths and model.model_dir is None:
            raise InvalidRequest(
                f"model {display_name(model)!r} has neither a GGUF file nor a safetensors model "
                "directory to run"
            )
        return self.files(model)
