"""Prompt (KV) cache files: a runner's slots saved on a planned stop, restored on its next load.

llama-server saves and restores a slot's cache itself (``--slot-save-path DIR`` plus
``POST /slots/{id}?action=save|restore``); this module decides when, under which key, and which
files may be trusted.  The supervisor calls it at three points: the argv of a load (``args``),
between "healthy" and "ready" (``restore``), and before the SIGTERM of a planned stop (``save``;
never after a crash).  Knows nothing of HTTP routes or the store: the server tells it which models
went away (``remove_model``, ``retain``).

Files live in ``runners.kv_cache.path`` (``runners/kvfiles.py`` owns the layout and the commit
point): ``<digest>.json`` manifests name ``<digest>-<nonce>-s<slot>.bin`` slot files with a
sha256 each; llama-server writes ``*.part`` files that are never trusted.  A SIGKILL anywhere in a
save leaves the old entry or the new one, whole; a restore checks key, size and hash before
llama-server reads a byte, and a mismatch deletes the entry.

Sliding-window models (Gemma 2/3) keep only the last window of tokens in most layers, so a
restored slot cannot be reused for a longer prompt: for them the feature adds ``--swa-full``
(a full-size cache in every layer).  ``memory.estimate_bytes`` already counts every layer at the
full context, which is exactly what ``--swa-full`` allocates, so the budget stays truthful.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from modelrunner.config import KVCacheConfig
from modelrunner.runners import kv_http
from modelrunner.runners.kv_store import Conversations
from modelrunner.runners.kvfiles import FORMAT, CacheDir, CacheKey, SaveFailed, touch
from modelrunner.runners.model import Mode, ModelFiles

if TYPE_CHECKING:
    from modelrunner.runners.locate import BinaryInfo
    from modelrunner.runners.runner import Runner

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class KVStats:
    """Counters for /metrics."""

    saves: int = 0
    save_failures: int = 0
    restores: int = 0
    restore_failures: int = 0
    restored_tokens: int = 0
    restore_hit_tokens: int = 0  # prompt tokens the first request after a restore did not process
    bytes_on_disk: int = 0
    conversations: int = 0  # conversation entries on disk (runners/kv_store.py)
    conversation_hits: int = 0  # a conversation no slot held came back from disk
    conversation_misses: int = 0  # ... and the disk had nothing for it (or a bad file)


def swa_full(files: ModelFiles, argv: Iterable[str]) -> bool:
    """Whether this load runs with a full-size SWA cache (an SWA model, or asked for)."""
    return files.sliding_window is not None or "--swa-full" in argv


def enabled_for(config: KVCacheConfig, files: ModelFiles) -> bool:
    """The model's ``kv_cache`` setting wins over ``runners.kv_cache.enabled``."""
    override = files.settings.kv_cache
    return config.enabled if override is None else override


# Values that name this runner or this machine's paths, not what its cache holds.
_NOT_KEYED = frozenset({"--host", "--slot-save-path", "--model", "--alias"})


def make_key(files: ModelFiles, mode: Mode, argv: list[str], binary: BinaryInfo) -> CacheKey:
    """The key of a load: its whole command line (runtime flags, LLAMA_ARGS, context…) but the
    socket and paths, so any flag change gives another key (sampling flags too: safe)."""
    flags: list[str] = []
    skip = False
    for token in argv[1:]:
        if skip:
            skip = False
        elif token in _NOT_KEYED:
            skip = True
        else:
            flags.append(token)
    return CacheKey(
        model_id=files.id,
        mode=mode,
        context_size=_ctx(argv),
        flags=tuple(flags),
        swa_full=swa_full(files, argv),
        engine=f"{binary.version} {binary.path}",
    )


