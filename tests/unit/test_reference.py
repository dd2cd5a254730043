"""References normalised as Docker does, and refused when they could reach a path or URL."""

from __future__ import annotations

import pytest

from modelrunner.distribution.reference import parse_reference
from modelrunner.errors import InvalidReference

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "store_name", "display"),
    [
        ("ai/smollm2", "docker.io/ai/smollm2:latest", "ai/smollm2:latest"),
        ("smollm2", "docker.io/ai/smollm2:latest", "ai/smollm2:latest"),
        ("gemma3:v1", "docker.io/ai/gemma3:v1", "ai/gemma3:v1"),
        ("model:", "docker.io/ai/model:latest", "ai/model:latest"),
        ("myorg/model", "docker.io/myorg/model:latest", "myorg/model:latest"),
        ("docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:latest", "ai/smollm2:latest"),
        ("index.docker.io/ai/x:t", "docker.io/ai/x:t", "ai/x:t"),
        ("localhost:5000/m", "localhost:5000/m:latest", "localhost:5000/m:latest"),
        ("127.0.0.1:5000/a/b:Q4_K_M", "127.0.0.1:5000/a/b:Q4_K_M", "127.0.0.1:5000/a/b:Q4_K_M"),
        ("registry.example.com/model", "registry.example.com/model:latest", None),
        ("  ai/spaced  ", "docker.io/ai/spaced:latest", None),
        ("hf.co/org/model:Q4_K_M", "huggingface.co/org/model:Q4_K_M", None),
    ],
)
def test_normalises_like_docker(text: str, store_name: str, display: str | None) -> None:
    """Bare names get ai/ and docker.io; the tag defaults to latest and keeps its case."""
    ref = parse_reference(text)
    assert ref.store_name == store_name
    if display is not None:
        assert ref.display == display


def test_digest_reference_pins_the_manifest() -> None:
    ref = parse_reference(f"ai/x@sha256:{HEX}")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "docker.io",
        "ai/x",
        None,
        f"sha256:{HEX}",
    )
    assert ref.reference == f"sha256:{HEX}"
    assert ref.store_name == f"docker.io/ai/x@sha256:{HEX}"


def test_docker_hub_parts() -> None:
    ref = parse_reference("ai/smollm2:360M")
    assert (ref.registry, ref.repository, ref.tag) == ("docker.io", "ai/smollm2", "360M")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("ai/../etc/passwd", "component"),
        ("../x", "registry"),
        ("ai/My-Model", "lowercase"),
        ("MyModel", "lowercase"),
        ("ai/x@sha256:1234", "digest"),
        ("ai/x@md5:" + HEX, "digest"),
        (f"ai/x@sha256:{'A' * 64}", "digest"),
        ("ai/x\x00y", "control"),
        ("ai/x y", "whitespace"),
        ("ai/" + "x" * 600, "longer"),
        ("ai/" + "x" * 300, "too long"),
        ("ai/x:" + "t" * 200, "tag"),
        ("ai/x:-bad", "tag"),
        ("ai//x", "component"),
        ("ai/x/", "component"),
    ],
)
def test_refuses_invalid_references(text: str, why: str) -> None:
    """Traversal, uppercase repositories, bad digests, NUL and absurd lengths are refused."""
    with pytest.raises(InvalidReference, match=why):
        parse_reference(text)
