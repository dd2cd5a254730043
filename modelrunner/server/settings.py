"""
Per-model settings set through ``_configure``, kept in ``<home>/settings.json``.

Docker keeps them in memory only, so its users lose a context size at every unload or restart;
here they are written to disk (atomically: temp file + rename) and applied at every spawn.  Keyed
by model id; each entry also records the reference it was set with, for display.  Knows nothing
of HTTP: the routes validate the wire body and hand over a ``StoredSettings``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from modelrunner.config import ModelSettings
from modelrunner.errors import ConfigError, InvalidRequest

log = structlog.get_logger(__name__)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(text: str) -> float:
    """Go duration (``10m``, ``1h30m``, ``90s``), a bare number of seconds, ``0``, or negative."""
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise InvalidRequest(
            f"invalid keep_alive {text!r}: use a duration such as 10m, 1h, 0 or -1"
        )
    return sign * total


def format_keep_alive(seconds: float) -> str:
    """Seconds back into Go's duration form (``10m0s``), ``-1`` for never."""
    if seconds < 0:
        return "-1"
    whole = int(seconds)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{seconds:g}s"


def _os_error(e: OSError, verb: str, path: Path) -> ConfigError:
    return ConfigError(
        f"cannot {verb} the model settings file {path}: {e.strerror or e}; "
        "check that it is a writable file in the daemon's home"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSettings:
    """One model's ``_configure`` settings; None = not set (the config file or defaults apply)."""

    model: str  # the reference it was configured with
    mode: str = "completion"
    context_size: int | None = None
    runtime_flags: tuple[str, ...] | None = None
    keep_alive_s: float | None = None
    pinned: bool | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.runtime_flags is not None:
            d["runtime_flags"] = list(self.runtime_flags)
        return d

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StoredSettings:
        flags = raw.get("runtime_flags")
        return cls(
            model=str(raw.get("model", "")),
            mode=str(raw.get("mode", "completion")),
            context_size=raw.get("context_size"),
            runtime_flags=tuple(flags) if flags is not None else None,
            keep_alive_s=raw.get("keep_alive_s"),
            pinned=raw.get("pinned"),
        )

    def apply(self, base: ModelSettings) -> ModelSettings:
        """These settings over *base* (the config file's), field by field."""
        changes: dict[str, Any] = {}
        if self.context_size is not None:
            changes["context_size"] = self.context_size
        if self.runtime_flags is not None:
            changes["runtime_flags"] = self.runtime_flags
        if self.keep_alive_s is not None:
            changes["idle_ttl_s"] = self.keep_alive_s
        if self.pinned is not None:
            changes["pinned"] = self.pinned
        return dataclasses.replace(base, **changes)

    def to_wire(self) -> dict[str, Any]:
        """Docker's ``Config`` keys, for ``GET /engines/_configure``."""
        out: dict[str, Any] = {}
        if self.context_size is not None:
            out["context-size"] = self.context_size
        if self.runtime_flags is not None:
            out["runtime-flags"] = list(self.runtime_flags)
        if self.keep_alive_s is not None:
            out["keep_alive"] = format_keep_alive(self.keep_alive_s)
        if self.pinned is not None:
            out["pinned"] = self.pinned
        return out


@dataclass
class SettingsFile:
    """The settings of every configured model, loaded once and rewritten on each change."""

    path: Path
    _entries: dict[str, StoredSettings] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _loaded: bool = False

    async def load(self) -> None:
        """Read the file if it exists; a corrupt file is logged and set aside, not fatal."""
        async with self._lock:
            self._entries = await asyncio.to_thread(self._read)
            self._loaded = True

    def _read(self) -> dict[str, StoredSettings]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise _os_error(e, "read", self.path) from e
        try:
            raw: Any = json.loads(text)
        except ValueError as e:
            aside = self.path.with_suffix(".json.corrupt")
            log.warning("settings.corrupt", path=str(self.path), error=str(e), moved_to=str(aside))
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return {}
        if not isinstance(raw, dict):
            return {}
        out = {}
        for model_id, entry in raw.get("models", {}).items():
            if isinstance(entry, dict):
                try:
                    out[str(model_id)] = StoredSettings.from_json(entry)
                except (TypeError, ValueError):
                    log.warning("settings.bad_entry", model=model_id)
        return out

    def _write(self, entries: dict[str, StoredSettings]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {"version": 1, "models": {k: v.to_json() for k, v in sorted(entries.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise _os_error(e, "write", self.path) from e

    def get(self, model_id: str) -> StoredSettings | None:
        return self._entries.get(model_id)

    def items(self) -> list[tuple[str, StoredSettings]]:
        return sorted(self._entries.items())

    async def update(self, model_id: str, changes: dict[str, Any], model: str) -> StoredSettings:
        """Merge *changes* (field -> value; None clears a field) into the model's entry; persist."""
        async with self._lock:
            current = self._entries.get(model_id) or StoredSettings(model=model)
            new = dataclasses.replace(current, model=model, **changes)
            entries = {**self._entries, model_id: new}
            await asyncio.to_thread(self._write, entries)
            self._entries = entries
            return new

    async def remove(self, model_ids: list[str] | None = None) -> int:
        """Forget the settings of *model_ids* (None = all); how many were removed."""
        async with self._lock:
            if model_ids is None:
                gone = list(self._entries)
            else:
                gone = [m for m in model_ids if m in self._entries]
            if not gone:
                return 0
            entries = {k: v for k, v in self._entries.items() if k not in gone}
            await asyncio.to_thread(self._write, entries)
            self._entries = entries
            return len(gone)
