"""
Prometheus text metrics: requests, latencies, tokens, loads, evictions, runner memory.

Counters are plain dicts updated by the request middleware and the proxy (no client library: the
text format is a few lines).  Runner gauges are read from the supervisor at scrape time.  Knows
nothing of routes beyond the label it is handed.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from modelrunner.runners.kvcache import KVStats
from modelrunner.runners.supervisor import RunnerStatus, SupervisorStats

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ROUTE_ID = re.compile(r"\{[^}]+\}")


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    inner = ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


class Histogram:
    """Prometheus' cumulative buckets, kept per bucket: an observation (one per request) is a
    bisection and one increment, not a pass over every bucket."""

    def __init__(self) -> None:
        self._within = [0] * (len(BUCKETS) + 1)  # [i]: observations in (BUCKETS[i-1], BUCKETS[i]]
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        self._within[bisect.bisect_left(BUCKETS, value)] += 1

    @property
    def counts(self) -> list[int]:
        """Observations <= each of BUCKETS (cumulative, as Prometheus' ``le`` buckets)."""
        return list(itertools.accumulate(self._within[: len(BUCKETS)]))


class Metrics:
    """What the daemon counts itself; ``render`` adds the supervisor's view."""

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.tokens: collections.Counter[tuple[str, str]] = collections.Counter()
        self.stream_errors = 0

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        hist = self.latency.get((method, route))
        if hist is None:
            hist = self.latency[(method, route)] = Histogram()
        hist.observe(seconds)

    def observe_usage(self, model: str, usage: dict[str, Any]) -> None:
        """Token counts from llama-server's ``usage`` block."""
        for kind in ("prompt_tokens", "completion_tokens"):
            value = usage.get(kind)
            if isinstance(value, int) and value >= 0:
                self.tokens[(model, kind.removesuffix("_tokens"))] += value

    def render(
        self,
        stats: SupervisorStats,
        runners: Sequence[RunnerStatus],
        kv: KVStats | None = None,
    ) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_: str, samples: Iterable[str]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)

        family(
            "modelrunner_http_requests_total",
            "counter",
            "HTTP requests by method, route and status.",
            (
                f"modelrunner_http_requests_total{_labels(method=m, route=r, status=s)} {n}"
                for (m, r, s), n in sorted(self.requests.items())
            ),
        )
        hist_lines: list[str] = []
        for (m, r), h in sorted(self.latency.items()):
            for bound, count in zip(BUCKETS, h.counts, strict=True):
                lbl = _labels(method=m, route=r, le=f"{bound:g}")
                hist_lines.append(f"modelrunner_http_request_duration_seconds_bucket{lbl} {count}")
            lbl = _labels(method=m, route=r, le="+Inf")
            hist_lines.append(f"modelrunner_http_request_duration_seconds_bucket{lbl} {h.total}")
            base = _labels(method=m, route=r)
            hist_lines.append(f"modelrunner_http_request_duration_seconds_sum{base} {h.sum:.6f}")
            hist_lines.append(f"modelrunner_http_request_duration_seconds_count{base} {h.total}")
        family(
            "modelrunner_http_request_duration_seconds",
            "histogram",
            "Time from request to the end of the answer.",
            hist_lines,
        )
        family(
            "modelrunner_tokens_total",
            "counter",
            "Tokens reported by llama-server's usage, by model and kind (prompt, completion).",
            (
                f"modelrunner_tokens_total{_labels(model=model, kind=kind)} {n}"
                for (model, kind), n in sorted(self.tokens.items())
            ),
        )
        family(
            "modelrunner_stream_errors_total",
            "counter",
            "Streamed answers ended by an error event (runner died mid-stream).",
            [f"modelrunner_stream_errors_total {self.stream_errors}"],
        )
        for field_name, help_ in (
            ("loads", "Runners started and ready."),
            ("load_failures", "Runner loads that failed."),
            ("evictions", "Runners stopped to make room (LRU or memory)."),
            ("crashes", "Runners that exited without being asked."),
            ("rate_limited", "Requests refused by the per-model in-flight limit."),
            ("queue_full", "Requests refused because too many waited for a model."),
            ("queue_timeouts", "Requests that waited too long for a runner."),
        ):
            name = f"modelrunner_runner_{field_name}_total"
            family(name, "counter", help_, [f"{name} {getattr(stats, field_name)}"])
        family(
            "modelrunner_runners",
            "gauge",
            "Runners by state.",
            (
                f"modelrunner_runners{_labels(state=state, backend=backend)} {n}"
                for (state, backend), n in sorted(
                    collections.Counter((r.state, r.backend) for r in runners).items()
                )
            ),
        )
        family(
            "modelrunner_runner_memory_bytes",
            "gauge",
            "Resident memory of each runner.",
            (
                f"modelrunner_runner_memory_bytes{_runner_labels(r)} {r.rss_bytes}"
                for r in runners
                if r.rss_bytes is not None
            ),
        )
        family(
            "modelrunner_runner_in_flight",
            "gauge",
            "Requests being served by each runner.",
            (f"modelrunner_runner_in_flight{_runner_labels(r)} {r.in_flight}" for r in runners),
        )
        for field_name, help_ in KV_COUNTERS if kv is not None else ():
            name = f"modelrunner_kv_cache_{field_name}_total"
            family(name, "counter", help_, [f"{name} {getattr(kv, field_name)}"])
        if kv is not None:
            name = "modelrunner_kv_cache_bytes"
            family(name, "gauge", "Prompt-cache files on disk.", [f"{name} {kv.bytes_on_disk}"])
            name = "modelrunner_kv_cache_conversations"
            help_ = "Conversations whose prompt cache is on disk."
            family(name, "gauge", help_, [f"{name} {kv.conversations}"])
        return "\n".join(lines) + "\n"


KV_COUNTERS = (
    ("saves", "Prompt caches saved (a planned stop, or a slot taken by another conversation)."),
    ("save_failures", "Prompt-cache saves that failed or timed out (the stop went on)."),
    ("restores", "Prompt caches restored into a runner (at load, or a conversation's return)."),
    ("restore_failures", "Prompt-cache entries refused at restore (deleted)."),
    ("restored_tokens", "Tokens restored into runners' slots."),
    ("restore_hit_tokens", "Prompt tokens not processed again thanks to a restore."),
    ("conversation_hits", "Conversations no slot held that came back from disk."),
    ("conversation_misses", "Conversations no slot held that the disk had nothing for."),
)


def _runner_labels(r: RunnerStatus) -> str:
    return _labels(model=r.name, model_id=r.model, mode=r.mode, backend=r.backend)


def route_label(template: str | None, path: str) -> str:
    """The route template (bounded label set), not the raw path."""
    return template if template else "unmatched"