class KVCache:
    """The cache directory, its size bound and counters; every file operation runs in a thread."""

    def __init__(self, config: KVCacheConfig, *, home: Path | None = None) -> None:
        self.config = config
        self.dir = config.path or (home or Path.home() / ".modelrunner") / "kvcache"
        self.files = CacheDir(self.dir, config.max_bytes)
        self.stats = KVStats()
        self.lock = asyncio.Lock()  # one writer of the directory's manifests at a time
        self._unsupported = False
        self.conversations = Conversations(self)  # every conversation's cache, by its prefix

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory and delete what no manifest commits (a save killed midway)."""
        removed = await asyncio.to_thread(self.files.sweep)
        if removed:
            log.warning("kvcache.swept", files=removed, dir=str(self.dir))
        self.stats.bytes_on_disk = await self.disk_usage()
        await self.conversations.open()

    async def aclose(self) -> None:
        """Wait for the conversation saves' commits still under way."""
        await self.conversations.aclose()

    def args(
        self, runner: Runner, files: ModelFiles, binary: BinaryInfo, argv: list[str]
    ) -> list[str]:
        """Extra llama-server flags for this load, and the runner's cache key (None = off)."""
        runner.kv_key = None
        runner.kv_slots = None
        # Embedding and reranking inputs are not continued turn after turn: nothing to keep.
        if runner.mode != "completion" or not enabled_for(self.config, files) or self._unsupported:
            return []
        if binary.flags is not None and "--slot-save-path" not in binary.flags:
            self._unsupported = True
            log.warning("kvcache.unsupported", binary=str(binary.path), version=binary.version)
            return []
        extra = ["--slot-save-path", str(self.dir)]
        if files.sliding_window is not None and "--swa-full" not in argv:
            extra.append("--swa-full")
        runner.kv_key = make_key(files, runner.mode, [*argv, *extra], binary)
        if self.config.conversations > 0:
            self.conversations.setup(runner, [*argv, *extra])
        return extra

    def reconfigure(self, config: KVCacheConfig) -> None:
        """A reload's runners.kv_cache: on/off and the bound apply from the next load or save;
        the directory stays until a restart."""
        self.config = dataclasses.replace(config, path=self.dir)
        self.files.max_bytes = config.max_bytes

    # --- restore -------------------------------------------------------------------------------

    async def restore(self, runner: Runner) -> int:
        """Load the key's saved slots into a runner that is healthy but not ready; never raises.

        Returns the tokens restored.  A bad or refused entry is deleted and logged.
        """
        key = runner.kv_key
        if key is None:
            return 0
        if runner.kv_slots is not None:  # conversations come back one by one, on request
            await self.conversations.attach(runner)
            return 0
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.restore_timeout_s):
                tokens, slots = await self._restore(runner, key)
        except (SaveFailed, TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            self.stats.restore_failures += 1
            log.warning("kvcache.restore_failed", model=runner.model.name, error=_why(e))
            await self._delete_entry(key.digest)
            return 0
        if not slots:
            return 0
        runner.restored_tokens = tokens
        runner.kv_hit_pending = True
        self.stats.restores += 1
        self.stats.restored_tokens += tokens
        log.info(
            "kvcache.restored",
            model=runner.model.name,
            mode=runner.mode,
            slots=slots,
            tokens=tokens,
            restore_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return tokens

    async def _restore(self, runner: Runner, key: CacheKey) -> tuple[int, int]:
        manifest = await asyncio.to_thread(self.files.read_manifest, key.digest)
        if manifest is None:
            return 0, 0
        if manifest.get("format") != FORMAT or manifest.get("key") != key.to_json():
            raise SaveFailed("the entry was saved under another key")
        rows = manifest.get("slots")
        if not isinstance(rows, list):
            raise SaveFailed("the manifest lists no slots")
        for row in rows:
            await asyncio.to_thread(self.files.verify, row)
        tokens = 0
        async with kv_http.session(runner) as session:
            for row in rows:
                answer = await kv_http.post(
                    session, f"/slots/{int(row['slot'])}?action=restore", {"filename": row["file"]}
                )
                tokens += int(answer.get("n_restored") or 0)
        await asyncio.to_thread(touch, self.dir / f"{key.digest}.json")
        return tokens, len(rows)

    def note_usage(self, runner: Runner, usage: Mapping[str, Any]) -> None:
        """Count the cached prompt tokens of the first answer that reused a restored slot."""
        if not runner.kv_hit_pending:
            return
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if cached is None:
            cached = usage.get("cached_tokens")
        if isinstance(cached, int) and cached > 0:
            runner.kv_hit_pending = False
            self.stats.restore_hit_tokens += min(cached, runner.restored_tokens)

    # --- save ----------------------------------------------------------------------------------

    async def save(self, runner: Runner) -> None:
        """Save the slots holding a prompt, within ``save_timeout_s``; never raises."""
        key = runner.kv_key
        child = runner.child
        if key is None or child is None or child.exited.done():
            return
        if runner.kv_slots is not None:
            await self.conversations.save_all(runner)
            return
        started = time.monotonic()
        nonce = secrets.token_hex(4)
        try:
            async with asyncio.timeout(self.config.save_timeout_s):
                saved = await self._save(runner, key, nonce)
        except (SaveFailed, TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            self.stats.save_failures += 1
            log.warning("kvcache.save_failed", model=runner.model.name, error=_why(e))
            # llama-server may still be writing: its .part files go with the next sweep/save.
            await asyncio.to_thread(self.files.drop_parts, key.digest)
            return
        if saved is None:
            return
        tokens, size = saved
        self.stats.saves += 1
        log.info(
            "kvcache.saved",
            model=runner.model.name,
            mode=runner.mode,
            tokens=tokens,
            bytes=size,
            save_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _save(self, runner: Runner, key: CacheKey, nonce: str) -> tuple[int, int] | None:
        async with kv_http.session(runner) as session:
            slots = await kv_http.get_list(session, "/slots")
            used = [
                int(s["id"])
                for s in slots
                if isinstance(s, dict) and s.get("n_prompt_tokens") and not s.get("is_processing")
            ]
            if not used:
                return None
            await asyncio.to_thread(self.files.drop_parts, key.digest)
            rows = []
            for slot in used:
                name = f"{key.digest}-{nonce}-s{slot}.bin"
                await self.check_room(runner)
                answer = await kv_http.post(
                    session, f"/slots/{slot}?action=save", {"filename": name + ".part"}
                )
                if int(answer.get("n_saved") or 0) > 0:
                    rows.append({"slot": slot, "file": name, **answer})
        if not rows:
            return None
        async with self.lock:
            committed = await asyncio.to_thread(self.files.commit, key, rows)
            await asyncio.to_thread(self.files.enforce_bound, key.digest)
            self.stats.bytes_on_disk = await self.disk_usage()
        return committed

    async def check_room(self, runner: Runner) -> None:
        """Refuse a save that would eat into the disk's free-space margin (estimated size)."""
        free = (await asyncio.to_thread(shutil.disk_usage, self.dir)).free
        per_token = runner.model.kv_bytes_per_token or 0
        need = per_token * (runner.kv_key.context_size if runner.kv_key else 0)
        if free - need < self.config.min_free_bytes:
            raise SaveFailed(
                f"only {free} bytes free on {self.dir}, below runners.kv_cache.min_free_bytes "
                f"({self.config.min_free_bytes}) after a save of up to {need} bytes"
            )

    # --- removal and size ----------------------------------------------------------------------

    async def remove_model(self, model_id: str) -> int:
        """Delete every entry of *model_id* (its ``rm``); returns the bytes freed."""
        return await self._remove(lambda key: key.get("model_id") == model_id)

    async def retain(self, model_ids: Iterable[str]) -> int:
        """Delete the entries of models not in *model_ids* (gc: models removed elsewhere)."""
        keep = set(model_ids)
        return await self._remove(lambda key: key.get("model_id") not in keep)

    async def clear(self) -> int:
        """Delete every entry (``purge``)."""
        return await self._remove(lambda key: True)

    async def disk_usage(self) -> int:
        """Bytes the cache directory holds (``df``)."""
        return await asyncio.to_thread(self.files.disk_usage)

    async def _remove(self, doomed: Callable[[dict[str, Any]], bool]) -> int:
        async with self.lock:
            freed = await asyncio.to_thread(self.files.remove, doomed)
            self.stats.bytes_on_disk = await self.disk_usage()
        await self.conversations.open()
        if freed:
            log.info("kvcache.removed", bytes=freed)
        return freed

    async def _delete_entry(self, digest: str) -> None:
        async with self.lock:
            await asyncio.to_thread(self.files.delete_entry, digest)
            self.stats.bytes_on_disk = await self.disk_usage()


# --- small helpers -----------------------------------------------------------------------------


def _ctx(argv: list[str]) -> int:
    """The context size llama-server will use: the last ``-c``/``--ctx-size`` wins."""
    context = 0
    for flag, value in itertools.pairwise(argv):
        if flag in ("-c", "--ctx-size"):
            with contextlib.suppress(ValueError):
                context = int(value)
    return context


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
