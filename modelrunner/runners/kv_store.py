"""Every conversation's prompt cache, kept on disk per model: saved before another conversation
takes its slot (or at a stop), restored into a slot when it comes back to a runner without it.

``runners/kv_conversations.py`` decides (which slot, what to save, what to restore); this module
acts: llama-server's slot API (``runners/kv_http.py``), the directory (``runners/kvfiles.py``, the
same manifests, checksums and commit point as the stop-time saves, one slot file per entry), and
an index of the entries per cache key.  ``begin`` runs on a request's path after it got its
runner and before it is forwarded: a request that continues the conversation already in its
slot awaits nothing but a dict lookup and a hash chain.  The commit after a save (checksum,
rename, manifest, bounds) runs in a task of its own: the request waits only for llama-server's
write.  Knows nothing of HTTP routes: the server hands in the body bytes and the answer's usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from modelrunner.runners import kv_http
from modelrunner.runners.kv_conversations import (
    Entry,
    Index,
    Save,
    SlotTable,
    expected_tokens,
    plausible,
)
from modelrunner.runners.kv_prefix import SLOT_PATHS, Prefix, parse, prefix_of, with_slot
from modelrunner.runners.kvfiles import FORMAT, CacheKey, SaveFailed, touch

if TYPE_CHECKING:
    from modelrunner.runners.kvcache import KVCache
    from modelrunner.runners.runner import Runner

log = structlog.get_logger(__name__)

DEFAULT_CACHE_RAM_MIB = 8192  # llama-server's --cache-ram default
TOUCH_EVERY_S = 60.0  # how stale a used entry's mtime may get (the LRU order across restarts)
_ERRORS = (SaveFailed, TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError)


@dataclass(slots=True)
class Tracked:
    """A runner's slot table and the saves under way on it (every forward waits for them)."""

    table: SlotTable
    pending: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass(slots=True)
class Turn:
    """One request's claim on a slot, from ``begin`` to ``end``."""

    runner: Runner
    slot: int | None
    prefix: Prefix | None
    body: bytes  # what goes upstream (with ``id_slot``)


@dataclass(slots=True)
class ModelCounts:
    hits: int = 0
    misses: int = 0


def ram_budget_bytes(argv: list[str]) -> int | None:
    """What llama-server's RAM prompt cache may hold under *argv* (None: no limit)."""
    if "--no-cache-idle-slots" in argv:
        return 0  # idle slots are not moved to RAM: never count on it
    mib = DEFAULT_CACHE_RAM_MIB
    for flag, value in itertools.pairwise(argv):
        if flag in ("-cram", "--cache-ram"):
            with contextlib.suppress(ValueError):
                mib = int(value)
    return None if mib < 0 else mib * 1024 * 1024


