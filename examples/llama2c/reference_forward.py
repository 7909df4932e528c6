#!/usr/bin/env python3
"""A float64 reference forward pass of a llama2.c "version 0" checkpoint, written from the
format's description (header of 7 int32, then the weights; rotary embedding on interleaved
pairs, SwiGLU, RMSNorm eps 1e-5, grouped-query attention), with numpy only. It computes the
whole sequence at once with a causal mask, independently of the C++ engine's KV cache.

  reference_forward.py MODEL --tokens 1,403,... --logits OUT.npy [--block N --states OUT.npy]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def tensor_shapes(dim, hidden, layers, kv_dim, vocab, seq_len, head_size, shared):
    """The checkpoint's tensors after the header, in file order: (name, shape)."""
    shapes = [("embedding", (vocab, dim)), ("rms_att", (layers, dim)),
              ("wq", (layers, dim, dim)), ("wk", (layers, kv_dim, dim)),
              ("wv", (layers, kv_dim, dim)), ("wo", (layers, dim, dim)),
              ("rms_ffn", (layers, dim)), ("w1", (layers, hidden, dim)),
              ("w2", (layers, dim, hidden)), ("w3", (layers, hidden, dim)),
              ("rms_final", (dim,)), ("freq_real", (seq_len, head_size // 2)),
              ("freq_imag", (seq_len, head_size // 2))]
    if not shared:
        shapes.append(("classifier", (vocab, dim)))
    return shapes


def load(path):
    with open(path, "rb") as file:
        raw = file.read()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = np.frombuffer(raw[:28], "<i4")
    shared = vocab > 0
    vocab = abs(int(vocab))
    head_size = dim // heads
    kv_dim = dim * kv_heads // heads
    data = np.frombuffer(raw[28:], "<f4").astype(np.float64)
    weights, offset = {}, 0
    for name, shape in tensor_shapes(dim, hidden, layers, kv_dim, vocab, seq_len, head_size,
                                     shared):
        size = int(np.prod(shape))
        weights[name] = data[offset:offset + size].reshape(shape)
        offset += size
    if offset != data.size:
        sys.exit(f"{path}: {data.size} floats, the header implies {offset}")
    if shared:
        weights["classifier"] = weights["embedding"]
    config = dict(dim=int(dim), hidden=int(hidden), layers=int(layers), heads=int(heads),
                  kv_heads=int(kv_heads), vocab=vocab, head_size=int(head_size))
    return config, weights


def rmsnorm(x, weight):
    return weight * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5)


def rotate(v, positions, head_size):
    """Interleaved-pair rotary embedding of v [T, width]: pair (i, i+1) turns by
    position / 10000^((i mod head_size) / head_size)."""
    i = np.arange(0, v.shape[1], 2)
    angle = positions[:, None] / 10000.0 ** ((i % head_size) / head_size)[None, :]
    a, b = v[:, 0::2], v[:, 1::2]
    out = np.empty_like(v)
    out[:, 0::2] = a * np.cos(angle) - b * np.sin(angle)
    out[:, 1::2] = a * np.sin(angle) + b * np.cos(angle)
    return out


def forward(config, w, tokens, block=None, replace=None):
    """Logits [T, vocab] and block `block`'s output [T, dim]; `replace(x)`, when given,
    returns what replaces that output for the rest of the forward pass (splicing: the whole
    sequence at once is the same as token by token, the mask being causal)."""
    T = len(tokens)
    hs, heads, group = config["head_size"], config["heads"], config["heads"] // config["kv_heads"]
    positions = np.arange(T, dtype=np.float64)
    x = w["embedding"][tokens]
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    states = None
    for l in range(config["layers"]):
        xb = rmsnorm(x, w["rms_att"][l])
        q = rotate(xb @ w["wq"][l].T, positions, hs)
        k = rotate(xb @ w["wk"][l].T, positions, hs)
        v = xb @ w["wv"][l].T
        out = np.empty_like(x)
        for h in range(heads):
            g = h // group
            qh, kh, vh = q[:, h * hs:(h + 1) * hs], k[:, g * hs:(g + 1) * hs], v[:, g * hs:(g + 1) * hs]
            scores = qh @ kh.T / np.sqrt(hs) + mask
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
            out[:, h * hs:(h + 1) * hs] = scores @ vh
        x = x + out @ w["wo"][l].T
        xb = rmsnorm(x, w["rms_ffn"][l])
        gate, up = xb @ w["w1"][l].T, xb @ w["w3"][l].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w["w2"][l].T
        if block == l:
            states = x.copy()
            if replace is not None:
                x = replace(x)
    logits = rmsnorm(x, w["rms_final"]) @ w["classifier"].T
    return logits, states


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--logits", required=True)
    parser.add_argument("--block", type=int, default=None)
    parser.add_argument("--states", default=None)
    args = parser.parse_args()
    config, weights = load(args.model)
    tokens = [int(t) for t in args.tokens.split(",")]
    logits, states = forward(config, weights, tokens, args.block)
    np.save(args.logits, logits)
    if args.states:
        np.save(args.states, states)


if __name__ == "__main__":
    main()
