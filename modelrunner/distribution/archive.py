"""``POST /models/load`` tar import (in progress)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..errors import StoreError
from .model import Model, ProgressFn

if TYPE_CHECKING:
    from .store import Store


async def load_archive(
    store: Store, stream: AsyncIterator[bytes], tag: str | None, progress: ProgressFn | None
) -> Model:
    raise StoreError("load_archive is not implemented yet")
