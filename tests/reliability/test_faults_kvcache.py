"""Faults in the prompt cache's directory (runners/kvcache.py): the daemon SIGKILLed mid-save,
files damaged after their commit, a full disk.  Each ends with the daemon up, every request
served, and nothing half-written ever restored (what is left on disk verifies)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.reliability.conftest import Target, kill, restart, seed_models, start_daemon
from tests.reliability.test_faults import eventually_true, mount_tmpfs, runners_of

pytestmark = pytest.mark.llama

A, B = "test/kv-a", "test/kv-b"
CONVERSATION = [{"role": "user", "content": "Remember: " + " ".join(f"w{i}" for i in range(40))}]
RUNNERS = {"max_loaded": 1, "kv_cache": {"save_timeout_s": 30.0}}


async def two_models(request: pytest.FixtureRequest, tiny: Any, **sections: Any) -> Target:
    sections.setdefault("runners", RUNNERS)
    target = await start_daemon(request, **sections)
    await seed_models(target, {A: tiny(seed=30, name="kv-a"), B: tiny(seed=31, name="kv-b")})
    return target


async def chat(target: Target, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": 2, "temperature": 0}
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(base_url=target.base_url, timeout=timeout) as http,
        http.post("/engines/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        timings: dict[str, Any] = (await resp.json())["timings"]
        return timings


async def metric(target: Target, name: str) -> int:
    async with (
        aiohttp.ClientSession(base_url=target.base_url) as http,
        http.get("/metrics") as resp,
    ):
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise AssertionError(f"{name} not in /metrics")


def cache_dir(target: Target) -> Path:
    return Path(target.handle.home) / "kvcache"


def check_consistent(directory: Path) -> list[dict[str, Any]]:
    """Every file is committed by a manifest and matches it; nothing partial is left."""
    manifests = [json.loads(p.read_text()) for p in directory.glob("*.json")]
    named = {directory / f"{p.stem}.json" for p in directory.glob("*.json")}
    for m in manifests:
        for row in m["slots"]:
            path = directory / row["file"]
            named.add(path)
            assert path.stat().st_size == row["bytes"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
    assert set(directory.iterdir()) == named, "files no manifest commits"
    return manifests


def log_count(target: Target, event: str) -> int:
    return int(target.handle.log_text().count(event))


async def test_daemon_sigkilled_mid_save_restarts_clean(
    request: pytest.FixtureRequest, tiny_gguf_factory: Any, llama_server_bin: Path
) -> None:
    """The second save of A hangs (its runner is SIGSTOPped) when the daemon is SIGKILLed;
    leftovers of other crash points are planted too.  After the restart only A's first entry
    is there, whole, and A's next turn is served from it."""
    target = await two_models(request, tiny_gguf_factory)
    first = await chat(target, A, CONVERSATION)
    await chat(target, B, [{"role": "user", "content": "evict A"}])  # entry 1 committed
    (entry,) = check_consistent(cache_dir(target))
    await chat(target, A, CONVERSATION)  # restored; A runs again
    (runner,) = runners_of(target.handle.pid)
    evictions = log_count(target, "runner.evicted")
    os.kill(runner.pid, signal.SIGSTOP)
    try:
        task = asyncio.create_task(chat(target, B, [{"role": "user", "content": "again"}]))
        await eventually_true(lambda: log_count(target, "runner.evicted") > evictions)
        await asyncio.sleep(0.2)  # inside the save: GET /slots waits on the stopped runner
        digest = Path(entry["slots"][0]["file"]).name.split("-")[0]
        good = (cache_dir(target) / entry["slots"][0]["file"]).read_bytes()
        (cache_dir(target) / f"{digest}-dead-s1.bin.part").write_bytes(good[: len(good) // 2])
        (cache_dir(target) / f"{digest}-beef-s2.bin").write_bytes(good)  # renamed, no manifest
        (cache_dir(target) / f".{digest}.json.tmp").write_text('{"format": 1')
        await kill(target)
    finally:
        with_runner_gone(runner)
    with pytest.raises(aiohttp.ClientError):
        await task
    await restart(target)
    left = check_consistent(cache_dir(target))  # A's first entry, and B's from its eviction
    assert entry in left
    assert [m["key"]["model_id"] for m in left].count(entry["key"]["model_id"]) == 1
    again = await chat(target, A, CONVERSATION)
    assert again["cache_n"] >= first["prompt_n"] - 8
    assert "kvcache.swept" in target.handle.log_text()


def with_runner_gone(runner: psutil.Process) -> None:
    """A SIGSTOPped runner must not outlive the test, whoever killed its daemon."""
    try:
        runner.send_signal(signal.SIGCONT)
        runner.kill()
        runner.wait(10)
    except psutil.Error:
        pass


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "foreign_key"])
async def test_a_damaged_entry_is_deleted_never_restored(
    request: pytest.FixtureRequest, tiny_gguf_factory: Any, llama_server_bin: Path, damage: str
) -> None:
    """A committed entry changed on disk afterwards (power loss, a bad disk, a copied file):
    the next load verifies it, deletes it, logs, and the turn is served cold."""
    target = await two_models(request, tiny_gguf_factory)
    await chat(target, A, CONVERSATION)
    await chat(target, B, [{"role": "user", "content": "evict A"}])
    (manifest_path,) = cache_dir(target).glob("*.json")
    manifest = json.loads(manifest_path.read_text())
    slot = cache_dir(target) / manifest["slots"][0]["file"]
    if damage == "truncate":
        slot.write_bytes(slot.read_bytes()[:100])
    elif damage == "corrupt":
        data = bytearray(slot.read_bytes())
        data[len(data) // 2] ^= 0xFF
        slot.write_bytes(bytes(data))
    else:
        manifest["key"]["context_size"] = 9999  # saved under other settings
        manifest_path.write_text(json.dumps(manifest))
    again = await chat(target, A, CONVERSATION)
    assert again["cache_n"] == 0
    assert await metric(target, "modelrunner_kv_cache_restore_failures_total") == 1
    assert await metric(target, "modelrunner_kv_cache_restores_total") == 0
    assert "kvcache.restore_failed" in target.handle.log_text()
    assert not slot.exists()
    assert not manifest_path.exists()


async def test_disk_full_during_save(
    request: pytest.FixtureRequest, tiny_gguf_factory: Any, tmp_path: Path, llama_server_bin: Path
) -> None:
    """A 64 KiB cache disk cannot hold a ~130 KB slot: the eviction goes on, the save counts as
    failed, no partial file stays or is restored, the space is given back."""
    small = tmp_path / "kv"
    mount_tmpfs(small, "64k")
    try:
        runners = {**RUNNERS, "kv_cache": {"path": str(small), "min_free_bytes": 0}}
        target = await two_models(
            request, tiny_gguf_factory, runners=runners, store={"min_free_bytes": 0}
        )
        await chat(target, A, CONVERSATION)
        await chat(target, B, [{"role": "user", "content": "evict A"}])
        assert await metric(target, "modelrunner_kv_cache_save_failures_total") == 1
        assert await metric(target, "modelrunner_kv_cache_saves_total") == 0
        assert not list(small.iterdir())
        again = await chat(target, A, CONVERSATION)
        assert again["cache_n"] == 0
        usage = os.statvfs(small)
        assert usage.f_bfree * usage.f_frsize > 56 * 1024
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
