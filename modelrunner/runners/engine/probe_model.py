"""A tiny llama GGUF with quantized weights (Q4_K and Q8_0), written with the standard library.

The probe loads it to make a llama-server run the kernels that need the newer instruction sets
(Q4_K and Q8_0 dot products use AVX2/AVX-512/VNNI on x86, dotprod/i8mm on arm64): an F32 model
would pass on a CPU where real models die.  ~0.4 MB, deterministic, loads in milliseconds.
Pure: returns bytes; the caller writes them.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

N_EMBD = 256  # Q4_K packs rows in blocks of 256
N_FF = 256
N_HEAD = 4
N_CTX = 128

# ggml type ids and (block elements, block bytes)
F32, Q8_0, Q4_K = 0, 8, 12
_BLOCKS = {F32: (1, 4), Q8_0: (32, 34), Q4_K: (256, 144)}
_FILE_TYPE_Q4_K_M = 15

# GGUF value types
_U32, _F32, _BOOL, _STR, _ARR = 4, 6, 7, 8, 9


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, kind: int, value: object) -> bytes:
    out = _s(key) + struct.pack("<I", kind)
    if kind == _U32:
        return out + struct.pack("<I", value)
    if kind == _F32:
        return out + struct.pack("<f", value)
    if kind == _BOOL:
        return out + struct.pack("<?", value)
    if kind == _STR:
        return out + _s(str(value))
    raise ValueError(kind)


def _arr(key: str, kind: int, items: Sequence[object]) -> bytes:
    out = _s(key) + struct.pack("<IIQ", _ARR, kind, len(items))
    for item in items:
        if kind == _STR:
            out += _s(str(item))
        elif kind == _F32:
            out += struct.pack("<f", item)
        else:
            out += struct.pack("<i", item)
    return out


def _quantized(rng: random.Random, kind: int, rows: int, cols: int) -> bytes:
    """Random blocks with small, finite scales (random bits in a scale could be inf or NaN)."""
    per = _BLOCKS[kind][0]
    n_blocks = rows * cols // per
    scale = struct.pack("<e", 0.0005)
    if kind == Q4_K:  # d, dmin, 12 bytes of 6-bit scales, 128 bytes of nibbles
        return b"".join(scale + scale + rng.randbytes(140) for _ in range(n_blocks))
    if kind == Q8_0:  # d, 32 int8
        return b"".join(scale + rng.randbytes(32) for _ in range(n_blocks))
    return struct.pack(f"<{rows * cols}f", *(1.0 for _ in range(rows * cols)))


def build(seed: int = 0) -> bytes:
    """The whole GGUF file."""
    rng = random.Random(seed)  # noqa: S311 (weights, not secrets)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += ["\u2581" + chr(c) for c in range(97, 123)]
    types = [2, 3, 3] + [6] * 256 + [1] * 26  # unknown, control, byte, normal
    kvs = [
        _kv("general.architecture", _STR, "llama"),
        _kv("general.name", _STR, "modelrunner-probe"),
        _kv("general.file_type", _U32, _FILE_TYPE_Q4_K_M),
        _kv("llama.context_length", _U32, N_CTX),
        _kv("llama.embedding_length", _U32, N_EMBD),
        _kv("llama.block_count", _U32, 1),
        _kv("llama.feed_forward_length", _U32, N_FF),
        _kv("llama.attention.head_count", _U32, N_HEAD),
        _kv("llama.attention.head_count_kv", _U32, N_HEAD),
        _kv("llama.rope.dimension_count", _U32, N_EMBD // N_HEAD),
        _kv("llama.attention.layer_norm_rms_epsilon", _F32, 1e-5),
        _kv("tokenizer.ggml.model", _STR, "llama"),
        _arr("tokenizer.ggml.tokens", _STR, tokens),
        _arr("tokenizer.ggml.scores", _F32, [0.0] * len(tokens)),
        _arr("tokenizer.ggml.token_type", 5, types),
        _kv("tokenizer.ggml.bos_token_id", _U32, 1),
        _kv("tokenizer.ggml.eos_token_id", _U32, 2),
        _kv("tokenizer.ggml.unknown_token_id", _U32, 0),
    ]
    n_vocab = len(tokens)
    # (name, ggml type, ne0 = input width, ne1 = rows)
    specs = [
        ("token_embd.weight", Q8_0, N_EMBD, n_vocab),
        ("output_norm.weight", F32, N_EMBD, 1),
        ("output.weight", Q8_0, N_EMBD, n_vocab),
        ("blk.0.attn_norm.weight", F32, N_EMBD, 1),
        ("blk.0.attn_q.weight", Q4_K, N_EMBD, N_EMBD),
        ("blk.0.attn_k.weight", Q4_K, N_EMBD, N_EMBD),
        ("blk.0.attn_v.weight", Q8_0, N_EMBD, N_EMBD),
        ("blk.0.attn_output.weight", Q4_K, N_EMBD, N_EMBD),
        ("blk.0.ffn_norm.weight", F32, N_EMBD, 1),
        ("blk.0.ffn_gate.weight", Q4_K, N_EMBD, N_FF),
        ("blk.0.ffn_up.weight", Q4_K, N_EMBD, N_FF),
        ("blk.0.ffn_down.weight", Q8_0, N_FF, N_EMBD),
    ]
    infos, blobs, offset = b"", [], 0
    for name, kind, ne0, ne1 in specs:
        data = _quantized(rng, kind, ne1, ne0)
        dims = (ne0,) if ne1 == 1 else (ne0, ne1)
        infos += _s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        infos += struct.pack("<IQ", kind, offset)
        pad = -len(data) % 32
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(specs), len(kvs)) + b"".join(kvs) + infos
    return head + b"\0" * (-len(head) % 32) + b"".join(blobs)
