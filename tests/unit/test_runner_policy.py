"""The residency planner and TTL/backoff rules: pure data in, decisions out."""

from __future__ import annotations

from modelrunner.runners.policy import (
    Loaded,
    Plan,
    backoff_delay_s,
    effective_ttl,
    plan_load,
    plan_oom_retry,
    retry_after_s,
)


def idle(key: str, last_used: float, need: int = 100, *, pinned: bool = False) -> Loaded[str]:
    return Loaded(key, need, last_used, busy=False, pinned=pinned)


def busy(key: str, last_used: float, need: int = 100) -> Loaded[str]:
    return Loaded(key, need, last_used, busy=True)


class TestPlanLoad:
    def test_room_left_evicts_nothing(self) -> None:
        """Under the limit, nothing is stopped."""
        assert plan_load(10, [idle("a", 1)], max_loaded=2, budget_bytes=None) == Plan(())

    def test_evicts_the_least_recently_used_idle_runner_only(self) -> None:
        """True LRU: one victim, the oldest, not every idle runner as Docker does."""
        loaded = [idle("new", 3), idle("old", 1), idle("mid", 2)]
        assert plan_load(10, loaded, max_loaded=3, budget_bytes=None).evict == ("old",)

    def test_never_evicts_a_busy_runner(self) -> None:
        """A runner serving a request is skipped; the caller waits instead."""
        plan = plan_load(50, [busy("a", 0)], max_loaded=1, budget_bytes=None)
        assert plan == Plan((), "busy")
        assert not plan.fits

    def test_skips_busy_and_takes_the_next_oldest(self) -> None:
        loaded = [busy("old", 1), idle("young", 5)]
        assert plan_load(1, loaded, max_loaded=2, budget_bytes=None).evict == ("young",)

    def test_never_evicts_a_pinned_runner(self) -> None:
        """A pinned model is counted but is never the victim."""
        loaded = [idle("pinned", 0, pinned=True), idle("b", 9)]
        assert plan_load(1, loaded, max_loaded=2, budget_bytes=None).evict == ("b",)

    def test_only_pinned_runners_left_is_blocked_for_good(self) -> None:
        plan = plan_load(1, [idle("p", 0, pinned=True)], max_loaded=1, budget_bytes=None)
        assert plan.blocked == "pinned"

    def test_loads_in_progress_count_and_are_not_victims(self) -> None:
        """A loading runner is passed as busy: it takes a slot and can't be evicted."""
        loaded = [busy("loading", 9), idle("idle", 1)]
        assert plan_load(1, loaded, max_loaded=2, budget_bytes=None).evict == ("idle",)

    def test_memory_budget_evicts_until_it_fits(self) -> None:
        loaded = [idle("a", 1, need=400), idle("b", 2, need=400), idle("c", 3, need=100)]
        plan = plan_load(500, loaded, max_loaded=10, budget_bytes=1000)
        assert plan.evict == ("a",)
        assert plan.fits

    def test_memory_budget_takes_several_victims_in_lru_order(self) -> None:
        loaded = [idle("c", 3, need=300), idle("a", 1, need=300), idle("b", 2, need=300)]
        plan = plan_load(700, loaded, max_loaded=10, budget_bytes=1000)
        assert plan.evict == ("a", "b")

    def test_a_model_larger_than_the_budget_is_too_big(self) -> None:
        assert plan_load(2000, [], max_loaded=2, budget_bytes=1000).blocked == "too_big"

    def test_no_budget_means_only_the_count_matters(self) -> None:
        assert plan_load(10**15, [], max_loaded=1, budget_bytes=None).fits


class TestOomRetry:
    def test_every_idle_unpinned_runner_lru_first(self) -> None:
        loaded = [idle("b", 2), busy("x", 0), idle("a", 1), idle("p", 0, pinned=True)]
        assert plan_oom_retry(loaded) == ("a", "b")


class TestEffectiveTtl:
    def test_default_applies_without_settings(self) -> None:
        ttl = effective_ttl(
            request_keep_alive_s=None, model_idle_ttl_s=None, default_idle_ttl_s=300, pinned=False
        )
        assert ttl == 300

    def test_model_setting_beats_the_default(self) -> None:
        ttl = effective_ttl(
            request_keep_alive_s=None, model_idle_ttl_s=5, default_idle_ttl_s=300, pinned=False
        )
        assert ttl == 5

    def test_request_keep_alive_beats_the_model_setting(self) -> None:
        ttl = effective_ttl(
            request_keep_alive_s=0, model_idle_ttl_s=5, default_idle_ttl_s=300, pinned=False
        )
        assert ttl == 0

    def test_negative_keep_alive_means_never(self) -> None:
        ttl = effective_ttl(
            request_keep_alive_s=-1, model_idle_ttl_s=5, default_idle_ttl_s=300, pinned=False
        )
        assert ttl is None

    def test_pinned_never_idles_out(self) -> None:
        ttl = effective_ttl(
            request_keep_alive_s=0, model_idle_ttl_s=1, default_idle_ttl_s=1, pinned=True
        )
        assert ttl is None


class TestBackoff:
    def test_first_retry_is_immediate_then_doubles_up_to_the_cap(self) -> None:
        delays = [backoff_delay_s(n, base_s=1, max_s=5) for n in range(6)]
        assert delays == [0, 0, 1, 2, 4, 5]


def test_retry_after_is_at_least_one_second() -> None:
    assert retry_after_s(1, 4) == 1
    assert retry_after_s(8, 4) == 2
