"""The latency histogram: Prometheus' cumulative ``le`` buckets, from per-bucket counts."""

from __future__ import annotations

from modelrunner.runners.runner import SupervisorStats
from modelrunner.server.observe.metrics import BUCKETS, Histogram, Metrics


def test_each_bucket_counts_the_observations_at_or_below_its_bound() -> None:
    h = Histogram()
    values = (0.001, 0.005, 0.0051, 0.3, 60.0, 200.0)
    for v in values:
        h.observe(v)
    assert h.counts == [sum(v <= bound for v in values) for bound in BUCKETS]
    assert h.total == len(values)
    assert abs(h.sum - sum(values)) < 1e-9


def test_rendered_buckets_are_cumulative_and_end_in_the_total() -> None:
    m = Metrics()
    for seconds in (0.002, 0.002, 0.7):
        m.observe_request("POST", "/v1/chat/completions", 200, seconds)
    lines = [
        line
        for line in m.render(SupervisorStats(), []).splitlines()
        if line.startswith("modelrunner_http_request_duration_seconds_bucket")
    ]
    counts = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert counts == sorted(counts)
    assert counts[0] == 2
    assert counts[-1] == 3
    assert 'le="+Inf"' in lines[-1]
