"""llama-server argv: Docker's exact-argv table, our context default, and the flag allowlist."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrunner.config import ModelSettings, RunnersConfig
from modelrunner.errors import ConfigError, InvalidRequest
from modelrunner.runners.args import (
    ALLOWED_FLAGS,
    base_args,
    build_argv,
    context_size,
    flag_key,
    validate_llama_args,
    validate_runtime_flags,
)
from modelrunner.runners.locate import parse_flags
from modelrunner.runners.model import Mode, ModelFiles
from modelrunner.runners.supervisor import Supervisor

BIN = Path("/bin/llama-server")
SOCK = Path("/run/r.sock")
LINUX = ["-ngl", "999", "--metrics"]


def files(**kw: object) -> ModelFiles:
    defaults: dict[str, object] = {
        "id": "sha256:" + "a" * 64,
        "name": "ai/m",
        "gguf_path": Path("/p"),
    }
    defaults.update(kw)
    return ModelFiles(**defaults)  # type: ignore[arg-type]


def argv(
    f: ModelFiles, mode: Mode = "completion", config: RunnersConfig | None = None
) -> list[str]:
    return build_argv(BIN, f, mode, SOCK, config or RunnersConfig(), base=LINUX)


class TestDockerArgvTable:
    """Docker's llamacpp_config_test cases, with our context default (8192 cap, not 4096)."""

    def test_completion_mode(self) -> None:
        assert argv(files(context_size=4096)) == [
            str(BIN), *LINUX, "--model", "/p", "--alias", "ai/m", "--host", str(SOCK),
            "--ctx-size", "4096", "--jinja",
        ]  # fmt: skip

    def test_embedding_mode(self) -> None:
        assert argv(files(context_size=4096), "embedding") == [
            str(BIN), *LINUX, "--model", "/p", "--alias", "ai/m", "--host", str(SOCK),
            "--embeddings", "--ctx-size", "4096", "--jinja",
        ]  # fmt: skip

    def test_reranking_mode(self) -> None:
        assert argv(files(context_size=4096), "reranking")[10:13] == [
            "--embeddings", "--reranking", "--ctx-size",
        ]  # fmt: skip

    def test_context_size_from_settings(self) -> None:
        f = files(settings=ModelSettings(context_size=1234))
        assert argv(f, "embedding")[-3:] == ["--ctx-size", "1234", "--jinja"]

    def test_settings_context_beats_the_artifact(self) -> None:
        """HEAD precedence: _configure's context first, then the model's config."""
        f = files(context_size=2096, settings=ModelSettings(context_size=1234))
        assert "1234" in argv(f)

    def test_chat_template_from_the_artifact(self) -> None:
        f = files(context_size=4096, chat_template_path=Path("/b/template.jinja"))
        assert argv(f) == [
            str(BIN), *LINUX, "--model", "/p", "--alias", "ai/m", "--host", str(SOCK),
            "--chat-template-file", "/b/template.jinja", "--ctx-size", "4096", "--jinja",
        ]  # fmt: skip

    def test_chat_template_only_in_completion_mode(self) -> None:
        f = files(chat_template_path=Path("/b/t.jinja"))
        assert "--chat-template-file" not in argv(f, "embedding")

    def test_runtime_flags_go_before_jinja(self) -> None:
        f = files(context_size=4096, settings=ModelSettings(runtime_flags=("--temp", "0.7")))
        assert argv(f, "embedding")[-5:] == ["--ctx-size", "4096", "--temp", "0.7", "--jinja"]

    def test_mmproj_replaces_jinja(self) -> None:
        f = files(context_size=4096, mmproj_path=Path("/m.mmproj"))
        out = argv(f)
        assert out[-2:] == ["--mmproj", "/m.mmproj"]
        assert "--jinja" not in out

    def test_llama_args_are_appended_not_replacing_the_defaults(self) -> None:
        cfg = RunnersConfig(llama_args=("--verbose",))
        out = argv(files(), config=cfg)
        assert out[-2:] == ["--jinja", "--verbose"]
        assert out[1:4] == LINUX


class TestBaseArgs:
    def test_linux_x86(self) -> None:
        assert base_args(system="linux", machine="x86_64", cpu_count=8) == LINUX

    def test_macos_arm64_adds_no_mmap_and_threads(self) -> None:
        assert base_args(system="darwin", machine="arm64", cpu_count=10) == [
            *LINUX, "--no-mmap", "--threads", "5",
        ]  # fmt: skip

    def test_macos_with_a_llama_server_that_dropped_no_mmap_uses_load_mode_none(self) -> None:
        """Current llama.cpp refuses --no-mmap ("invalid argument"); its --load-mode replaces it."""
        new = parse_flags(
            "-lm,   --load-mode MODE   model loading mode\n-a,    --alias STRING  x\n"
        )
        assert new == {"-lm", "--load-mode", "-a", "--alias"}
        assert base_args(system="darwin", machine="arm64", cpu_count=2, supported=new)[3:5] == [
            "--load-mode", "none",
        ]  # fmt: skip
        old = parse_flags("--mmap, --no-mmap    whether to memory-map model\n")
        assert "--no-mmap" in base_args(system="darwin", supported=old)

    def test_arm64_threads_at_least_two(self) -> None:
        assert base_args(system="linux", machine="aarch64", cpu_count=2)[-2:] == ["--threads", "2"]


