"""Embedding runners of models whose GGUF declares no pooling get --pooling mean; flags win."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrunner.config import ModelSettings, RunnersConfig
from modelrunner.runners.args import build_argv
from modelrunner.runners.model import ModelFiles
from modelrunner.runners.pooling import default_pooling, pooling_args


@pytest.mark.parametrize(
    ("gguf", "expected"),
    [
        ({"general.architecture": "llama"}, "mean"),  # a chat model: no pooling key
        ({"general.architecture": "gemma3", "gemma3.pooling_type": "0"}, "mean"),  # NONE
        ({"general.architecture": "bert", "bert.pooling_type": "2"}, None),  # CLS: its own
        ({"general.architecture": "qwen3", "qwen3.pooling_type": "3"}, None),  # LAST: its own
        ({}, None),  # no metadata: nothing known, nothing overridden
        (None, None),
    ],
)
def test_default_pooling(gguf: dict[str, str] | None, expected: str | None) -> None:
    assert default_pooling(gguf) == expected


def test_an_explicit_pooling_flag_wins() -> None:
    assert pooling_args("mean", ["--pooling", "cls"]) == []
    assert pooling_args("mean", [], ["--pooling=last"]) == []
    assert pooling_args("mean", ["-c", "512"]) == ["--pooling", "mean"]
    assert pooling_args(None, []) == []


def files(pooling: str | None, flags: tuple[str, ...] = ()) -> ModelFiles:
    return ModelFiles(
        id="sha256:" + "0" * 64,
        name="ai/x:latest",
        gguf_path=Path("/m.gguf"),
        settings=ModelSettings(runtime_flags=flags),
        pooling=pooling,
    )


def test_only_embedding_runners_get_it() -> None:
    cfg = RunnersConfig()
    sock = Path("/r.sock")
    argv = build_argv(Path("/llama-server"), files("mean"), "embedding", sock, cfg, base=[])
    assert argv[argv.index("--embeddings") + 1 : argv.index("--embeddings") + 3] == [
        "--pooling",
        "mean",
    ]
    for mode in ("completion", "reranking"):
        argv = build_argv(Path("/llama-server"), files("mean"), mode, sock, cfg, base=[])
        assert "--pooling" not in argv
    flagged = files("mean", ("--pooling", "cls"))
    argv = build_argv(Path("/llama-server"), flagged, "embedding", sock, cfg, base=[])
    assert argv.count("--pooling") == 1
    assert argv[argv.index("--pooling") + 1] == "cls"
