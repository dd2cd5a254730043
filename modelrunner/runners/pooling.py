"""The pooling an embedding runner gets when its GGUF declares none.

llama-server's OpenAI ``/v1/embeddings`` refuses pooling ``none`` ("Pooling type 'none' is not
OAI compatible"), and a chat model's GGUF (llama, gemma, qwen…) carries no
``<arch>.pooling_type``, so with Docker's bare ``--embeddings`` no chat model can embed.  Ollama
embeds with any model; so do we, by giving such a model a pooling in embedding mode.

Why mean: a causal model's hidden state at one position sees only the tokens before it, and the
last position is shaped to predict the next token, not to summarise; the mean over every position
carries the whole input and is the usual choice for a model that was never trained to embed.
Models trained for embedding declare their pooling (BERT-style ``cls``, Qwen3-Embedding's
``last``), and that declaration is left alone.  An explicit ``--pooling`` in the model's runtime
flags, or in ``LLAMA_ARGS``, always wins.  Pure: knows the GGUF only as a string map.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEFAULT_POOLING = "mean"
# llama.cpp's enum llama_pooling_type: 0 is NONE ("declares no pooling" as much as a missing key).
_NONE_VALUES = frozenset({"", "0", "none"})


def default_pooling(gguf: Mapping[str, str] | None) -> str | None:
    """The pooling to start an embedding runner with, or None to leave it to the GGUF.

    *gguf* is the model's GGUF header as a string map (``config.gguf``, or the header itself when
    another tool's artifact carries no map); without it nothing is known, and an embedding
    model's own pooling must not be overridden on a guess.
    """
    if not gguf:
        return None
    arch = gguf.get("general.architecture") or "llama"
    declared = gguf.get(f"{arch}.pooling_type")
    if declared is not None and declared.strip().lower() not in _NONE_VALUES:
        return None
    return DEFAULT_POOLING


def names_pooling(flags: Iterable[str]) -> bool:
    """Whether a flag list sets ``--pooling`` itself (``--pooling mean`` or ``--pooling=mean``)."""
    return any(t == "--pooling" or t.startswith("--pooling=") for t in flags)


def pooling_args(pooling: str | None, *flag_lists: Iterable[str]) -> list[str]:
    """``["--pooling", pooling]`` unless *pooling* is None or a flag list already names one."""
    if pooling is None or any(names_pooling(flags) for flags in flag_lists):
        return []
    return ["--pooling", pooling]
