"""What the store hands out: ``Model``, progress events, and the results of remove and gc."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .digest import short_id

ProgressKind = Literal["progress", "success", "warning", "error"]
ProgressMode = Literal["pull", "push", "load", "package"]
MIB = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    """A model in the store; paths are ready to hand to llama-server."""

    id: str  # sha256:<hex> of the manifest
    tags: tuple[str, ...]  # display form: "ai/smollm2:latest"
    store_tags: tuple[str, ...]  # as kept in models.json: "docker.io/ai/smollm2:latest"
    created: int  # unix seconds (descriptor.created; 0 when absent)
    config: Mapping[str, Any]  # Docker's config object: format, quantization, parameters, …
    gguf_paths: tuple[Path, ...]  # shards in order; the first is what llama-server gets
    mmproj_path: Path | None = None
    chat_template_path: Path | None = None
    license_paths: tuple[Path, ...] = ()
    size_bytes: int = 0  # all layers
    trained_context: int | None = None
    estimated_bytes: int = 0  # weights, for the memory budget
    arch_params: Mapping[str, int] = field(default_factory=dict)
    # The GGUF header's key/values as strings: ``config.gguf``, else (another tool's artifact
    # carries no map) read from the first GGUF file once, when the store first builds the model.
    gguf: Mapping[str, str] = field(default_factory=dict)
    manifest_path: Path | None = None
    # A safetensors model: its weight files (blobs), and the directory an engine is given
    # (bundles/<id>/model, rebuilt from the layers; distribution/bundle.py).
    safetensors_paths: tuple[Path, ...] = ()
    model_dir: Path | None = None

    @property
    def format(self) -> str:
        """``gguf`` or ``safetensors``: the config's word, else what the layers hold."""
        declared = self.config.get("format")
        if isinstance(declared, str) and declared:
            return declared
        if self.gguf_paths:
            return "gguf"
        return "safetensors" if self.safetensors_paths else ""

    @property
    def short_id(self) -> str:
        return short_id(self.id)

    @property
    def context_size(self) -> int | None:
        value = self.config.get("context_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def name(self) -> str:
        """The first tag (display form), else the short id: what ps and logs show."""
        return self.tags[0] if self.tags else self.short_id

    def to_api(self) -> dict[str, Any]:
        """Docker's ``GET /models`` item: id, tags (as stored; none: omitted), created, config."""
        out: dict[str, Any] = {"id": self.id}
        if self.store_tags:
            out["tags"] = list(self.store_tags)
        out["created"] = self.created
        out["config"] = dict(self.config)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressEvent:
    """One progress report; ``to_json()`` is Docker's progress line object (reference 1.10)."""

    kind: ProgressKind
    message: str
    mode: ProgressMode = "pull"
    digest: str = ""  # the layer's digest ("" for whole-operation events)
    layer_size: int = 0
    layer_current: int = 0  # bytes of this layer so far, resumed prefix included
    current: int = 0  # bytes of all layers so far
    total: int = 0  # sum of layer sizes (config excluded)

    def to_json(self) -> dict[str, Any]:
        layer: dict[str, Any] = {}
        if self.digest:
            layer["id"] = self.digest
        layer["size"] = self.layer_size
        layer["current"] = self.layer_current
        docker_mode = "push" if self.mode == "push" else "pull"
        return {
            "type": self.kind,
            "message": self.message,
            "total": self.total,
            "layer": layer,
            "mode": docker_mode,
        }


ProgressFn = Callable[[ProgressEvent], None]


@dataclass(frozen=True, slots=True)
class RemoveResult:
    untagged: tuple[str, ...] = ()  # tags as stored
    deleted: str | None = None  # the model id when the model itself went

    def to_api(self) -> list[dict[str, str]]:
        """Docker's ``DELETE /models/{name}`` answer."""
        out = [{"Untagged": t} for t in self.untagged]
        if self.deleted:
            out.append({"Deleted": self.deleted})
        return out


@dataclass(frozen=True, slots=True)
class GCResult:
    blobs_removed: int = 0
    manifests_removed: int = 0
    incomplete_removed: int = 0
    bytes_freed: int = 0
    broken_models_removed: int = 0  # index entries whose manifest or blobs were missing
