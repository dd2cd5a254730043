"""A safetensors model's directory, rebuilt from its layers: what an MLX runner is given.

Engines for safetensors (mlx_lm, vLLM) take a directory: weights, ``config.json``, tokenizer
files.  The store keeps layers as blobs named by digest, so ``bundles/sha256/<id>/model/`` is made
from them, as Docker's ``bundle.Unpack`` does: each layer hard-linked (copied across devices)
under its ``org.cncf.model.filepath`` annotation (config v0.2: one layer per file, paths relative
to the directory, subdirectories kept); older artifacts (config v0.1) name their weights
``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` when unannotated and carry the other
files as a tar (``vllm.config.tar``, ``dir.tar``), extracted here with links, devices and paths
outside the directory refused.

A path that would leave the directory (absolute, ``..``, NUL) fails the build: the annotation
comes from whoever pushed the model.  The directory is built beside its final name and renamed
into place, so a crash leaves no half-made bundle under it.  Blocking: runs in a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from ..errors import StoreError
from . import mediatypes as mt
from .artifact import Descriptor, ParsedManifest
from .layout import TMP_MARK, Layout

TAR_TYPES = frozenset({mt.VLLM_CONFIG_TAR, mt.DIR_TAR})
# Layers that are not files of the directory (a GGUF's extras, or nothing an engine reads).
_SKIPPED = frozenset({mt.GGUF, *mt.MMPROJ_TYPES, mt.LORA})


def safe_relpath(text: str) -> PurePosixPath:
    """*text* as a path inside a directory; StoreError for one that would leave it."""
    if not text or "\x00" in text or "\\" in text:
        raise StoreError(f"invalid file path {text!r} in the model's layers")
    path = PurePosixPath(text)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts) or text in (".",):
        raise StoreError(f"invalid file path {text!r} in the model's layers (it leaves the model)")
    parts = [p for p in path.parts if p != "."]
    if not parts:
        raise StoreError(f"invalid file path {text!r} in the model's layers")
    return PurePosixPath(*parts)


def _link(blob: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(blob, dest)
    except OSError:
        shutil.copyfile(blob, dest)  # another filesystem: a copy (the blob stays the truth)


def _extract(archive: Path, into: Path) -> None:
    """Regular files and directories of a tar, nothing else, never outside *into*."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if not (member.isfile() or member.isdir()):
                continue  # links, devices, fifos: no model needs them
            rel = safe_relpath(member.name.removeprefix("./").rstrip("/") or ".")
            target = into / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)


def _weight_names(weights: list[Descriptor]) -> list[str]:
    if len(weights) == 1:
        return ["model.safetensors"]
    n = len(weights)
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def _fill(layout: Layout, parsed: ParsedManifest, into: Path) -> None:
    weights = parsed.of_type(mt.SAFETENSORS)
    defaults = dict(zip((d.digest for d in weights), _weight_names(weights), strict=True))
    for desc in parsed.layers:
        blob = layout.blob(desc.digest)
        if desc.media_type in TAR_TYPES:
            _extract(blob, into)
        elif desc.media_type in _SKIPPED:
            continue
        elif desc.filename:
            _link(blob, into / safe_relpath(desc.filename))
        elif desc.digest in defaults:
            _link(blob, into / defaults[desc.digest])
        elif desc.media_type == mt.CHAT_TEMPLATE:
            _link(blob, into / "chat_template.jinja")  # where transformers looks for one


def model_dir(layout: Layout, model_id: str, parsed: ParsedManifest) -> Path:
    """The model's directory, built on first use (blocking); StoreError if it cannot be."""
    final = layout.bundle(model_id) / "model"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix="model" + TMP_MARK))
    try:
        _fill(layout, parsed, work)
        if not (work / "config.json").is_file():
            raise StoreError(
                f"model {model_id} has safetensors weights but no config.json among its layers; "
                "it cannot be run (package the whole model directory)"
            )
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(final)  # an older, incomplete bundle (no config.json)
        try:
            os.rename(work, final)
        except OSError:
            if not (final / "config.json").is_file():  # not another process's finished build
                raise
    except OSError as e:
        raise StoreError(f"cannot build the directory of model {model_id}: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
