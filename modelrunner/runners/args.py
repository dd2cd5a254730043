"""llama-server's argv, as Docker Model Runner's llama.cpp backend builds it, and flag checks.

Pure: the platform facts come in as arguments so the exact-argv table can be tested anywhere.
Order (Docker's ``GetArgs``): base args, ``--model`` (plus our ``--alias``: the model's name in
answers), ``--host``, chat template, mode flags, ``--ctx-size``, runtime flags, then ``--mmproj P``
or ``--jinja``; ``LLAMA_ARGS`` are appended last (Docker replaces the base args with them, which
silently drops ``--metrics``).
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from modelrunner.config import RunnersConfig
from modelrunner.errors import ConfigError, InvalidRequest
from modelrunner.runners.model import Mode, ModelFiles
from modelrunner.runners.pooling import pooling_args

MODE_FLAGS: dict[Mode, tuple[str, ...]] = {
    "completion": (),
    "embedding": ("--embeddings",),
    "reranking": ("--embeddings", "--reranking"),
}

# Docker's LlamaCppAllowedFlags: flags a client may set through _configure.  Nothing that takes a
# path (--model, --host, --log-file, --chat-template-file, --mmproj, --lora…) is here.
_ALLOWED = """
    -t --threads -tb --threads-batch -C --cpu-mask -Cr --cpu-range --cpu-strict --prio --poll
    -Cb --cpu-mask-batch -Crb --cpu-range-batch --cpu-strict-batch --prio-batch --poll-batch
    -c --ctx-size -n --predict --n-predict --keep
    -b --batch-size -ub --ubatch-size --swa-full -fa --flash-attn --perf --no-perf
    --samplers -s --seed --temp --temperature --top-k --top-p --min-p --top-nsigma
    --xtc-probability --xtc-threshold --typical --repeat-last-n --repeat-penalty
    --presence-penalty --frequency-penalty --dry-multiplier --dry-base --dry-allowed-length
    --dry-penalty-last-n --mirostat --mirostat-lr --mirostat-ent --ignore-eos --dynatemp-range
    --dynatemp-exp
    -dev --device -ngl --gpu-layers --n-gpu-layers -sm --split-mode -ts --tensor-split -mg
    --main-gpu -fit --fit -fitt --fit-target -fitc --fit-ctx
    -lm --load-mode -kvo --kv-offload -nkvo --no-kv-offload --repack -nr --no-repack --no-host -ctk
    --cache-type-k -ctv --cache-type-v --mlock --mmap --no-mmap -dio --direct-io -ndio
    --no-direct-io -cram --cache-ram -kvu --kv-unified --context-shift --no-context-shift
    --rope-scaling --rope-scale --rope-freq-base --rope-freq-scale --yarn-orig-ctx
    --yarn-ext-factor --yarn-attn-factor --yarn-beta-slow --yarn-beta-fast
    -np --parallel -cb --cont-batching -nocb --no-cont-batching --warmup --no-warmup -to
    --timeout --threads-http --cache-prompt --no-cache-prompt --cache-reuse --sleep-idle-seconds
    --mmproj-auto --no-mmproj --no-mmproj-auto --mmproj-offload --no-mmproj-offload
    --image-min-tokens --image-max-tokens --spm-infill
    --draft --draft-n --draft-max --draft-min --draft-n-min --draft-p-min -cd --ctx-size-draft
    -devd --device-draft -ngld --gpu-layers-draft --n-gpu-layers-draft -td --threads-draft -tbd
    --threads-batch-draft
    --lora-init-without-apply --control-vector-layer-range
    --grammar -j --json-schema -bs --backend-sampling
    --chat-template --chat-template-kwargs --jinja --no-jinja --pooling --reasoning-format
    --reasoning-budget --prefill-assistant --no-prefill-assistant
    --api-prefix --webui --no-webui --webui-config --api-key --metrics --no-metrics --props
    --slots --no-slots
    --embedding --embeddings --rerank --reranking -sps --slot-prompt-similarity
    -cmoe --cpu-moe -ncmoe --n-cpu-moe --check-tensors --op-offload --no-op-offload
    -v --verbose