class Conversations:
    """The conversation entries of a ``KVCache`` (its directory, lock, bounds and counters)."""

    def __init__(self, cache: KVCache) -> None:
        self._cache = cache
        self._indexes: dict[str, Index] = {}  # cache-key digest -> its entries
        self._commits: set[asyncio.Task[None]] = set()
        self.counts: dict[str, ModelCounts] = {}  # model id -> hits and misses
        self._touched: dict[str, float] = {}  # entry digest -> when a request last touched it

    @property
    def limit(self) -> int:
        return self._cache.config.conversations

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Index the entries on disk (a restarted daemon finds its conversations again)."""
        rows = await asyncio.to_thread(self._cache.files.conversations)
        self._indexes.clear()
        for digest, manifest, mtime, size in rows:
            entry = _entry(digest, manifest, mtime, size)
            key = manifest.get("key") or {}
            if entry is not None and isinstance(key, dict):
                self._index(str(manifest.get("key_digest")), str(key.get("model_id"))).add(entry)
        self._update_stats()

    def setup(self, runner: Runner, argv: list[str]) -> None:
        """At a load: track the runner's slots (counted once it is healthy)."""
        per_token = runner.model.kv_bytes_per_token or 0
        table = SlotTable(ram_budget_bytes=ram_budget_bytes(argv), bytes_per_token=per_token)
        runner.kv_slots = Tracked(table)

    async def attach(self, runner: Runner) -> None:
        """Between healthy and ready: learn the slot count (nothing is restored at load)."""
        tracked: Tracked | None = runner.kv_slots
        if tracked is None:
            return
        try:
            async with asyncio.timeout(self._cache.config.restore_timeout_s):
                async with kv_http.session(runner) as s:
                    slots = await kv_http.get_list(s, "/slots")
        except _ERRORS as e:
            log.warning("kvcache.slots_unknown", model=runner.model.name, error=str(e))
            runner.kv_slots = None
            return
        tracked.table.resize(len(slots))

    async def aclose(self) -> None:
        """Wait for the commits under way (each is short and bounded)."""
        while self._commits:
            await asyncio.gather(*self._commits, return_exceptions=True)

    # --- a request's path ----------------------------------------------------------------------

    async def begin(
        self, runner: Runner, path: str, body: bytes, payload: Mapping[str, Any] | None = None
    ) -> Turn | None:
        """Give the request for llama-server's *path* a slot: save what it would displace,
        restore its conversation if only the disk has it; returns the body to forward (None:
        not ours to manage).  *payload*: *body* parsed, if the caller has it."""
        tracked: Tracked | None = runner.kv_slots
        if tracked is None or not tracked.table.slots:
            return None
        key = runner.kv_key
        if key is None:
            return None
        if payload is None:
            payload = parse(body)
        if payload is None or "id_slot" in payload:
            return None  # not JSON (llama-server answers), or the client chose its slot
        prefix = prefix_of(payload)
        index = self._indexes.get(key.digest)
        # Decided and committed in one call; only then the awaits.
        plan = tracked.table.take(prefix, index, choose=path in SLOT_PATHS)
        turn = Turn(runner, plan.slot, prefix, body)
        try:
            if plan.known is not None and index is not None:
                # Used now (the LRU order), before the saves below can evict what comes back;
                # the file's mtime (the order a restarted daemon reads) at most once a minute.
                now = time.time()
                index.touch(plan.known.digest, now)
                if self._touch_due(plan.known.digest, now):
                    manifest = self._cache.files.dir / f"{plan.known.digest}.json"
                    await asyncio.to_thread(touch, manifest)
            for save in plan.saves:
                self._start_save(runner, tracked, key, save)
            if tracked.pending:
                await asyncio.wait(set(tracked.pending))  # never cancels them
            hit = False
            if plan.restore is not None and plan.slot is not None:
                hit = await self._restore(runner, plan.slot, plan.restore)
            self._count(runner, plan.source, hit)
        except BaseException:
            self.end(turn, None, ok=False)
            raise
        if plan.slot is not None:
            turn.body = with_slot(body, plan.slot)
        return turn

    def end(self, turn: Turn, usage: Mapping[str, Any] | None, *, ok: bool) -> None:
        """The answer is over: its slot now holds the conversation (or, failed, something)."""
        tracked: Tracked | None = turn.runner.kv_slots
        if tracked is None or turn.slot is None or turn.slot >= len(tracked.table.slots):
            return
        tokens = expected_tokens(dict(usage)) if usage else None
        tracked.table.release(turn.slot, turn.prefix, tokens=tokens, ok=ok and usage is not None)

    # --- a stop --------------------------------------------------------------------------------

    async def save_all(self, runner: Runner) -> None:
        """Before a planned stop: save every slot's conversation not yet on disk; never raises."""
        tracked: Tracked | None = runner.kv_slots
        key = runner.kv_key
        if tracked is None or key is None:
            return
        try:
            async with asyncio.timeout(self._cache.config.save_timeout_s):
                if tracked.pending:
                    await asyncio.wait(set(tracked.pending))
                for save in tracked.table.dirty():
                    rows = await self._write(runner, key, save)
                    if rows is not None:
                        tracked.table.saved(save.slot, save.prefix)
                        await self._commit(runner, key, save.prefix, rows)
        except _ERRORS as e:
            self._cache.stats.save_failures += 1
            log.warning("kvcache.save_failed", model=runner.model.name, error=_why(e))

    # --- saves ---------------------------------------------------------------------------------

    def _start_save(self, runner: Runner, tracked: Tracked, key: CacheKey, save: Save) -> None:
        task = self._own(self._save(runner, key, save), f"kv save {runner.model.name}")
        tracked.pending.add(task)
        task.add_done_callback(tracked.pending.discard)

    async def _save(self, runner: Runner, key: CacheKey, save: Save) -> None:
        """llama-server writes the slot (the request waits for this), then the commit runs on."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._cache.config.save_timeout_s):
                rows = await self._write(runner, key, save)
        except _ERRORS as e:
            self._cache.stats.save_failures += 1
            log.warning("kvcache.save_failed", model=runner.model.name, error=_why(e))
            return
        if rows is None:
            return
        ms = round((time.monotonic() - started) * 1000, 1)
        log.info("kvcache.slot_written", model=runner.model.name, slot=save.slot, write_ms=ms)
        self._own(self._commit(runner, key, save.prefix, rows), "kv commit")

    async def _write(
        self, runner: Runner, key: CacheKey, save: Save
    ) -> list[dict[str, Any]] | None:
        await self._cache.check_room(runner)
        digest = entry_digest(key, save.prefix)
        name = f"{digest}-{secrets.token_hex(4)}-s{save.slot}.bin"
        async with kv_http.session(runner) as s:
            answer = await kv_http.post(
                s, f"/slots/{save.slot}?action=save", {"filename": name + ".part"}
            )
        saved = int(answer.get("n_saved") or 0)
        if not plausible(saved, save.tokens):
            # Another task used the slot since (or it is empty): not the conversation we think.
            log.info(
                "kvcache.save_skipped", model=runner.model.name, tokens=saved, expected=save.tokens
            )
            await asyncio.to_thread(self._cache.files.drop_parts, digest)
            return None
        return [{"slot": save.slot, "file": name, **answer}]

    async def _commit(
        self, runner: Runner, key: CacheKey, prefix: Prefix, rows: list[dict[str, Any]]
    ) -> None:
        """Checksum and commit the slot file, then apply the bounds (count per model, bytes)."""
        digest = entry_digest(key, prefix)
        files = self._cache.files
        extra = {"key_digest": key.digest, "conversation": prefix.to_json()}
        try:
            async with self._cache.lock:
                tokens, size = await asyncio.to_thread(
                    files.commit, key, rows, digest=digest, extra=extra
                )
                index = self._index(key.digest, key.model_id)
                doomed = index.add(Entry(digest, prefix, size, tokens, time.time()))
                doomed += index.beyond(self.limit)
                for old in doomed:
                    index.remove(old)
                    await asyncio.to_thread(files.delete_entry, old)
                for old in await asyncio.to_thread(files.enforce_bound, digest):
                    for other in self._indexes.values():
                        other.remove(old)
                self._cache.stats.bytes_on_disk = await asyncio.to_thread(files.disk_usage)
        except _ERRORS as e:
            self._cache.stats.save_failures += 1
            log.warning("kvcache.save_failed", model=runner.model.name, error=_why(e))
            await asyncio.to_thread(files.drop_parts, digest)
            return
        self._cache.stats.saves += 1
        self._update_stats()
        log.info("kvcache.conversation_saved", model=runner.model.name, tokens=tokens, bytes=size)

    # --- restores ------------------------------------------------------------------------------

    async def _restore(self, runner: Runner, slot: int, entry: Entry) -> bool:
        """Verify *entry* and load it into *slot*; a bad entry is deleted with a warning."""
        key = runner.kv_key
        if key is None:
            return False
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._cache.config.restore_timeout_s):
                tokens = await self._load(runner, key, slot, entry)
        except _ERRORS as e:
            self._cache.stats.restore_failures += 1
            log.warning("kvcache.restore_failed", model=runner.model.name, error=_why(e))
            await self._forget(key, entry.digest)
            return False
        self._cache.stats.restores += 1
        self._cache.stats.restored_tokens += tokens
        runner.restored_tokens += tokens
        runner.kv_hit_pending = True
        log.info(
            "kvcache.conversation_restored",
            model=runner.model.name,
            slot=slot,
            tokens=tokens,
            restore_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return True

    async def _load(self, runner: Runner, key: CacheKey, slot: int, entry: Entry) -> int:
        files = self._cache.files
        manifest = await asyncio.to_thread(files.read_manifest, entry.digest)
        if manifest is None:
            raise SaveFailed("the entry is gone")
        if manifest.get("format") != FORMAT or manifest.get("key") != key.to_json():
            raise SaveFailed("the entry was saved under another key")
        rows = manifest.get("slots")
        if not isinstance(rows, list) or len(rows) != 1:
            raise SaveFailed("the manifest does not name one slot file")
        await asyncio.to_thread(files.verify, rows[0])  # size and sha256, before llama-server
        async with kv_http.session(runner) as s:
            answer = await kv_http.post(
                s, f"/slots/{slot}?action=restore", {"filename": rows[0]["file"]}
            )
        now = time.time()
        await asyncio.to_thread(touch, files.dir / f"{entry.digest}.json")
        index = self._indexes.get(key.digest)
        if index is not None:
            index.touch(entry.digest, now)
        return int(answer.get("n_restored") or 0)

    async def _forget(self, key: CacheKey, digest: str) -> None:
        index = self._indexes.get(key.digest)
        if index is not None:
            index.remove(digest)
        async with self._cache.lock:
            await asyncio.to_thread(self._cache.files.delete_entry, digest)
            self._cache.stats.bytes_on_disk = await asyncio.to_thread(self._cache.files.disk_usage)
        self._update_stats()

    # --- queries and bookkeeping ---------------------------------------------------------------

    def _touch_due(self, digest: str, now: float) -> bool:
        """Whether *digest*'s manifest was last touched by a request ``TOUCH_EVERY_S`` ago."""
        if now - self._touched.get(digest, 0.0) < TOUCH_EVERY_S:
            return False
        if len(self._touched) > 4096:  # a bound on bookkeeping, far above the entries kept
            self._touched.clear()
        self._touched[digest] = now
        return True

    def summary(self, model_id: str) -> dict[str, int]:
        """What ``ps`` shows of a model: conversations on disk, their bytes, hits, misses."""
        indexes = [i for i in self._indexes.values() if i.model_id == model_id]
        counts = self.counts.get(model_id) or ModelCounts()
        return {
            "on_disk": sum(len(i.entries) for i in indexes),
            "bytes": sum(i.size for i in indexes),
            "hits": counts.hits,
            "misses": counts.misses,
        }

    def forget_all(self) -> None:
        """The directory was cleared or pruned (rm, purge): read it again at the next open."""
        self._indexes.clear()
        self._update_stats()

    def _index(self, key_digest: str, model_id: str) -> Index:
        index = self._indexes.get(key_digest)
        if index is None:
            index = self._indexes[key_digest] = Index(model_id)
        return index

    def _count(self, runner: Runner, source: str, hit: bool) -> None:
        if source not in ("disk", "none"):
            return  # in its slot or in llama-server's RAM: the disk was not asked
        counts = self.counts.setdefault(runner.model_id, ModelCounts())
        stats = self._cache.stats
        if hit:
            counts.hits += 1
            stats.conversation_hits += 1
        else:
            counts.misses += 1
            stats.conversation_misses += 1

    def _update_stats(self) -> None:
        self._cache.stats.conversations = sum(len(i.entries) for i in self._indexes.values())

    def _own(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._commits.add(task)
        task.add_done_callback(_finished(self._commits))
        return task


def entry_digest(key: CacheKey, prefix: Prefix) -> str:
    """The entry's name: its cache key and its conversation's chain (24 hex, as the key's)."""
    return hashlib.sha256(f"{key.digest}:{prefix.last}".encode()).hexdigest()[:24]


def _entry(digest: str, manifest: dict[str, Any], mtime: float, size: int) -> Entry | None:
    prefix = Prefix.from_json(manifest.get("conversation"))
    rows = manifest.get("slots")
    if prefix is None or not isinstance(rows, list) or len(rows) != 1:
        return None
    tokens = rows[0].get("tokens") if isinstance(rows[0], dict) else None
    return Entry(digest, prefix, size, int(tokens or 0), mtime)


def _finished(tasks: set[asyncio.Task[None]]) -> Any:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("kvcache.task_failed", task=task.get_name(), error=repr(task.exception()))

    return done


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
