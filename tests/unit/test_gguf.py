"""Our GGUF header reader and Docker's config values computed from it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from modelrunner.distribution.gguf import (
    GGUFError,
    arch_params,
    format_parameters,
    format_size,
    quantization_name,
    read_gguf,
    shard_paths,
)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (183, "183"),
        (131_520, "131.52K"),
        (268_098_176, "268.10M"),
        (1_500_000_000, "1.50B"),
    ],
)
def test_parameters_formatted_as_docker(n: int, text: str) -> None:
    assert format_parameters(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (864, "864B"),
        (1000, "1KB"),
        (1024, "1KiB"),
        (526_080, "513.75KiB"),
        (246_587_904, "235.16MiB"),
        (2**30 - 1, "1.07GB"),
        (2**30, "1GiB"),
    ],
)
def test_sizes_formatted_as_docker(n: int, text: str) -> None:
    """gguf-parser-go's table: Pi, P, Ti, T, Gi, G, Mi, M, Ki, K in that order."""
    assert format_size(n) == text


def test_quantization_names() -> None:
    assert quantization_name(15) == "MOSTLY_Q4_K_M"
    assert quantization_name(0) == "MOSTLY_F32"
    assert quantization_name(None) == "Unknown"
    assert quantization_name(999) == "Unknown"


def test_reads_the_tiny_model(tiny_gguf: Path) -> None:
    """Architecture, context, parameters and the KV-cache shape come from the header."""
    info = read_gguf(tiny_gguf)
    values = info.config_values()
    assert values["format"] == "gguf"
    assert values["architecture"] == "llama"
    assert values["quantization"] == "MOSTLY_F32"
    assert values["context_size"] == 512
    assert values["gguf"]["llama.context_length"] == "512"
    assert values["gguf"]["llama.attention.layer_norm_rms_epsilon"] == "0.000010"
    assert "tokenizer.ggml.tokens" not in values["gguf"]  # 385 tokens: longer than 50
    assert info.chat_template
    assert "messages" in info.chat_template
    assert info.tensor_bytes < info.file_size
    assert info.arch_params() == {"n_layers": 2, "n_embd": 64, "n_head": 4, "n_head_kv": 4}


def test_agrees_with_the_gguf_package(tiny_gguf_factory: Callable[..., Path]) -> None:
    """Parameter count and data offset match the reference reader."""
    gguf = pytest.importorskip("gguf")
    path = tiny_gguf_factory(seed=3, ctx=1024)
    r = gguf.GGUFReader(str(path))
    info = read_gguf(path)
    assert info.parameters == sum(int(t.n_elements) for t in r.tensors)
    assert info.tensor_bytes == path.stat().st_size - r.data_offset
    assert info.context_length == 1024


def test_per_layer_head_counts_take_the_largest() -> None:
    params = arch_params(
        {
            "general.architecture": "gemma3",
            "gemma3.block_count": "3",
            "gemma3.attention.head_count_kv": "1, 2, 1",
            "gemma3.attention.key_length": "256",
        }
    )
    assert params == {"n_layers": 3, "n_head_kv": 2, "key_length": 256}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GGML" + b"\0" * 20,
        b"GGUF" + struct.pack("<I", 7) + b"\0" * 16,
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40),
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", 3)
        + b"abc"
        + struct.pack("<I", 99),
    ],
)
def test_refuses_what_is_not_gguf(tmp_path: Path, data: bytes) -> None:
    """Bad magic, versions, absurd lengths and value types are GGUFError (400), not crashes."""
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(GGUFError):
        read_gguf(p)


def test_shards_are_found_in_order(tmp_path: Path) -> None:
    first = tmp_path / "m-00001-of-00003.gguf"
    assert [p.name for p in shard_paths(first)] == [
        "m-00001-of-00003.gguf",
        "m-00002-of-00003.gguf",
        "m-00003-of-00003.gguf",
    ]
    assert shard_paths(tmp_path / "m.gguf") == [tmp_path / "m.gguf"]


@pytest.mark.slow
def test_gemma_matches_dockers_values(gemma_gguf: Path) -> None:
    """The real Gemma 3 270M gives what Docker's packager computes (distribution.md 4.3)."""
    info = read_gguf(gemma_gguf)
    values = info.config_values()
    assert (values["quantization"], values["parameters"], values["architecture"]) == (
        "MOSTLY_Q4_K_M",
        "268.10M",
        "gemma3",
    )
    assert values["size"] == "235.16MiB"
    assert values["context_size"] == 32768
    assert "tokenizer.ggml.tokens" not in values["gguf"]
    assert info.arch_params()["n_layers"] == 18
