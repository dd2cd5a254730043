"""`_configure` settings: keep_alive durations, merging over the config file, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelrunner.config import ModelSettings
from modelrunner.errors import ConfigError, InvalidRequest
from modelrunner.server.settings import (
    SettingsFile,
    StoredSettings,
    format_keep_alive,
    parse_keep_alive,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10m", 600),
        ("1h30m", 5400),
        ("90s", 90),
        ("0", 0),
        ("-1", -1),
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("-5m", -300),
    ],
)
def test_keep_alive_durations(text: str, seconds: float) -> None:
    assert parse_keep_alive(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "10x", "m10", "1h 2m"])
def test_bad_keep_alive_is_a_400(text: str) -> None:
    with pytest.raises(InvalidRequest, match="keep_alive"):
        parse_keep_alive(text)


def test_keep_alive_formats_as_go_durations() -> None:
    assert format_keep_alive(600) == "10m0s"
    assert format_keep_alive(3725) == "1h2m5s"
    assert format_keep_alive(-1) == "-1"
    assert format_keep_alive(30) == "30s"


def test_stored_settings_overlay_the_config_file_field_by_field() -> None:
    base = ModelSettings(context_size=4096, runtime_flags=("--temp", "0.5"), pinned=True)
    stored = StoredSettings(model="ai/x", context_size=1024, keep_alive_s=60)
    merged = stored.apply(base)
    assert merged.context_size == 1024
    assert merged.runtime_flags == ("--temp", "0.5")
    assert merged.pinned is True
    assert merged.idle_ttl_s == 60


async def test_settings_survive_a_reload_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    first = SettingsFile(path)
    await first.load()
    await first.update("sha256:aa", {"context_size": 2048}, "ai/x:latest")
    await first.update("sha256:aa", {"runtime_flags": ("--temp", "0.1")}, "ai/x:latest")
    second = SettingsFile(path)
    await second.load()
    got = second.get("sha256:aa")
    assert got is not None
    assert got.context_size == 2048  # merged, not replaced
    assert got.runtime_flags == ("--temp", "0.1")
    assert got.to_wire() == {"context-size": 2048, "runtime-flags": ["--temp", "0.1"]}
    assert await second.remove(["sha256:aa"]) == 1
    third = SettingsFile(path)
    await third.load()
    assert third.items() == []


async def test_a_corrupt_file_is_set_aside_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text("{not json")
    settings = SettingsFile(path)
    await settings.load()
    assert settings.items() == []
    assert (tmp_path / "settings.json.corrupt").exists()
    await settings.update("sha256:bb", {"pinned": True}, "ai/y:latest")
    assert json.loads(path.read_text())["models"]["sha256:bb"]["pinned"] is True


async def test_a_settings_file_that_cannot_be_written_is_a_translated_error(
    tmp_path: Path,
) -> None:
    """An OSError saving settings is a ModelRunnerError naming the file (not a 500 traceback),
    and the temp file it wrote is not left behind."""
    path = tmp_path / "settings.json"
    (path / "in-the-way").mkdir(parents=True)  # a directory where the file should be
    settings = SettingsFile(path)
    with pytest.raises(ConfigError, match=r"settings\.json"):
        await settings.load()
    with pytest.raises(ConfigError, match=r"settings\.json"):
        await settings.update("sha256:cc", {"pinned": True}, "ai/z:latest")
    assert settings.get("sha256:cc") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]
