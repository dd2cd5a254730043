"""Which conversation a completion request continues: a hash chain over its prompt's parts.

Pure, no I/O.  A request's prompt is a sequence of *segments* (the Anthropic ``system`` and the
``tools``, which render first, then each message; a raw ``prompt`` string cut in fixed chunks, a
token list likewise), and ``hashes[i]`` digests segments ``0..i`` chained.  A conversation's next
turn repeats every segment of the last one and appends, so the entry saved after turn *k* shares
its whole chain with turn *k+1*'s: the longest common chain is the longest common prefix, found
with dict lookups, with no tokenizer and no round trip to llama-server.  The chain is only a
guess at which cache helps: llama-server compares the tokens itself before it reuses a cell, so a
wrong guess costs a re-read, never a wrong answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Top-level members that render into the prompt before the messages (Anthropic's system, the
# tools of both families, template switches such as enable_thinking).
_HEAD = ("system", "tools", "chat_template_kwargs")
PROMPT_CHUNK_CHARS = 1024  # a raw prompt string is chained in pieces of this many characters
PROMPT_CHUNK_TOKENS = 256  # and a token list in pieces of this many tokens
# llama-server's endpoints that read ``id_slot`` from the body.  Its /v1/messages (Anthropic)
# rebuilds the body and drops the field: those requests start in a slot of its choosing.
SLOT_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/completion", "/infill"})


@dataclass(frozen=True, slots=True)
class Prefix:
    """A prompt as a hash chain: ``hashes[i]`` covers segments ``0..i``, ``chars[i]`` their
    serialized size (the "how much would a restore save" measure)."""

    hashes: tuple[str, ...]
    chars: tuple[int, ...]

    @property
    def last(self) -> str:
        return self.hashes[-1]

    @property
    def size(self) -> int:
        return self.chars[-1]

    def common(self, other: Prefix) -> int:
        """Characters of the longest common prefix, counted whole segments (chained hashes:
        equal at *i* means equal up to *i*, so the first difference ends it)."""
        n = 0
        for mine, theirs in zip(self.hashes, other.hashes, strict=False):
            if mine != theirs:
                break
            n += 1
        return self.chars[n - 1] if n else 0

    def to_json(self) -> dict[str, Any]:
        return {"hashes": list(self.hashes), "chars": list(self.chars)}

    @classmethod
    def from_json(cls, value: Any) -> Prefix | None:
        """The manifest's copy, or None if it is not one."""
        if not isinstance(value, dict):
            return None
        hashes, chars = value.get("hashes"), value.get("chars")
        if (
            not isinstance(hashes, list)
            or not isinstance(chars, list)
            or not hashes
            or len(hashes) != len(chars)
            or not all(isinstance(h, str) for h in hashes)
            or not all(isinstance(c, int) for c in chars)
        ):
            return None
        return cls(tuple(hashes), tuple(chars))


def parse(body: bytes) -> dict[str, Any] | None:
    """The request body as a JSON object, or None (the caller then leaves it alone)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def prefix_of(payload: Mapping[str, Any]) -> Prefix | None:
    """The chain of a completion request's prompt; None when it has none we can chain."""
    try:
        return _chain(payload)
    except (orjson.JSONEncodeError, TypeError, ValueError):
        return None  # a value orjson cannot write (a huge integer): llama-server will say why


def _chain(payload: Mapping[str, Any]) -> Prefix | None:
    segments: list[bytes] = []
    for key in _HEAD:
        if key in payload:
            segments.append(_dump({key: payload[key]}))
    messages = payload.get("messages")
    prompt = payload.get("prompt")
    if isinstance(messages, list) and messages:
        segments += [_dump(m) for m in messages]
        seed = b"messages"
    elif isinstance(prompt, str) and prompt:
        step = PROMPT_CHUNK_CHARS
        segments += [prompt[i : i + step].encode() for i in range(0, len(prompt), step)]
        seed = b"prompt"
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        step = PROMPT_CHUNK_TOKENS
        segments += [_dump(prompt[i : i + step]) for i in range(0, len(prompt), step)]
        seed = b"tokens"
    else:
        return None
    hashes: list[str] = []
    chars: list[int] = []
    state = hashlib.blake2b(seed, digest_size=16).digest()
    total = 0
    for segment in segments:
        state = hashlib.blake2b(state + segment, digest_size=16).digest()
        total += len(segment)
        hashes.append(state.hex())
        chars.append(total)
    return Prefix(tuple(hashes), tuple(chars))


def with_slot(body: bytes, slot: int) -> bytes:
    """*body* (a JSON object) with ``"id_slot": slot`` added, without parsing it again."""
    end = body.rstrip()
    if not end.endswith(b"}"):
        return body
    inner = end[:-1].rstrip()
    separator = b"" if inner.endswith(b"{") else b","
    return inner + separator + b'"id_slot":' + str(slot).encode() + b"}"


def _dump(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
