"""A client that vanishes mid-stream frees llama-server's slot (what the daemon's proxy relies on).

This checks the runner end with the real supervisor and llama-server: dropping the HTTP
connection of a streamed answer stops generation. The daemon-level test in test_faults.py checks
the same through the proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from modelrunner.config import ModelSettings, RunnersConfig
from modelrunner.errors import ModelNotFound
from modelrunner.runners.model import ModelFiles
from modelrunner.runners.supervisor import Supervisor
from tests.reliability.slots import slots, wait_all_idle, wait_any_busy

pytestmark = pytest.mark.llama


@pytest.fixture
async def supervisor(
    tmp_path: Path, llama_server_bin: Path, tiny_gguf_factory: Callable[..., Path]
) -> AsyncIterator[Supervisor]:
    # 8192 trained tokens: the stream lasts ~30 s, so it is surely still running when it is cut
    # (a 512-token answer ends in ~0.8 s and could finish before the test looks).
    path = tiny_gguf_factory(seed=3, name="disc", ctx=8192)
    files = ModelFiles(
        id="disc",
        name="test/disc",
        gguf_path=path,
        trained_context=8192,
        estimated_bytes=path.stat().st_size,
        settings=ModelSettings(),
    )

    async def resolve(model_id: str) -> ModelFiles:
        if model_id != "disc":
            raise ModelNotFound(model_id)
        return files

    config = RunnersConfig(
        llama_server_path=llama_server_bin, run_dir=tmp_path / "run", log_dir=tmp_path / "logs"
    )
    async with Supervisor(config, resolve) as sup:
        yield sup


async def test_dropped_stream_frees_the_slot(supervisor: Supervisor) -> None:
    """Close the connection after the first chunk of a long stream: every slot goes idle."""
    async with supervisor.acquire("disc") as runner:
        assert not any(s.get("is_processing") for s in await slots(runner.socket_path))
        connector = aiohttp.UnixConnector(path=str(runner.socket_path))
        async with aiohttp.ClientSession(connector=connector) as session:
            resp = await session.post(
                "http://localhost/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "talk"}],
                    "max_tokens": 100000,
                    "stream": True,
                    "ignore_eos": True,
                },
            )
            await resp.content.readline()
            await wait_any_busy(runner.socket_path)
            resp.close()  # drop the connection, as a vanished client does
        await wait_all_idle(runner.socket_path)
