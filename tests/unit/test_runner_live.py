"""runners/live.py: which runners.* keys a reload applies, and which runners a lower max_loaded
stops; server/provenance.py's list of config-file values a configure setting hides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from modelrunner.config import ModelSettings, RunnersConfig
from modelrunner.runners import live
from modelrunner.runners.policy import Loaded
from modelrunner.server.provenance import overridden
from modelrunner.server.settings import StoredSettings


def test_plan_applies_live_keys_and_keeps_restart_keys_at_their_old_values() -> None:
    old = RunnersConfig(idle_ttl_s=300, max_loaded=1, engine="auto")
    new = RunnersConfig(
        idle_ttl_s=3, max_loaded=2, engine="wheel", llama_args=("--temp", "0"), run_dir=Path("/x")
    )
    change = live.plan(old, new)
    assert set(change.applied) == {
        "runners.idle_ttl_s",
        "runners.max_loaded",
        "runners.llama_args",
    }
    assert set(change.restart_required) == {"runners.engine", "runners.run_dir"}
    assert change.next_load == ("runners.llama_args",)
    assert change.config == dataclasses.replace(new, engine="auto", run_dir=old.run_dir)
    assert live.plan(old, old) == live.RunnersChange(config=old)


def test_over_limit_stops_idle_unpinned_runners_lru_first() -> None:
    loaded = [
        Loaded("busy", 1, last_used=0.0, busy=True),
        Loaded("pinned", 1, last_used=1.0, busy=False, pinned=True),
        Loaded("old", 1, last_used=2.0, busy=False),
        Loaded("new", 1, last_used=3.0, busy=False),
    ]
    assert live.over_limit(loaded, 4) == ()
    assert live.over_limit(loaded, 3) == ("old",)
    assert live.over_limit(loaded, 1) == ("old", "new")  # never the busy or pinned ones


def test_overridden_names_file_values_a_configure_setting_keeps_out() -> None:
    before, after = ModelSettings(context_size=1024), ModelSettings(context_size=2048)
    stored = StoredSettings(model="ai/x", context_size=1024)
    assert overridden(before, after, stored) == [
        {
            "key": "context_size",
            "config_file": 2048,
            "kept": 1024,
            "source": "modelrunner configure",
        }
    ]
    assert overridden(before, after, None) == []  # nothing stored: the file applies
    assert overridden(after, after, stored) == []  # the file did not change
