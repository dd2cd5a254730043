"""Which conversation each of a runner's slots holds, and what a request must do to get its own.

Pure: no asyncio, no clock, no I/O (``runners/kv_store.py`` acts on the plans).  It models the
llama-server we run (4 slots, unified KV, ``--cache-idle-slots`` on by default): when a task
starts, every *idle* slot's cache moves to llama-server's RAM prompt cache and the slot is
cleared; a task sent to a named slot (``id_slot``) consults that RAM cache only if the slot is
not empty (with an empty one it keeps nothing and loads nothing).  So before a request of another
conversation is forwarded, each idle slot holding a conversation not yet on disk must be saved:
once the task starts it lives in RAM only, and dies with the runner.

A request's ``take`` decides, in one call and with nothing awaited in between, the slot it gets,
the slots to save first, and whether its conversation comes back from disk; ``release`` records
what the slot holds once the answer is done.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from modelrunner.runners.kv_prefix import Prefix

# A restore costs a file read and a checksum, both in proportion to the tokens, plus a few ms of
# round trips: cheaper than a re-read of anything but a few tokens (about 16 here).
MIN_RESTORE_CHARS = 64
TOKEN_SLACK = 2  # a saved slot may hold this many tokens more or fewer than its answer implied
# A displaced conversation is not saved again while its newest entry on disk covers all but this
# share of it: a return then re-reads at most a tenth (within the 0.3x a restore must cost), and
# a chat's turns, or a client sending the same prompts, cost no save each (a save is a slot
# write, a checksum and a manifest).  The geometric step keeps a growing conversation's saves few.
UNSAVED_SHARE = 0.1

Source = Literal["slot", "ram", "disk", "none", "unkeyed"]


@dataclass(slots=True)
class Slot:
    """One llama-server slot as far as the daemon knows."""

    id: int
    held: Prefix | None = None  # the conversation in it; None: empty or not known
    filled: bool = False  # it holds tokens (known or not)
    dirty: bool = False  # ``held`` has tokens that are not on disk
    busy: int = 0  # requests sent to it that have not ended
    tokens: int | None = None  # tokens it should hold after its last answer (a save's check)


@dataclass(frozen=True, slots=True)
class Entry:
    """A conversation saved on disk (one slot file under a manifest)."""

    digest: str
    prefix: Prefix
    size: int  # bytes on disk
    tokens: int
    used: float  # wall seconds of its last save or restore (the LRU order)


@dataclass(frozen=True, slots=True)
class Save:
    slot: int
    prefix: Prefix
    tokens: int | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request does before it is forwarded (and ``slot`` goes in its ``id_slot``)."""

    slot: int | None  # None: every slot busy, llama-server chooses (nothing tracked)
    saves: tuple[Save, ...]
    restore: Entry | None
    source: Source  # where its prompt's cache comes from
    known: Entry | None = None  # its entry on disk, restored or not (used now: the LRU order)