"""
ALLOWED_FLAGS: frozenset[str] = frozenset(_ALLOWED.split())

# LLAMA_ARGS may not take over what the supervisor controls (Docker's list, plus the port).
RESERVED_FLAGS = frozenset({"-m", "--model", "--host", "--port", "--embeddings", "--mmproj"})

_NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d+)?")


def flag_key(token: str) -> str | None:
    """``--threads=4`` -> ``--threads``; values (``4``, ``-1``) -> None."""
    if not token.startswith("-") or _NEGATIVE_NUMBER.fullmatch(token):
        return None
    return token.split("=", 1)[0]


def validate_runtime_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Check flags against Docker's allowlist and no-paths rule; InvalidRequest names the flag."""
    flags = tuple(flags)
    for token in flags:
        key = flag_key(token)
        if key is not None:
            if key not in ALLOWED_FLAGS:
                raise InvalidRequest(
                    f"runtime flag {key!r} is not allowed for backend 'llama.cpp' "
                    "(only llama-server options without paths may be set)"
                )
            _, eq, value = token.partition("=")
            if eq and value.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(value):
                raise InvalidRequest(f"invalid runtime flag {token!r}: bad value {value!r}")
        if "/" in token or "\\" in token:
            raise InvalidRequest(f"invalid runtime flag {token!r}: paths are not allowed")
    return flags


def validate_llama_args(args: Iterable[str]) -> tuple[str, ...]:
    """LLAMA_ARGS may add options but not override the ones the supervisor controls."""
    args = tuple(args)
    for token in args:
        key = flag_key(token)
        if key in RESERVED_FLAGS:
            raise ConfigError(
                f"invalid LLAMA_ARGS: LLAMA_ARGS cannot override {key}, "
                "which is controlled by the model runner"
            )
    return args


def context_size(files: ModelFiles, config: RunnersConfig) -> int:
    """Model setting (> 0 or -1), else the artifact's configured one, else min(trained, default)."""
    configured = files.settings.context_size
    if configured is not None and (configured > 0 or configured == -1):
        return configured
    if files.context_size is not None and files.context_size > 0:
        return files.context_size
    if files.trained_context is not None and files.trained_context > 0:
        return min(files.trained_context, config.default_context_size)
    return config.default_context_size


def base_args(
    *,
    system: str | None = None,
    machine: str | None = None,
    cpu_count: int | None = None,
    supported: frozenset[str] | None = None,
) -> list[str]:
    """``-ngl 999 --metrics``, no mmap on macOS, ``--threads max(2, cpus/2)`` on arm64.

    *supported* is the binary's own flag list (``--help``): current llama.cpp dropped
    ``--no-mmap`` for ``--load-mode none`` and refuses the old flag, the wheel's only has the old.
    """
    system = sys.platform if system is None else system
    machine = platform.machine() if machine is None else machine
    cpus = (os.cpu_count() or 2) if cpu_count is None else cpu_count
    args = ["-ngl", "999", "--metrics"]
    if system == "darwin":
        if supported is None or "--no-mmap" in supported:
            args.append("--no-mmap")
        elif "--load-mode" in supported:
            args += ["--load-mode", "none"]
    if machine.lower() in ("arm64", "aarch64"):
        args += ["--threads", str(max(2, cpus // 2))]
    return args


def build_argv(
    binary: Path,
    files: ModelFiles,
    mode: Mode,
    socket_path: Path,
    config: RunnersConfig,
    *,
    base: Sequence[str] | None = None,
    supported: frozenset[str] | None = None,
) -> list[str]:
    """The full argv of one runner; raises InvalidRequest for a flag outside the allowlist."""
    if not str(socket_path).endswith(".sock"):
        raise ValueError(
            f"llama-server binds a Unix socket only for a path ending in .sock: {socket_path}"
        )
    if mode not in MODE_FLAGS:
        raise InvalidRequest(f"unsupported backend mode {mode!r} (one of {', '.join(MODE_FLAGS)})")
    if files.gguf_path is None:
        raise InvalidRequest(f"model {files.name!r} has no GGUF file for llama-server")
    argv = [str(binary), *(base_args(supported=supported) if base is None else base)]
    # --alias: llama-server names the model in every answer ("model": …) after it; without it a
    # client would read the blob's path in the store.  It accepts any model name in requests.
    argv += ["--model", str(files.gguf_path), "--alias", files.name, "--host", str(socket_path)]
    if mode == "completion" and files.chat_template_path is not None:
        argv += ["--chat-template-file", str(files.chat_template_path)]
    argv += MODE_FLAGS[mode]
    if mode == "embedding":
        argv += pooling_args(files.pooling, files.settings.runtime_flags, config.llama_args)
    argv += ["--ctx-size", str(context_size(files, config))]
    argv += validate_runtime_flags(files.settings.runtime_flags)
    argv += ["--mmproj", str(files.mmproj_path)] if files.mmproj_path is not None else ["--jinja"]
    argv += validate_llama_args(config.llama_args)
    return argv
