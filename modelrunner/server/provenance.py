"""
Where each of a model's effective settings comes from, and which file value a reload did not use.

The precedence, highest first (README, Configuration): ``modelrunner configure`` (the
``_configure`` settings kept in ``settings.json``), the config file's ``models.<ref>`` entry, the
model artifact's own ``context_size``, then the ``runners.*`` defaults.  ``configure`` wins
because it is the later, explicit, per-model act (as a flag beats the file), and it survives
restarts; ``modelrunner configure --reset MODEL`` hands the model back to the file.  The only
code that applies the precedence is ``Catalog.effective_settings`` and ``args.context_size``;
this module explains it (``configure --show``) and names what it hid (the reload's log).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelrunner.config import ModelSettings
from modelrunner.runners.args import context_size
from modelrunner.server.catalog import Catalog, chosen_context_size

if TYPE_CHECKING:
    from modelrunner.distribution.model import Model
    from modelrunner.server.settings import StoredSettings

CONFIGURE = "modelrunner configure"
# ModelSettings field (the config file's name) -> StoredSettings field (configure's).
STORED_FIELD = {
    "context_size": "context_size",
    "runtime_flags": "runtime_flags",
    "idle_ttl_s": "keep_alive_s",
    "pinned": "pinned",
}


def _value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def sources(catalog: Catalog, model: Model, config_file: str) -> dict[str, dict[str, Any]]:
    """Each effective setting as ``{"value": …, "source": …}``, for ``configure --show``."""
    file = catalog.file_settings(model)
    stored = catalog.settings.get(model.id)
    default = ModelSettings()
    runners = catalog.config.runners
    out: dict[str, dict[str, Any]] = {}
    for name in ("context_size", "runtime_flags", "idle_ttl_s", "pinned", "preload"):
        mine = getattr(stored, STORED_FIELD[name], None) if name in STORED_FIELD else None
        if mine is not None:
            out[name] = {"value": _value(mine), "source": CONFIGURE}
        elif getattr(file, name) != getattr(default, name):
            out[name] = {"value": _value(getattr(file, name)), "source": config_file}
        else:
            out[name] = {"value": _value(getattr(default, name)), "source": "default"}
    if out["context_size"]["source"] == "default":
        out["context_size"] = _context_default(catalog, model)
    if out["idle_ttl_s"]["source"] == "default":
        out["idle_ttl_s"] = {"value": runners.idle_ttl_s, "source": "runners.idle_ttl_s"}
    return out


def _context_default(catalog: Catalog, model: Model) -> dict[str, Any]:
    runners = catalog.config.runners
    value = context_size(catalog.files(model), runners) if model.gguf_paths else None
    if chosen_context_size(model) is not None:
        return {"value": value, "source": "the model artifact's context_size"}
    source = f"runners.default_context_size ({runners.default_context_size})"
    if value is not None and value < runners.default_context_size:
        source += f", capped at the model's trained context ({value})"
    return {"value": value, "source": source}


def overridden(
    before: ModelSettings, after: ModelSettings, stored: StoredSettings | None
) -> list[dict[str, Any]]:
    """Config-file values a reload changed that ``configure`` settings keep from applying."""
    if stored is None:
        return []
    hidden = []
    for name, mine in STORED_FIELD.items():
        kept = getattr(stored, mine)
        new = getattr(after, name)
        if kept is not None and new != getattr(before, name):
            hidden.append(
                {"key": name, "config_file": _value(new), "kept": _value(kept), "source": CONFIGURE}
            )
    return hidden
