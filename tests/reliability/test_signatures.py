"""The load test's premise, checked on the runner layer: three tiny models are told apart by
their first token's logprobs (plain and streamed) and their embeddings, and under evictions
(max_loaded=2) every answer still comes from the model it asked for.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from modelrunner.config import ModelSettings, RunnersConfig
from modelrunner.errors import ModelNotFound
from modelrunner.runners.model import Mode, ModelFiles
from modelrunner.runners.supervisor import Supervisor
from scripts.make_tiny_gguf import build as build_tiny_gguf
from tests.reliability.test_load import chat_body, first_token_signature, nearest, nearest_vec

pytestmark = pytest.mark.llama

IDS = ["a", "b", "c"]


@pytest.fixture
async def supervisor(tmp_path: Path, llama_server_bin: Path) -> AsyncIterator[Supervisor]:
    files: dict[str, ModelFiles] = {}
    for i, m in enumerate(IDS):
        path = build_tiny_gguf(tmp_path / f"{m}.gguf", seed=100 + i, name=m)
        files[m] = ModelFiles(
            id=m,
            name=f"test/{m}",
            gguf_path=path,
            trained_context=512,
            estimated_bytes=path.stat().st_size,
            settings=ModelSettings(runtime_flags=("--pooling", "mean")),
        )

    async def resolve(model_id: str) -> ModelFiles:
        if model_id not in files:
            raise ModelNotFound(model_id)
        return files[model_id]

    config = RunnersConfig(
        llama_server_path=llama_server_bin,
        run_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
        max_loaded=2,
        max_in_flight=64,  # admission (429) is not what this test is about
    )
    async with Supervisor(config, resolve) as sup:
        yield sup


async def ask(sup: Supervisor, model: str, kind: str) -> Any:
    mode: Mode = "embedding" if kind == "embed" else "completion"
    async with sup.acquire(model, mode=mode) as runner:
        connector = aiohttp.UnixConnector(path=str(runner.socket_path))
        async with aiohttp.ClientSession(connector=connector) as http:
            if kind == "embed":
                body = {"model": model, "input": "the cat"}
                async with http.post("http://localhost/v1/embeddings", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    return (await resp.json())["data"][0]["embedding"]
            stream = kind == "stream"
            url = "http://localhost/v1/chat/completions"
            async with http.post(url, json=chat_body(model, stream=stream)) as resp:
                assert resp.status == 200, await resp.text()
                if not stream:
                    return first_token_signature((await resp.json())["choices"][0])
                sig: dict[str, float] = {}
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data: {") and not sig:
                        sig = first_token_signature((json.loads(line[6:])["choices"] or [{}])[0])
                return sig


def runners(before: set[int]) -> list[psutil.Process]:
    """Our children that were not there when *before* was taken."""
    return [p for p in psutil.Process().children() if p.pid not in before]


async def test_models_are_told_apart_under_evictions(supervisor: Supervisor) -> None:
    """References first, then 60 concurrent mixed requests: each answer matches its model; once
    everything is unloaded, fds and tasks are back where they started."""
    fds0, tasks0 = len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())
    # Session-scoped servers (the test registries) may already be our children: count only ours.
    before = {p.pid for p in psutil.Process().children()}
    chat = {m: await ask(supervisor, m, "chat") for m in IDS}
    emb = {m: await ask(supervisor, m, "embed") for m in IDS}
    for m in IDS:
        assert nearest(chat[m], chat) == m
        assert nearest(await ask(supervisor, m, "stream"), chat) == m
        assert nearest_vec(emb[m], emb) == m
    rng = random.Random(5)  # noqa: S311 (reproducible mix, not crypto)
    jobs = [(rng.choice(IDS), rng.choice(["chat", "stream", "embed"])) for _ in range(60)]
    answers = await asyncio.gather(*(ask(supervisor, m, k) for m, k in jobs))
    wrong = [
        (m, k)
        for (m, k), got in zip(jobs, answers, strict=True)
        if (nearest_vec(got, emb) if k == "embed" else nearest(got, chat)) != m
    ]
    assert not wrong
    assert supervisor.stats.evictions > 0
    assert len(runners(before)) <= 2  # max_loaded
    await supervisor.unload()
    assert not runners(before)
    assert len(os.listdir("/proc/self/fd")) <= fds0
    assert len(asyncio.all_tasks()) <= tasks0