class Index:
    """The entries of one cache key (a model under one set of flags) and their hash chains."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.entries: dict[str, Entry] = {}
        self._by_hash: dict[str, set[str]] = collections.defaultdict(set)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries.values())

    def add(self, entry: Entry) -> list[str]:
        """Add *entry*; returns the entries it makes obsolete (their prompt is a prefix of it)."""
        obsolete = [
            d
            for d, e in self.entries.items()
            if d != entry.digest and e.prefix.common(entry.prefix) == e.prefix.size
        ]
        for digest in obsolete:
            self.remove(digest)
        self.remove(entry.digest)
        self.entries[entry.digest] = entry
        for h in entry.prefix.hashes:
            self._by_hash[h].add(entry.digest)
        return obsolete

    def remove(self, digest: str) -> None:
        entry = self.entries.pop(digest, None)
        if entry is None:
            return
        for h in entry.prefix.hashes:
            digests = self._by_hash.get(h)
            if digests is not None:
                digests.discard(digest)
                if not digests:
                    del self._by_hash[h]

    def touch(self, digest: str, used: float) -> None:
        entry = self.entries.get(digest)
        if entry is not None:
            self.entries[digest] = Entry(entry.digest, entry.prefix, entry.size, entry.tokens, used)

    def best(self, prefix: Prefix) -> tuple[Entry, int] | None:
        """The entry sharing the longest prompt prefix (the most recent of equals), and how
        many characters it shares."""
        for i in range(len(prefix.hashes) - 1, -1, -1):
            digests = self._by_hash.get(prefix.hashes[i])
            if digests:
                entry = max((self.entries[d] for d in digests), key=lambda e: e.used)
                return entry, prefix.chars[i]
        return None

    def beyond(self, limit: int) -> list[str]:
        """The least recently used entries past the first *limit* (the count bound)."""
        by_age = sorted(self.entries.values(), key=lambda e: e.used, reverse=True)
        return [e.digest for e in by_age[limit:]]


class SlotTable:
    """A runner's slots and the conversations llama-server's RAM cache should still hold."""

    def __init__(self, *, ram_budget_bytes: int | None, bytes_per_token: int) -> None:
        self.slots: list[Slot] = []
        self.ram_budget_bytes = ram_budget_bytes  # None: no limit
        self.bytes_per_token = bytes_per_token
        # Conversations moved to RAM (most recent last), with their estimated size.
        self._ram: collections.OrderedDict[str, tuple[Prefix, int]] = collections.OrderedDict()

    def resize(self, count: int) -> None:
        self.slots = [Slot(i) for i in range(count)]

    # --- decisions -----------------------------------------------------------------------------

    def take(self, prefix: Prefix | None, index: Index | None, *, choose: bool = True) -> Plan:
        """Choose the slot for a request of *prefix* and commit the choice (see the module).

        Not *choose*: llama-server will pick the slot (an endpoint that ignores ``id_slot``);
        the idle slots are saved and cleared all the same, and nothing new is tracked."""
        idle = [s for s in self.slots if s.busy == 0]
        if not choose:
            prefix = None
        own = _own_slot(idle, prefix)
        source: Source
        known: Entry | None = None
        if own is not None:
            target: Slot | None = own
            restore, source = None, "slot"
        else:
            target = _free_slot(idle, prefix) if choose else None
            restore, source, known = self._source(prefix, index, target)
        saves = tuple(
            Save(s.id, s.held, s.tokens)
            for s in idle
            if s.dirty and s.held is not None and s is not own and not _covered(s.held, index)
        )
        # The task's start moves every other idle slot to RAM and clears it; a restore
        # overwrites its target, whose old content goes nowhere.
        for s in idle:
            if s is own:
                continue
            if s.filled and s.held is not None and not (s is target and restore is not None):
                self._to_ram(s.held, s.tokens)
            s.held, s.filled, s.dirty, s.tokens = None, False, False, None
        if target is not None:
            target.busy += 1
            if prefix is not None:
                self._ram.pop(prefix.last, None)  # loaded back into a slot: gone from RAM
        return Plan(target.id if target else None, saves, restore, source, known)

    def release(self, slot_id: int, prefix: Prefix | None, *, tokens: int | None, ok: bool) -> None:
        """A request on *slot_id* ended: with *ok*, the slot holds *prefix* (not yet on disk)."""
        slot = self.slots[slot_id]
        slot.busy = max(0, slot.busy - 1)
        slot.filled = True
        if ok and prefix is not None:
            slot.held, slot.dirty, slot.tokens = prefix, True, tokens
        else:
            slot.held, slot.dirty, slot.tokens = None, False, None

    def saved(self, slot_id: int, prefix: Prefix) -> None:
        """*prefix* is on disk now (a stop's save): no need to save it again."""
        slot = self.slots[slot_id]
        if slot.held == prefix:
            slot.dirty = False

    def dirty(self) -> list[Save]:
        """What a stop must save: each idle slot holding a conversation not on disk."""
        return [
            Save(s.id, s.held, s.tokens)
            for s in self.slots
            if s.dirty and s.held is not None and s.busy == 0
        ]

    # --- helpers -------------------------------------------------------------------------------

    def _source(
        self, prefix: Prefix | None, index: Index | None, target: Slot | None
    ) -> tuple[Entry | None, Source, Entry | None]:
        if prefix is None:
            return None, "unkeyed", None
        # llama-server looks in its RAM cache only when the named slot holds something.
        in_ram = self._ram_common(prefix) if target is not None and target.filled else 0
        found = index.best(prefix) if index is not None and target is not None else None
        known = found[0] if found is not None and found[1] >= MIN_RESTORE_CHARS else None
        if known is not None and found is not None and found[1] > in_ram:
            return known, "disk", known
        if in_ram >= MIN_RESTORE_CHARS:
            return None, "ram", known
        return None, "none", known

    def _ram_common(self, prefix: Prefix) -> int:
        """Characters of *prefix* the RAM cache should have (within its budget, newest first)."""
        best = 0
        used = 0
        for held, size in reversed(self._ram.values()):
            used += size
            if self.ram_budget_bytes is not None and used > self.ram_budget_bytes:
                break
            best = max(best, held.common(prefix))
        return best

    def _to_ram(self, held: Prefix, tokens: int | None) -> None:
        if self.ram_budget_bytes == 0:
            return
        for key, (other, _) in list(self._ram.items()):
            if other.common(held) == other.size:  # llama-server drops prompts contained in it
                del self._ram[key]
        self._ram[held.last] = (held, (tokens or 0) * self.bytes_per_token)
        while len(self._ram) > 4096:  # a bound on our bookkeeping, far above any real cache
            self._ram.popitem(last=False)


def _covered(held: Prefix, index: Index | None) -> bool:
    """Whether an entry on disk shares all but ``UNSAVED_SHARE`` of *held* (llama-server reuses
    the common part of whatever a restore brings back)."""
    found = index.best(held) if index is not None else None
    return found is not None and held.size - found[1] <= UNSAVED_SHARE * held.size


def _own_slot(idle: Iterable[Slot], prefix: Prefix | None) -> Slot | None:
    """The idle slot whose whole conversation this request continues (the longest)."""
    if prefix is None:
        return None
    best: Slot | None = None
    for s in idle:
        held = s.held
        if (
            held is not None
            and held.common(prefix) == held.size
            and (best is None or (best.held is not None and held.size > best.held.size))
        ):
            best = s
    return best


def _free_slot(idle: list[Slot], prefix: Prefix | None) -> Slot | None:
    """An idle slot for a conversation no slot holds: the one sharing most of its prompt (a
    common system prompt), else a filled one (so the RAM cache is consulted), else any."""
    if not idle:
        return None
    if prefix is not None:
        shared = max(idle, key=lambda s: s.held.common(prefix) if s.held is not None else 0)
        if shared.held is not None and shared.held.common(prefix) > 0:
            return shared
    return next((s for s in idle if s.filled), idle[0])


def expected_tokens(usage: dict[str, object] | None) -> int | None:
    """Tokens a slot holds after an answer: its prompt plus all but the last generated token
    (llama-server never evaluates the last one).  OpenAI's and Anthropic's usage both read."""
    if not usage:
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if not isinstance(prompt, int):
        inputs, cached = usage.get("input_tokens"), usage.get("cache_read_input_tokens")
        if not isinstance(inputs, int):
            return None
        prompt = inputs + (cached if isinstance(cached, int) else 0)
        completion = usage.get("output_tokens")
    if not isinstance(completion, int):
        return None
    return prompt + max(0, completion - 1)


def plausible(saved_tokens: int, expected: int | None) -> bool:
    """Whether a slot's save holds the conversation we think (not one a task put there since)."""
    if saved_tokens <= 0:
        return False
    return expected is None or abs(saved_tokens - expected) <= TOKEN_SLACK
