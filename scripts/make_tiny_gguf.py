#!/usr/bin/env python3
"""Write a tiny random-weight llama GGUF that llama-server loads in milliseconds.

For fast tests and benchmarks of the store, supervisor and proxy: ~0.5 MB, answers chat and
completions with gibberish built from lower-case words (never byte or control tokens, so the text is
valid UTF-8).  Deterministic: the same arguments give a byte-identical file; a different --seed or
--name gives a distinct model (a distinct digest).  --pad-mib appends an extra tensor to reach a
given size (benchmarks of pulls and pushes).

Needs numpy and gguf (test extras).  Usage:
    python scripts/make_tiny_gguf.py OUT.gguf [--seed N] [--name NAME] [--ctx 512] [--pad-mib N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "his",
    "they",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "or",
    "had",
    "by",
    "hot",
    "word",
    "but",
    "what",
    "some",
    "we",
    "can",
    "out",
    "other",
    "were",
    "all",
    "there",
    "when",
    "up",
    "use",
    "your",
    "how",
    "said",
    "an",
    "each",
    "she",
    "which",
    "do",
    "their",
    "time",
    "if",
    "will",
    "way",
    "about",
    "many",
    "then",
    "them",
    "write",
    "would",
    "like",
    "so",
    "these",
    "her",
    "long",
    "make",
    "thing",
    "see",
    "him",
    "two",
    "has",
    "look",
    "more",
    "day",
    "could",
    "go",
    "come",
    "did",
    "number",
    "sound",
    "no",
    "most",
    "people",
    "my",
    "over",
    "know",
    "water",
    "than",
    "call",
    "first",
    "who",
    "may",
    "down",
    "side",
    "been",
    "now",
    "find",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build(
    path: str | Path,
    *,
    seed: int = 0,
    name: str = "tiny-llama",
    ctx: int = 512,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_ff: int = 128,
    pad_mib: int = 0,
) -> Path:
    """Write the model to *path* and return it."""
    rng = np.random.default_rng(seed)
    pieces = list(dict.fromkeys([chr(c) for c in range(97, 123)] + ["\u2581" + w for w in WORDS]))
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [p.encode() for p in pieces]
    n_vocab, n_special = len(tokens), 3 + 256
    types = (
        [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        + [gguf.TokenType.BYTE] * 256
        + [gguf.TokenType.NORMAL] * len(pieces)
    )
    scores = [0.0] * n_special + [-float(i) for i in range(len(pieces))]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def rnd(rows: int, cols: int, scale: float = 0.02) -> np.ndarray:
        # ggml dims are (cols, rows); numpy arrays are (rows, cols)
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    w.add_tensor("token_embd.weight", rnd(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    out = rnd(n_vocab, n_embd, scale=0.5)
    out[:n_special] = 0  # specials and bytes never win: readable text, no early end of stream
    w.add_tensor("output.weight", out)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{t}.weight", rnd(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rnd(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rnd(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rnd(n_embd, n_ff))
    if pad_mib > 0:
        # An unused tensor: llama.cpp ignores tensors it does not know only with a warning, so
        # padded models are for transfer benchmarks, not for loading.
        w.add_tensor("pad.weight", rng.standard_normal((pad_mib * 1024, 256)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="tiny-llama")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embd", type=int, default=64)
    ap.add_argument("--pad-mib", type=int, default=0)
    a = ap.parse_args()
    build(
        a.out,
        seed=a.seed,
        name=a.name,
        ctx=a.ctx,
        n_layer=a.layers,
        n_embd=a.embd,
        pad_mib=a.pad_mib,
    )


if __name__ == "__main__":
    main()
