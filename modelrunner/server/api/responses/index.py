"""
Which stored responses exist, and which to drop: a pure table of ids, times and sizes.

The bounds are a count, a byte total and a time to live.  ``add`` decides what must go to make
room (oldest first) and ``expired`` what has outlived the TTL; the caller removes those files.
No I/O and no clock of its own (times are passed in), so every rule is tested as plain data.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

ID_PATTERN = re.compile(r"^resp_[0-9a-f]{32}$")


def valid_id(response_id: str) -> bool:
    """Only ids this daemon makes name a file: no path can be smuggled in."""
    return ID_PATTERN.match(response_id) is not None


@dataclass(frozen=True, slots=True)
class Entry:
    created: float
    size: int


class ResponseIndex:
    """Ids in creation order with their sizes, under ``max_count``/``max_bytes``/``ttl_s``."""

    def __init__(self, *, max_count: int, max_bytes: int, ttl_s: float) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._entries

    def fits(self, size: int) -> bool:
        """Whether one record of *size* bytes can be kept at all."""
        return size <= self.max_bytes

    def add(self, response_id: str, created: float, size: int) -> list[str]:
        """Record *response_id*; the ids to remove (oldest first) so the bounds hold again."""
        self.remove(response_id)
        newest = next(reversed(self._entries.values()), None)
        self._entries[response_id] = Entry(created, size)
        if newest is not None and created < newest.created:
            # Entries come from a directory scan too, in any order: keep the oldest first.
            self._entries = collections.OrderedDict(
                sorted(self._entries.items(), key=lambda kv: kv[1].created)
            )
        self.bytes += size
        evict: list[str] = []
        while len(self._entries) > self.max_count or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self.remove(oldest)
            evict.append(oldest)
        return evict

    def remove(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self.bytes -= entry.size
        return True

    def live(self, response_id: str, now: float) -> bool:
        entry = self._entries.get(response_id)
        return entry is not None and now - entry.created <= self.ttl_s

    def expired(self, now: float) -> list[str]:
        """Ids past the TTL (oldest first); they stay until ``remove``d."""
        out = []
        for response_id, entry in self._entries.items():
            if now - entry.created <= self.ttl_s:
                break
            out.append(response_id)
        return out
