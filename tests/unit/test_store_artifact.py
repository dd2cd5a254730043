"""Docker's artifact bytes: written as Docker writes them, read leniently."""

from __future__ import annotations

import json

import pytest

from modelrunner.distribution import UnsupportedModel
from modelrunner.distribution import mediatypes as mt
from modelrunner.distribution.artifact import (
    build_config,
    build_manifest,
    config_object,
    go_json,
    layer,
    parse_manifest,
    parse_time,
    rfc3339nano,
)
from modelrunner.errors import InvalidReference, StoreError

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def test_go_json_is_compact_and_escapes_html() -> None:
    assert (
        go_json({"t": "<|im_start|>&", "n": 1}) == b'{"t":"\\u003c|im_start|\\u003e\\u0026","n":1}'
    )
    assert go_json({"x": "é"}) == '{"x":"é"}'.encode()


def test_rfc3339nano_trims_like_go() -> None:
    assert rfc3339nano(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339nano(1_700_000_000_100_000_000) == "2023-11-14T22:13:20.1Z"
    assert rfc3339nano(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert parse_time("2023-11-14T22:13:20.123456789Z") == 1_700_000_000
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000
    assert parse_time("garbage") == 0
    assert parse_time(None) == 0


def test_manifest_and_config_shape() -> None:
    desc = layer(mt.GGUF, D1, 10, "model.gguf", 1_700_000_000_000_000_000)
    assert list(desc) == ["mediaType", "size", "digest", "annotations"]
    assert list(desc["annotations"]) == [
        mt.ANNOTATION_UNTESTED,
        mt.ANNOTATION_FILE_METADATA,
        mt.ANNOTATION_FILEPATH,
    ]
    assert json.loads(desc["annotations"][mt.ANNOTATION_FILE_METADATA]) == {
        "name": "model.gguf",
        "mode": 420,
        "uid": 0,
        "gid": 0,
        "size": 10,
        "mtime": "2023-11-14T22:13:20Z",
        "typeflag": 0,
    }
    cfg = build_config({"format": "gguf"}, [D1], 1_700_000_000_000_000_000)
    assert cfg == (
        b'{"config":{"format":"gguf"},"descriptor":{"created":"2023-11-14T22:13:20Z"},'
        b'"rootfs":{"type":"rootfs","diff_ids":["' + D1.encode() + b'"]}}'
    )
    raw = build_manifest(D2, 99, [desc])
    doc = json.loads(raw)
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
    parsed = parse_manifest(raw)
    assert parsed.files == [D1, D2]
    assert parsed.layers[0].filename == "model.gguf"


def manifest(config_type: str = mt.CONFIG_V01, **extra: object) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": config_type, "size": 2, "digest": D2},
        "layers": [{"mediaType": mt.MMPROJ_SPEC, "size": 1, "digest": D1}],
        **extra,
    }
    return json.dumps(doc).encode()


@pytest.mark.parametrize("config_type", [mt.CONFIG_V01, mt.CONFIG_V02, mt.CONFIG_CNCF])
def test_reads_every_docker_config_type(config_type: str) -> None:
    parsed = parse_manifest(manifest(config_type, annotations={"x": "y"}, unknown=1))
    assert parsed.of_type(*mt.MMPROJ_TYPES)[0].digest == D1


def test_refuses_what_is_not_a_model() -> None:
    with pytest.raises(UnsupportedModel, match="config media type"):
        parse_manifest(manifest("application/vnd.oci.image.config.v1+json"))
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    with pytest.raises(UnsupportedModel, match="not a model artifact"):
        parse_manifest(json.dumps(index).encode())
    bad = json.loads(manifest())
    bad["layers"][0]["digest"] = "sha256:../../etc/passwd"
    with pytest.raises(InvalidReference):
        parse_manifest(json.dumps(bad).encode())
    with pytest.raises(StoreError):
        parse_manifest(b"not json")


def test_config_object_reads_docker_and_cncf_configs() -> None:
    docker = (
        b'{"config":{"format":"gguf","size":"1KiB"},'
        b'"descriptor":{"created":"2023-11-14T22:13:20Z"}}'
    )
    assert config_object(docker) == ({"format": "gguf", "size": "1KiB"}, 1_700_000_000)
    cncf = json.dumps(
        {
            "descriptor": {"createdAt": "2023-11-14T22:13:20Z"},
            "config": {"format": "gguf", "paramSize": "8B", "architecture": "llama"},
            "modelfs": {"type": "layers", "diffIds": []},
        }
    ).encode()
    assert config_object(cncf) == (
        {"format": "gguf", "parameters": "8B", "architecture": "llama"},
        1_700_000_000,
    )
    assert config_object(b"[]") == ({}, 0)
