"""Safetensors model directories: which file is which layer, and Docker's config values for them.

A safetensors model is a directory (weights, ``config.json``, tokenizer files, a chat template),
packaged by Docker layer per file (its ``builder.FromDirectory``, config v0.2):

* ``*.safetensors`` as ``application/vnd.docker.ai.safetensors``;
* ``*.jinja`` and ``*chat_template*`` as the chat-template type, license files as the license type;
* every other file as ``application/vnd.docker.ai.model.file``;

each with its path relative to the directory in ``org.cncf.model.filepath``.  Hidden files and
symlinks are left out, as Docker leaves them.  The config values (``format: safetensors``,
parameters and dtype from the first weight file's header, ``context_size`` from ``config.json``)
are computed as Docker's ``format/safetensors.go`` does.  Pure apart from blocking reads: callers
run these in a thread.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest
from . import mediatypes as mt
from .gguf import format_parameters, format_size

MAX_HEADER = 100 << 20  # Docker's maxFormatJSONSize
# config.json keys that may hold the context length, in Docker's (and convert_hf_to_gguf's) order.
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_ctx",
    "n_positions",
    "max_length",
    "max_sequence_length",
    "model_max_length",
)
_CONFIG_EXTENSIONS = (".md", ".txt", ".json", ".vocab")
_LICENSE_WORDS = ("license", "licence", "copying", "notice")


def classify(name: str) -> str:
    """The media type Docker's packager gives a file of this name (``files.Classify``)."""
    lower = name.rsplit("/", 1)[-1].lower()
    if lower.endswith(".gguf"):
        return mt.GGUF
    if lower.endswith(".safetensors"):
        return mt.SAFETENSORS
    if lower.endswith(".dduf"):
        return mt.DDUF
    if lower.endswith(".jinja") or "chat_template" in lower:
        return mt.CHAT_TEMPLATE
    if any(word in lower for word in _LICENSE_WORDS):
        return mt.LICENSE
    return mt.MODEL_FILE


@dataclass(frozen=True, slots=True)
class DirFile:
    relpath: str  # forward slashes, relative to the model directory
    path: Path
    media_type: str


def scan_dir(root: Path) -> list[DirFile]:
    """Every file to package, in a stable order; InvalidRequest when it is not a model dir."""
    root = root.expanduser()
    if not root.is_dir():
        raise InvalidRequest(f"{str(root)!r} does not exist or is not a directory")
    found: list[DirFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            found.append(DirFile(rel, path, classify(rel)))
    weights = [f for f in found if f.media_type == mt.SAFETENSORS]
    if not weights:
        raise InvalidRequest(
            f"{str(root)!r} holds no .safetensors file (a model directory has the weights, "
            "config.json and the tokenizer files)"
        )
    if not any(f.relpath == "config.json" for f in found):
        raise InvalidRequest(f"{str(root)!r} has no config.json (the model's architecture)")
    return found


@dataclass(frozen=True, slots=True)
class Header:
    metadata: dict[str, str]
    dtypes: dict[str, int]  # dtype -> tensor count
    parameters: int
    tensors: int


def read_header(path: Path) -> Header:
    """The JSON header of a safetensors file (only the header is read)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER:
            raise ValueError(f"{path}: safetensors header of {length} bytes is too large")
        doc = json.loads(f.read(length))
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")  # noqa: TRY004
    meta = doc.pop("__metadata__", None)
    dtypes: dict[str, int] = {}
    params = 0
    for info in doc.values():
        if not isinstance(info, dict):
            continue
        dtype = info.get("dtype")
        if isinstance(dtype, str) and dtype:
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
        n = 1
        for dim in info.get("shape") or []:
            n *= int(dim)
        params += n
    metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    return Header(metadata, dtypes, params, len(doc))


def quantization(header: Header) -> str:
    """The dtype all tensors share, ``mixed``, or ``unknown`` (Docker's getQuantization)."""
    if not header.dtypes:
        return "unknown"
    return next(iter(header.dtypes)) if len(header.dtypes) == 1 else "mixed"


def read_hf_config(path: Path) -> dict[str, Any]:
    """A model directory's ``config.json``, or {} when it is missing or not an object."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(MAX_HEADER))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def context_length(hf_config: dict[str, Any]) -> int | None:
    for key in CONTEXT_KEYS:
        value = hf_config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 2**31 - 1:
            return value
    return None


def arch_params(hf_config: dict[str, Any]) -> dict[str, int]:
    """config.json's shape in the names the memory estimate reads (those of the GGUF header)."""
    names = {
        "num_hidden_layers": "n_layers",
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_key_value_heads": "n_head_kv",
        "head_dim": "key_length",
    }
    out = {
        ours: value
        for theirs, ours in names.items()
        if isinstance(value := hf_config.get(theirs), int) and not isinstance(value, bool)
    }
    if "key_length" in out:
        out["value_length"] = out["key_length"]
    return out


def config_values(files: list[DirFile]) -> dict[str, Any]:
    """Docker's ``config`` object for a safetensors directory, in Docker's field order."""
    weights = [f for f in files if f.media_type == mt.SAFETENSORS]
    out: dict[str, Any] = {"format": "safetensors"}
    try:
        header = read_header(weights[0].path)
    except (OSError, ValueError):
        return out  # Docker too keeps only the format when the header does not parse
    out["quantization"] = quantization(header)
    out["parameters"] = format_parameters(header.parameters)
    if "architecture" in header.metadata:
        out["architecture"] = header.metadata["architecture"]
    out["size"] = format_size(sum(f.path.stat().st_size for f in weights))
    out["safetensors"] = dict(
        sorted({**header.metadata, "tensor_count": str(header.tensors)}.items())
    )
    config = next((f for f in files if f.relpath == "config.json"), None)
    context = context_length(read_hf_config(config.path)) if config is not None else None
    if context is not None:
        out["context_size"] = context
    return out