class TestContextSize:
    def test_trained_context_is_capped_by_the_default(self) -> None:
        """A 270M model trained on 32768 runs at 8192, not Docker's full trained context."""
        assert context_size(files(trained_context=32768), RunnersConfig()) == 8192

    def test_small_trained_context_is_kept(self) -> None:
        assert context_size(files(trained_context=512), RunnersConfig()) == 512

    def test_artifact_context_beats_trained(self) -> None:
        assert context_size(files(context_size=2048, trained_context=512), RunnersConfig()) == 2048

    def test_minus_one_is_allowed_and_zero_ignored(self) -> None:
        cfg = RunnersConfig(default_context_size=100)
        assert context_size(files(settings=ModelSettings(context_size=-1)), cfg) == -1
        assert context_size(files(settings=ModelSettings(context_size=0)), cfg) == 100

    def test_unknown_everything_uses_the_default(self) -> None:
        assert context_size(files(), RunnersConfig(default_context_size=4096)) == 4096


class TestRuntimeFlags:
    @pytest.mark.parametrize(
        "flags",
        [
            ["--threads", "4"],
            ["-t", "4"],
            ["--threads=4"],
            ["--temp", "0.7", "--top-k", "40"],
            ["--seed", "-1"],
            ["--seed=-1"],
            ["-ngl", "0", "--no-mmap", "--flash-attn", "on"],
            ["--cache-type-k", "q8_0", "--cache-type-v", "q8_0"],
            ["--n-predict", "10", "--jinja", "--min-p", "0.05", "--presence-penalty", "1"],
        ],
    )
    def test_allowed(self, flags: list[str]) -> None:
        assert validate_runtime_flags(flags) == tuple(flags)

    @pytest.mark.parametrize(
        ("flags", "named"),
        [
            (["--log-file", "x"], "--log-file"),
            (["--model", "m.gguf"], "--model"),
            (["--host", "0.0.0.0"], "--host"),
            (["--port", "8080"], "--port"),
            (["--chat-template-file", "t"], "--chat-template-file"),
            (["--mmproj", "p"], "--mmproj"),
            (["--lora", "a"], "--lora"),
            (["--slot-save-path", "s"], "--slot-save-path"),
            (["--threads", "4", "--bogus"], "--bogus"),
        ],
    )
    def test_not_allowed_names_the_flag(self, flags: list[str], named: str) -> None:
        with pytest.raises(InvalidRequest, match=f"'{named}' is not allowed"):
            validate_runtime_flags(flags)

    @pytest.mark.parametrize("flags", [["--grammar", "/etc/passwd"], ["--api-key", "a\\b"]])
    def test_paths_are_rejected_even_as_values(self, flags: list[str]) -> None:
        with pytest.raises(InvalidRequest, match="paths are not allowed"):
            validate_runtime_flags(flags)

    def test_a_flag_smuggled_as_a_value_is_rejected(self) -> None:
        with pytest.raises(InvalidRequest, match="bad value"):
            validate_runtime_flags(["--temp=--model"])

    def test_bad_flags_in_settings_fail_the_argv(self) -> None:
        with pytest.raises(InvalidRequest, match="--log-file"):
            argv(files(settings=ModelSettings(runtime_flags=("--log-file", "x"))))

    def test_flag_key(self) -> None:
        assert [flag_key(t) for t in ["--threads=4", "-t", "4", "-1", "", "-x=-2"]] == [
            "--threads", "-t", None, None, None, "-x",
        ]  # fmt: skip

    def test_no_path_flag_is_in_the_allowlist(self) -> None:
        for flag in ("--model", "--host", "--log-file", "--lora", "--mmproj", "--model-draft"):
            assert flag not in ALLOWED_FLAGS


class TestLlamaArgs:
    @pytest.mark.parametrize("reserved", ["--model", "-m", "--host", "--port", "--embeddings"])
    def test_cannot_override_what_the_supervisor_controls(self, reserved: str) -> None:
        with pytest.raises(ConfigError, match=f"cannot override {reserved}"):
            validate_llama_args(["--verbose", reserved, "x"])

    def test_supervisor_refuses_a_bad_llama_args_at_construction(self) -> None:
        async def resolve(model_id: str) -> ModelFiles:
            raise AssertionError

        with pytest.raises(ConfigError, match="LLAMA_ARGS"):
            Supervisor(RunnersConfig(llama_args=("--host", "h")), resolve)


def test_socket_path_must_end_in_sock() -> None:
    with pytest.raises(ValueError, match=r"\.sock"):
        build_argv(BIN, files(), "completion", Path("/run/r"), RunnersConfig(), base=LINUX)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="unsupported backend mode"):
        build_argv(BIN, files(), "image", SOCK, RunnersConfig(), base=LINUX)  # type: ignore[arg-type]
