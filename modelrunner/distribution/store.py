"""The model store the daemon and the CLI's local verbs use: ``LocalStore`` plus transfers.

``local.py`` owns what is on disk; ``pull.py``, ``push.py``, ``package.py`` and ``archive.py``
build on it.  This module only puts them together, so imports run one way: here -> transfers
-> local.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from .archive import load_archive
from .local import LocalStore, tag_ref
from .model import GCResult, Model, ProgressFn, RemoveResult
from .package import package, package_dir
from .pull import pull
from .push import push
from .reference import parse_reference

__all__ = ["GCResult", "Model", "ProgressFn", "RemoveResult", "Store"]


class Store(LocalStore):
    """See the module docstring; every verb's logic lives in its own module."""

    async def package(
        self,
        gguf: str | Path,
        tag: str,
        *,
        license: Path | None = None,
        chat_template: Path | None = None,
        context_size: int | None = None,
        mmproj: Path | None = None,
        progress: ProgressFn | None = None,
    ) -> Model:
        """Build Docker's artifact from a local GGUF (shards found by name) and tag it."""
        return await package(
            self,
            Path(gguf),
            tag_ref(tag),
            license=license,
            chat_template=chat_template,
            context_size=context_size,
            mmproj=mmproj,
            progress=progress,
        )

    async def package_dir(
        self,
        directory: str | Path,
        tag: str,
        *,
        context_size: int | None = None,
        progress: ProgressFn | None = None,
    ) -> Model:
        """Build Docker's artifact from a safetensors model directory (a layer per file)."""
        return await package_dir(
            self, Path(directory), tag_ref(tag), context_size=context_size, progress=progress
        )

    async def pull(self, ref: str, progress: ProgressFn | None = None) -> Model:
        return await pull(self, parse_reference(ref), progress)

    async def push(self, ref: str, progress: ProgressFn | None = None) -> None:
        await push(self, ref, progress)

    async def load_archive(
        self,
        stream: AsyncIterator[bytes],
        tag: str | None = None,
        progress: ProgressFn | None = None,
    ) -> Model:
        """Import a tar as Docker's CLI sends to ``POST /models/load`` (untagged unless *tag*)."""
        target = tag_ref(tag).store_name if tag else None
        return await load_archive(self, stream, target, progress)
