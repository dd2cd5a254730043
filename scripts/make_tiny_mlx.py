#!/usr/bin/env python3
"""Write a tiny random-weight Llama in MLX's layout that ``mlx_lm.server`` loads in a second.

For the MLX backend's tests, as ``make_tiny_gguf.py`` is for llama.cpp's: a directory with
``config.json``, ``model.safetensors`` (about 93 k parameters, written by ``mlx_lm.models.llama``
itself, so the tensor names are exactly MLX's), a byte-level BPE ``tokenizer.json`` trained with
the ``tokenizers`` package on a few sentences, and ``tokenizer_config.json`` with a chat template.
It answers with gibberish.  The same --seed gives the same weights; another gives another model
(another digest once packaged).

Needs mlx (``mlx[cpu]`` on Linux) and mlx-lm, which bring ``tokenizers``.  Usage:
    python scripts/make_tiny_mlx.py OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SENTENCES = [
    "hello world this is a tiny model",
    "the quick brown fox jumps over the lazy dog",
    "a model runner serves models to the people who ask",
    "it was the best of times and it was the worst of times",
]
SPECIAL = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _tokenizer(out: Path) -> int:
    """Train and save a byte-level BPE; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))  # noqa: S106 (a token, not a password)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 50, trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return int(tok.get_vocab_size())


def build(out: Path, *, seed: int = 0) -> Path:
    """Write the model into *out* (created); returns *out*."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    out.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(out)
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "max_position_embeddings": 2048,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = build(args.out, seed=args.seed)
    print(out)


if __name__ == "__main__":
    main()
