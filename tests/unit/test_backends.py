"""The backend seam and the safetensors artifact, as plain data: which backend runs what, MLX's
flags and install hint, Docker's file classes, and bundle paths that must stay inside the model."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import pytest

from modelrunner.config import ModelSettings
from modelrunner.distribution import mediatypes as mt
from modelrunner.distribution.artifact import build_config, build_manifest, layer, parse_manifest
from modelrunner.distribution.bundle import model_dir, safe_relpath
from modelrunner.distribution.layout import Layout
from modelrunner.distribution.safetensors import classify, config_values, scan_dir
from modelrunner.errors import InvalidRequest, StoreError
from modelrunner.runners.backend import EngineStatus, default_backends
from modelrunner.runners.mlxlm import install_hint, validate_flags
from modelrunner.runners.model import ModelFiles


def files(fmt: str, **settings: object) -> ModelFiles:
    return ModelFiles(id="sha256:x", name="me/m", format=fmt, settings=ModelSettings(**settings))  # type: ignore[arg-type]


class TestWhichBackend:
    def test_the_format_picks_the_backend(self) -> None:
        backends = default_backends({})
        assert backends.for_files(files("gguf"), "embedding").name == "llama.cpp"
        assert backends.for_files(files("safetensors"), "completion").name == "mlx"

    def test_a_mode_the_backend_lacks_is_a_400_naming_it(self) -> None:
        with pytest.raises(InvalidRequest, match="mlx backend, which has no embedding mode"):
            default_backends({}).for_files(files("safetensors"), "embedding")

    def test_a_format_nobody_runs_is_a_400(self) -> None:
        with pytest.raises(InvalidRequest, match="dduf format, which no backend here runs"):
            default_backends({}).for_files(files("dduf"), "completion")

    def test_status_words_are_dockers(self) -> None:
        assert EngineStatus("mlx", True, "0.32.4", "mlx-lm 0.32.2").text == (
            "Running: mlx 0.32.4 (mlx-lm 0.32.2)"
        )
        assert EngineStatus("mlx", False, detail="x").text == "Not Installed: x"
        assert EngineStatus("llama.cpp", False, detail="y", broken=True).text == "Error: y"


class TestMlxFlags:
    def test_sampling_flags_pass_and_paths_or_listeners_do_not(self) -> None:
        assert validate_flags(("--temp", "0.5", "--max-tokens=64")) == (
            "--temp",
            "0.5",
            "--max-tokens=64",
        )
        for bad in ("--host", "--port", "--adapter-path", "--trust-remote-code", "--model"):
            with pytest.raises(InvalidRequest, match="not allowed for backend 'mlx'"):
                validate_flags((bad,))
        with pytest.raises(InvalidRequest, match="paths are not allowed"):
            validate_flags(("--chat-template-args", "/etc/passwd"))

    def test_the_install_hint_names_the_extra_and_the_platform_package(self) -> None:
        assert "pip install 'modelrunner[mlx]'" in install_hint(Path("/py"), "linux")
        assert "'mlx[cpu]' mlx-lm" in install_hint(Path("/py"), "linux")
        assert "'mlx' mlx-lm" in install_hint(Path("/py"), "darwin")


def _safetensors(path: Path, metadata: dict[str, str]) -> None:
    header = {
        "__metadata__": metadata,
        "w": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
        "b": {"dtype": "F32", "shape": [8], "data_offsets": [128, 160]},
    }
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 160)


class TestDockerLayout:
    def test_files_are_classified_as_dockers_packager_does(self) -> None:
        assert classify("model-00001-of-00002.safetensors") == mt.SAFETENSORS
        assert classify("config.json") == mt.MODEL_FILE
        assert classify("tokenizer.model") == mt.MODEL_FILE
        assert classify("chat_template.jinja") == mt.CHAT_TEMPLATE
        assert classify("LICENSE") == mt.LICENSE

    def test_a_directory_gives_dockers_config_values(self, tmp_path: Path) -> None:
        _safetensors(tmp_path / "model.safetensors", {"format": "mlx"})
        (tmp_path / "config.json").write_text('{"max_position_embeddings": 2048}')
        (tmp_path / ".hidden").write_text("no")
        found = scan_dir(tmp_path)
        assert [f.relpath for f in found] == ["config.json", "model.safetensors"]
        values = config_values(found)
        assert values["format"] == "safetensors"
        assert values["quantization"] == "F32"
        assert values["parameters"] == "40"
        assert values["context_size"] == 2048
        assert values["safetensors"] == {"format": "mlx", "tensor_count": "2"}

    def test_a_directory_without_weights_or_config_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "config.json").write_text("{}")
        with pytest.raises(InvalidRequest, match=r"no \.safetensors file"):
            scan_dir(tmp_path)
        (tmp_path / "config.json").unlink()
        _safetensors(tmp_path / "model.safetensors", {})
        with pytest.raises(InvalidRequest, match=r"no config\.json"):
            scan_dir(tmp_path)

    @pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "", "a\\b", "x\0y"])
    def test_paths_that_leave_the_model_are_refused(self, bad: str) -> None:
        with pytest.raises(StoreError, match="invalid file path"):
            safe_relpath(bad)


class TestBundle:
    def _store(self, tmp_path: Path, blobs: dict[str, bytes]) -> Layout:
        layout = Layout(tmp_path / "store")
        layout.create()
        for digest, data in blobs.items():
            layout.blob(digest).write_bytes(data)
        return layout

    def test_v02_layers_become_the_directory_by_their_paths(self, tmp_path: Path) -> None:
        weights, cfg = b"w" * 10, b'{"model_type": "llama"}'
        dw, dc = "sha256:" + "a" * 64, "sha256:" + "b" * 64
        layout = self._store(tmp_path, {dw: weights, dc: cfg})
        layers = [
            layer(mt.SAFETENSORS, dw, len(weights), "sub/model.safetensors"),
            layer(mt.MODEL_FILE, dc, len(cfg), "config.json"),
        ]
        config = build_config({"format": "safetensors"}, [dw, dc])
        raw = build_manifest("sha256:" + "c" * 64, len(config), layers, mt.CONFIG_V02)
        out = model_dir(layout, "sha256:" + "d" * 64, parse_manifest(raw))
        assert (out / "sub" / "model.safetensors").read_bytes() == weights
        assert (out / "config.json").read_bytes() == cfg

    def test_a_v01_config_archive_is_extracted_and_links_are_skipped(self, tmp_path: Path) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b'{"model_type": "llama"}'
            info = tarfile.TarInfo("config.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("evil")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        dw, dt = "sha256:" + "a" * 64, "sha256:" + "e" * 64
        layout = self._store(tmp_path, {dw: b"w", dt: buf.getvalue()})
        layers = [
            {"mediaType": mt.SAFETENSORS, "digest": dw, "size": 1},
            {"mediaType": mt.VLLM_CONFIG_TAR, "digest": dt, "size": len(buf.getvalue())},
        ]
        raw = build_manifest("sha256:" + "c" * 64, 2, layers)
        out = model_dir(layout, "sha256:" + "f" * 64, parse_manifest(raw))
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    def test_a_traversing_annotation_fails_the_build(self, tmp_path: Path) -> None:
        dw = "sha256:" + "a" * 64
        layout = self._store(tmp_path, {dw: b"w"})
        raw = build_manifest(
            "sha256:" + "c" * 64, 2, [layer(mt.SAFETENSORS, dw, 1, "../../outside")], mt.CONFIG_V02
        )
        with pytest.raises(StoreError, match="leaves the model"):
            model_dir(layout, "sha256:" + "9" * 64, parse_manifest(raw))
        assert not (tmp_path / "outside").exists()
