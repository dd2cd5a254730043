"""Pull and push (in progress)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StoreError
from .model import Model, ProgressFn
from .reference import Reference

if TYPE_CHECKING:
    from .store import Store


async def pull(store: Store, ref: Reference, progress: ProgressFn | None) -> Model:
    raise StoreError("pull is not implemented yet")


async def push(store: Store, ref: str, progress: ProgressFn | None) -> None:
    raise StoreError("push is not implemented yet")
