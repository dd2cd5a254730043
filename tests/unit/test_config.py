"""Config precedence and validation: defaults < YAML < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrunner.config import Config, ModelSettings
from modelrunner.errors import ConfigError


def test_defaults_put_everything_under_home(tmp_path: Path) -> None:
    """MODEL_RUNNER_HOME moves the store, run dir, logs and socket together."""
    c = Config.load(env={"MODEL_RUNNER_HOME": str(tmp_path)})
    assert c.home == tmp_path
    assert c.store.path == tmp_path / "models"
    assert c.server.socket == tmp_path / "run" / "model-runner.sock"
    assert c.runners.log_dir == tmp_path / "logs"
    assert c.server.port == 12434
    assert c.server.max_body_bytes == 10 * 1024 * 1024


def test_yaml_then_env_then_flags(tmp_path: Path) -> None:
    """Each layer overrides the one before it, key by key."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text("server:\n  port: 2000\nrunners:\n  max_loaded: 3\n  idle_ttl_s: 60\n")
    c = Config.load(env={"MODEL_RUNNER_HOME": str(tmp_path), "MODEL_RUNNER_PORT": "3000"})
    assert c.server.port == 3000
    assert c.runners.max_loaded == 3
    assert c.runners.idle_ttl_s == 60.0
    c = Config.load(
        env={"MODEL_RUNNER_HOME": str(tmp_path), "MODEL_RUNNER_PORT": "3000"},
        overrides={"server": {"port": 4000}},
    )
    assert c.server.port == 4000


def test_docker_env_vars(tmp_path: Path) -> None:
    """Docker Model Runner's variables map onto our keys; LLAMA_ARGS splits like a shell."""
    env = {
        "MODEL_RUNNER_HOME": str(tmp_path),
        "MODELS_PATH": str(tmp_path / "store"),
        "MODEL_RUNNER_SOCK": str(tmp_path / "s.sock"),
        "LLAMA_ARGS": "--temp 0.5 --chat-template 'a b'",
        "DMR_ORIGINS": "http://a.test,http://b.test",
        "DISABLE_METRICS": "1",
        "MODELRUNNER_RUNNERS_MAX_LOADED": "5",
    }
    c = Config.load(env=env)
    assert c.store.path == tmp_path / "store"
    assert c.server.socket == tmp_path / "s.sock"
    assert c.runners.llama_args == ("--temp", "0.5", "--chat-template", "a b")
    assert c.server.origins == ("http://a.test", "http://b.test")
    assert c.server.disable_metrics is True
    assert c.runners.max_loaded == 5


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("runners:\n  max_lodaed: 3\n")
    with pytest.raises(ConfigError, match=r"config\.yaml.*runners\.max_lodaed"):
        Config.load(env={"MODEL_RUNNER_HOME": str(tmp_path)})


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("runners:\n  max_loaded: 0\n", r"runners\.max_loaded: must be an integer >= 1, got 0"),
        ("runners:\n  max_loaded: lots\n", r"runners\.max_loaded: must be an integer"),
        ("server:\n  port: 70000\n", r"server\.port"),
        ("server: 3\n", r"server: must be a mapping"),
        ("log_level: loud\n", r"log_level"),
        ("runners:\n  memory_fraction: 2\n", r"memory_fraction"),
        ("- a\n- b\n", r"must be a mapping"),
        ("a: [\n", r"cannot read config"),
    ],
)
def test_bad_values_are_clear_errors(tmp_path: Path, yaml_text: str, match: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        Config.load(cfg, env={"MODEL_RUNNER_HOME": str(tmp_path)})


def test_bad_env_value_names_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"environment: server\.port"):
        Config.load(env={"MODEL_RUNNER_HOME": str(tmp_path), "MODEL_RUNNER_PORT": "http"})


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "nope.yaml", env={})


def test_per_model_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "models:\n  ai/gemma3:\n    context_size: 4096\n    pinned: true\n"
        "    runtime_flags: ['--temp', '0.2']\n"
    )
    c = Config.load(env={"MODEL_RUNNER_HOME": str(tmp_path)})
    assert c.models["ai/gemma3"] == ModelSettings(
        context_size=4096, pinned=True, runtime_flags=("--temp", "0.2")
    )
    cfg.write_text("models:\n  ai/gemma3:\n    contxt: 1\n")
    with pytest.raises(ConfigError, match=r"models\.ai/gemma3\.contxt"):
        Config.load(env={"MODEL_RUNNER_HOME": str(tmp_path)})
