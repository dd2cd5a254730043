"""Docker's model artifact: build config and manifest bytes (package), parse them (pull, list).

Written exactly as Docker's packager writes them (OCI image manifest without artifactType, config
``application/vnd.docker.ai.model.config.v0.1+json`` with ``descriptor.created`` and
``rootfs.diff_ids``, the three ``org.cncf.model.*`` layer annotations, Go's compact JSON), read
leniently: v0.1/v0.2/CNCF configs, both mmproj media types, unknown fields ignored, annotations
optional.  Pure: no I/O.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import StoreError
from . import mediatypes as mt
from .digest import check_digest


class UnsupportedModel(StoreError):
    """The artifact is not a model this store can hold (an image, an index, an unknown config)."""

    status = 422
    code = "unsupported_media_type"


def go_json(obj: object) -> bytes:
    """``json.Marshal`` as Go writes it: compact, UTF-8, ``<``, ``>``, ``&`` escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(a, b)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


def rfc3339nano(ns: int | None = None) -> str:
    """Go's ``time.RFC3339Nano`` in UTC (trailing zeros of the fraction dropped)."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{frac:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def parse_time(text: object) -> int:
    """RFC 3339 (any precision) -> unix seconds; 0 when absent or unreadable (Docker's rule)."""
    if not isinstance(text, str) or not text:
        return 0
    s = text.strip().replace("z", "Z")
    if "." in s:  # Python wants at most 6 fraction digits
        head, _, rest = s.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        s = head + "." + digits[:6].ljust(6, "0") + rest[len(digits) :]
    try:
        return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def layer(
    media_type: str, digest: str, size: int, filename: str | None = None, mtime_ns: int = 0
) -> dict[str, Any]:
    """A layer descriptor with Docker's annotations when a file name is given."""
    desc: dict[str, Any] = {"mediaType": media_type, "size": size, "digest": digest}
    if filename is not None:
        meta = {
            "name": filename,
            "mode": 420,
            "uid": 0,
            "gid": 0,
            "size": size,
            "mtime": rfc3339nano(mtime_ns),
            "typeflag": 0,
        }
        desc["annotations"] = {
            mt.ANNOTATION_UNTESTED: "false",
            mt.ANNOTATION_FILE_METADATA: go_json(meta).decode(),
            mt.ANNOTATION_FILEPATH: filename,
        }
    return desc


def build_config(
    values: dict[str, Any], diff_ids: list[str], created_ns: int | None = None
) -> bytes:
    """The config blob: ``{"config": …, "descriptor": {"created"}, "rootfs": {…}}``."""
    doc = {
        "config": values,
        "descriptor": {"created": rfc3339nano(created_ns)},
        "rootfs": {"type": "rootfs", "diff_ids": diff_ids},
    }
    return go_json(doc)


def build_manifest(
    config_digest: str,
    config_size: int,
    layers: list[dict[str, Any]],
    config_media_type: str = mt.CONFIG_V01,
) -> bytes:
    """The manifest; v0.1 config for a GGUF, v0.2 (layer per file) for a directory (Docker's)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": config_media_type, "size": config_size, "digest": config_digest},
        "layers": layers,
    }
    return go_json(doc)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]

    @property
    def filename(self) -> str | None:
        return self.annotations.get(mt.ANNOTATION_FILEPATH)


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def files(self) -> list[str]:
        """Docker's ``models.json`` ``files``: layer digests in order, then the config."""
        return list(dict.fromkeys([d.digest for d in self.layers] + [self.config.digest]))

    @property
    def layer_bytes(self) -> int:
        return sum(d.size for d in self.layers)

    def of_type(self, *types: str) -> list[Descriptor]:
        return [d for d in self.layers if d.media_type in types]


def _descriptor(raw: object, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise StoreError(f"manifest {where} is not an object")
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise StoreError(f"manifest {where} has no valid size")
    ann = raw.get("annotations") or {}
    return Descriptor(
        media_type=str(raw.get("mediaType") or ""),
        digest=check_digest(raw.get("digest"), f"digest in the manifest {where}"),
        size=size,
        annotations={str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
    )


def parse_manifest(raw: bytes, name: str = "model") -> ParsedManifest:
    """Parse and check a model manifest; ``UnsupportedModel`` for anything else."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise StoreError(f"the manifest of {name} is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise StoreError(f"the manifest of {name} is not a JSON object")
    media_type = str(doc.get("mediaType") or mt.OCI_MANIFEST)
    if media_type not in (mt.OCI_MANIFEST, mt.DOCKER_MANIFEST) or "manifests" in doc:
        raise UnsupportedModel(
            f"{name} is not a model artifact (manifest type {media_type}); "
            "only Docker model artifacts can be pulled"
        )
    config = _descriptor(doc.get("config"), "config")
    if config.media_type not in mt.CONFIG_TYPES:
        raise UnsupportedModel(
            f"{name} is not a model artifact this version supports "
            f"(config media type {config.media_type!r}); try upgrading"
        )
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise StoreError(f"the manifest of {name} has no layers")
    return ParsedManifest(
        media_type, config, tuple(_descriptor(x, f"layer {i}") for i, x in enumerate(layers))
    )


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def config_object(raw: bytes) -> tuple[dict[str, Any], int]:
    """(Docker's ``config`` object, created unix seconds) from a config blob, leniently.

    A CNCF ModelPack config is converted to Docker's shape as Docker's adapter does.
    """
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}, 0
    if not isinstance(doc, dict):
        return {}, 0
    descriptor = _obj(doc.get("descriptor"))
    cfg = _obj(doc.get("config"))
    if "createdAt" in descriptor or "paramSize" in cfg or "modelfs" in doc:
        converted: dict[str, Any] = {"format": str(cfg.get("format") or "gguf")}
        for src, dst in (
            ("quantization", "quantization"),
            ("paramSize", "parameters"),
            ("architecture", "architecture"),
        ):
            if cfg.get(src):
                converted[dst] = str(cfg[src])
        return converted, parse_time(descriptor.get("createdAt"))
    return dict(cfg), parse_time(descriptor.get("created"))
