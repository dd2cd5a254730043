"""The measuring half of ``modelrunner bench``: streamed chat requests at one concurrency level.

Docker's ``docker model bench`` sends whole (non-streamed) requests and counts ``usage``
tokens; these are streamed, so the time to the first token (TTFT) and the tokens come from the
stream itself (``stream_options.include_usage`` for the count, else one token per content chunk).
Each of N worker threads sends one request after another until the level's duration is over;
the level ends when the last request in flight has finished (Docker's rule), and its rates are
over that whole time.  Pure measurement: printing belongs to the verb.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelrunner.cli.client import Client
from modelrunner.errors import ModelRunnerError

CHAT_PATH = "/engines/v1/chat/completions"


@dataclass
class Sample:
    """One request: its tokens, TTFT (seconds, None without a token) and error (None = ok)."""

    tokens: int = 0
    ttft_s: float | None = None
    error: str | None = None


@dataclass
class LevelResult:
    concurrency: int
    total_time_s: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    @property
    def errors(self) -> int:
        return len(self.samples) - len(self.ok)

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.ok)

    @property
    def tokens_per_second(self) -> float:
        return self.total_tokens / self.total_time_s if self.total_time_s > 0 else 0.0

    @property
    def requests_per_second(self) -> float:
        return len(self.ok) / self.total_time_s if self.total_time_s > 0 else 0.0

    def ttft_s(self, q: float) -> float | None:
        values = sorted(s.ttft_s for s in self.ok if s.ttft_s is not None)
        return percentile(values, q) if values else None

    def ttft_ms(self, q: float) -> float | None:
        seconds = self.ttft_s(q)
        return None if seconds is None else round(seconds * 1000, 1)

    def to_docker(self) -> dict[str, Any]:
        """Docker's ``BenchmarkResult`` as Go marshals it (field names as declared, durations
        in nanoseconds), then the TTFT percentiles and the error count Docker does not have."""
        return {
            "Concurrency": self.concurrency,
            "MeanRPS": self.requests_per_second,
            "TotalTokens": self.total_tokens,
            "TPS": self.tokens_per_second,
            "TotalTime": round(self.total_time_s * 1e9),
            "Requests": len(self.ok),
            "TokenCounts": [s.tokens for s in self.ok],
            "Errors": self.errors,
            "TTFTP50": _ns(self.ttft_s(50)),
            "TTFTP95": _ns(self.ttft_s(95)),
        }


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1e9)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def request_body(model: str, prompt: str, max_tokens: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def one_request(client: Client, body: dict[str, Any], timeout_s: float) -> Sample:
    """Send one streamed chat request; what it produced, or why it failed."""
    sample = Sample()
    started = time.monotonic()  # TTFT counts from here: the send and the headers included
    try:
        response = client.request(
            "POST", CHAT_PATH, json_body=body, headers={"Accept": "text/event-stream"}
        )
        with response:
            _consume(response.lines(), sample, timeout_s, started)
    except (ModelRunnerError, ValueError, OSError) as e:
        sample.error = getattr(e, "message", None) or str(e) or type(e).__name__
        sample.tokens = 0
    return sample


def _consume(lines: Iterable[str], sample: Sample, timeout_s: float, started: float) -> None:
    """Read the SSE answer into *sample*; raise on an error event or past *timeout_s*."""
    chunks = 0
    usage: int | None = None
    for line in lines:
        if time.monotonic() - started > timeout_s:
            raise ModelRunnerError(f"the request took longer than {timeout_s:g}s")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            error = event["error"]
            raise ModelRunnerError(str(error.get("message", error)))
        if isinstance(event.get("usage"), dict):
            usage = event["usage"].get("completion_tokens")
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                chunks += 1
                if sample.ttft_s is None:
                    sample.ttft_s = time.monotonic() - started
    sample.tokens = usage if isinstance(usage, int) else chunks


def run_level(
    client: Client, body: dict[str, Any], concurrency: int, duration_s: float, timeout_s: float
) -> LevelResult:
    """*concurrency* workers, each sending requests back to back until *duration_s* is over."""
    samples: list[Sample] = []
    lock = threading.Lock()
    started = time.monotonic()
    end = started + duration_s

    def worker() -> None:
        while time.monotonic() < end:
            sample = one_request(client, body, timeout_s)
            with lock:
                samples.append(sample)

    threads = [
        threading.Thread(target=worker, name=f"bench-{i}", daemon=True) for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LevelResult(concurrency, time.monotonic() - started, samples)


def document(model: str, prompt: str, results: Sequence[LevelResult]) -> dict[str, Any]:
    """``docker model bench --json``'s one document: ``{model, prompt, results}``, the results
    by concurrency (so ``jq .results`` scripts written for Docker's work unchanged)."""
    ordered = sorted(results, key=lambda r: r.concurrency)
    return {"model": model, "prompt": prompt, "results": [r.to_docker() for r in ordered]}


def base_tps(results: Sequence[LevelResult]) -> float:
    """Concurrency 1's tokens/s, else the first level's (Docker's baseline)."""
    for r in results:
        if r.concurrency == 1 and r.tokens_per_second > 0:
            return r.tokens_per_second
    return results[0].tokens_per_second if results else 0.0
