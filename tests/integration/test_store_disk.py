"""A full disk (a small tmpfs, mounted when we are root) fails cleanly and gives space back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelrunner.config import StoreConfig
from modelrunner.distribution import Store, stamps
from modelrunner.errors import InsufficientStorage
from scripts.make_tiny_gguf import build as build_tiny_gguf


@pytest.fixture
def small_disk() -> Iterator[Callable[[int], Path]]:
    """``small_disk(bytes)`` mounts a tmpfs of that size; skips when mounting is not allowed."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a small tmpfs needs root")
        d = Path(tempfile.mkdtemp(prefix="mr-disk-", dir="/tmp"))
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
            capture_output=True,
            check=False,
        )
        if res.returncode != 0:
            d.rmdir()
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)
        with contextlib.suppress(OSError):
            d.rmdir()


def free(path: Path) -> int:
    return shutil.disk_usage(path).free


def leftovers(store: Store) -> list[str]:
    """Partial or temp files among the blobs and their stat stamps (the stamps' folder is not
    one, only what it holds besides stamps)."""
    blobs = store.layout.blobs_dir
    stamped = blobs / stamps.STAMPS
    found = [p.name for p in blobs.iterdir() if not p.name.isalnum() and p != stamped]
    with contextlib.suppress(FileNotFoundError):
        found += [f"{stamps.STAMPS}/{p.name}" for p in stamped.iterdir() if not p.name.isalnum()]
    return found


async def test_package_onto_a_full_disk_fails_and_gives_space_back(small_disk, tmp_path):
    disk = small_disk(1 << 20)
    big = build_tiny_gguf(tmp_path / "big.gguf", seed=21, pad_mib=2)
    store = Store(StoreConfig(path=disk / "store"))
    await store.open()
    try:
        before = free(disk)
        with pytest.raises(InsufficientStorage, match="no space left"):
            await store.package(big, "ai/big")
        assert await store.list_models() == []
        assert leftovers(store) == []
        assert free(disk) == before
    finally:
        await store.close()


@pytest.mark.registry
async def test_pulls_onto_a_full_disk_fail_cleanly(
    registry, small_disk, tmp_path, tiny_gguf_factory
):
    """Each model fits alone, not both: whichever pull runs out of space fails with 507, its
    partial file is gone, and what is listed loads."""
    src = Store(StoreConfig(path=tmp_path / "src"))
    await src.open()
    refs = []
    for seed in (22, 23):
        ref = f"{registry.host}/ai/disk-{seed}:v1"
        await src.package(tiny_gguf_factory(seed=seed), ref)
        await src.push(ref)
        refs.append(ref)
    await src.close()
    disk = small_disk(1 << 20)
    store = Store(StoreConfig(path=disk / "store", min_free_bytes=0))
    await store.open()
    try:
        results = await asyncio.gather(*(store.pull(r) for r in refs), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures
        assert all(isinstance(f, InsufficientStorage) for f in failures), failures
        assert leftovers(store) == []
        for model in await store.list_models():
            assert model.gguf_paths[0].stat().st_size == model.size_bytes
        assert free(disk) > 400_000  # the failed pull's bytes came back
    finally:
        await store.close()
