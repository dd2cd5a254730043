"""`modelrunner package` builds Docker's artifact tar in the CLI; checked with tarfile."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from modelrunner.cli.commands.package import build_artifact, tar_stream
from modelrunner.errors import InvalidRequest


def test_the_tar_holds_every_blob_under_its_digest_then_the_manifest(tiny_gguf, tmp_path) -> None:
    """Layers (GGUF, license, template), the config, then manifest.json, all digest-true."""
    license_ = tmp_path / "LICENSE"
    license_.write_text("MIT\n")
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    blobs, manifest = build_artifact(
        tiny_gguf, licenses=[license_], chat_template=template, context_size=256
    )
    data = b"".join(tar_stream(blobs, manifest))
    assert len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        contents = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert names[-1] == "manifest.json"
    for name, body in contents.items():
        if name != "manifest.json":
            assert name == "blobs/sha256/" + hashlib.sha256(body).hexdigest()
    doc = json.loads(contents["manifest.json"])
    kinds = [x["mediaType"] for x in doc["layers"]]
    assert kinds == [
        "application/vnd.docker.ai.gguf.v3",
        "application/vnd.docker.ai.license",
        "application/vnd.docker.ai.chat.template.jinja",
    ]
    assert contents["blobs/sha256/" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()]
    config = json.loads(contents["blobs/sha256/" + doc["config"]["digest"].removeprefix("sha256:")])
    assert config["config"]["context_size"] == 256
    assert config["config"]["architecture"] == "llama"
    assert config["rootfs"]["diff_ids"] == [x["digest"] for x in doc["layers"]]


def test_missing_files_are_refused_before_any_upload(tiny_gguf, tmp_path) -> None:
    with pytest.raises(InvalidRequest, match=r"license .* does not exist"):
        build_artifact(
            tiny_gguf, licenses=[tmp_path / "nope"], chat_template=None, context_size=None
        )
    not_gguf = tmp_path / "w.bin"
    not_gguf.write_bytes(b"x")
    with pytest.raises(InvalidRequest, match=r"not a \.gguf file"):
        build_artifact(not_gguf, licenses=[], chat_template=None, context_size=None)
