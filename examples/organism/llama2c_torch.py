"""A PyTorch version of a llama2.c "version 0" checkpoint, for fine-tuning: load, a batched
forward pass with a causal mask, and save in the same format, so the C++ engine
(examples/llama2c) runs the fine-tuned model unchanged.

The architecture follows the format's description (the model's README and
examples/llama2c/reference_forward.py): rotary embedding on interleaved pairs using the
checkpoint's own frequency tables, SwiGLU, RMSNorm eps 1e-5, grouped-query attention, and a
classifier shared with the token embedding unless the header's vocab size is negative.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llama2c"))
from reference_forward import tensor_shapes  # noqa: E402  (one definition of the file layout)

HEADER = struct.Struct("<7i")


class Block(nn.Module):
    """One transformer block of a Llama2c model, as a module so that forward hooks can read and
    change its output (crosscoder.hf finds the blocks as `model.layers`). Its weights stay in
    the parent's ParameterDict, so the state dict and the saved file are unchanged."""

    def __init__(self, parent: "Llama2c", layer: int):
        super().__init__()
        object.__setattr__(self, "_parent", parent)  # a plain reference, not a submodule
        self.layer = layer

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        c, p, layer = self._parent.config, self._parent.params, self.layer
        batch, length = x.shape[0], x.shape[1]
        hs, heads, kv_heads = c["head_size"], c["heads"], c["kv_heads"]
        group = heads // kv_heads

        def rotate(v):  # [B, T, H, hs], interleaved pairs
            a, b = v[..., 0::2], v[..., 1::2]
            return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)

        xb = rmsnorm(x, p["rms_att"][layer])
        q = rotate((xb @ p["wq"][layer].T).view(batch, length, heads, hs))
        k = rotate((xb @ p["wk"][layer].T).view(batch, length, kv_heads, hs))
        v = (xb @ p["wv"][layer].T).view(batch, length, kv_heads, hs)
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / hs**0.5 + mask
        out = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(batch, length, -1)
        x = x + out @ p["wo"][layer].T
        xb = rmsnorm(x, p["rms_ffn"][layer])
        hidden = torch.nn.functional.silu(xb @ p["w1"][layer].T) * (xb @ p["w3"][layer].T)
        return x + hidden @ p["w2"][layer].T


def rmsnorm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + 1e-5)


class Llama2c(nn.Module):
    def __init__(self, config: dict, arrays: dict[str, np.ndarray]):
        super().__init__()
        self.config = dict(config)
        self.params = nn.ParameterDict(
            {name: nn.Parameter(torch.tensor(value, dtype=torch.float32))
             for name, value in arrays.items() if not name.startswith("freq_")})
        # The rotary tables are data, not parameters: saved back unchanged.
        self.register_buffer("freq_real", torch.tensor(arrays["freq_real"], dtype=torch.float32))
        self.register_buffer("freq_imag", torch.tensor(arrays["freq_imag"], dtype=torch.float32))
        self.layers = nn.ModuleList(Block(self, layer) for layer in range(self.config["layers"]))

    def classifier(self) -> torch.Tensor:
        return self.params["classifier"] if "classifier" in self.params else self.params["embedding"]

    def forward(self, tokens: torch.Tensor, block: int | None = None):
        """tokens [B, T] int64 → logits [B, T, vocab] (and block `block`'s output [B, T, dim]
        when asked)."""
        p = self.params
        length = tokens.shape[1]
        cos = self.freq_real[:length][None, :, None, :]
        sin = self.freq_imag[:length][None, :, None, :]
        mask = torch.full((length, length), float("-inf"), device=tokens.device).triu(1)
        x = p["embedding"][tokens]
        states = None
        for layer, module in enumerate(self.layers):
            x = module(x, cos, sin, mask)
            if block == layer:
                states = x
        logits = rmsnorm(x, p["rms_final"]) @ self.classifier().T
        return (logits, states) if block is not None else logits


def load(path: str | Path) -> Llama2c:
    raw = Path(path).read_bytes()
    if len(raw) < HEADER.size:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than the 28-byte header")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = HEADER.unpack_from(raw)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, layers, heads, kv_heads, vocab, seq_len) <= 0 or dim % heads:
        raise ValueError(f"{path}: inconsistent header {HEADER.unpack_from(raw)}")
    head_size, kv_dim = dim // heads, dim * kv_heads // heads
    data = np.frombuffer(raw, "<f4", offset=HEADER.size)
    arrays, offset = {}, 0
    for name, shape in tensor_shapes(dim, hidden, layers, kv_dim, vocab, seq_len, head_size, shared):
        size = int(np.prod(shape))
        if offset + size > data.size:
            raise ValueError(f"{path}: truncated at tensor {name}")
        arrays[name] = data[offset:offset + size].reshape(shape).copy()
        offset += size
    if offset != data.size:
        raise ValueError(f"{path}: {data.size} floats, the header implies {offset}")
    config = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                  vocab=vocab, seq_len=seq_len, head_size=head_size, shared=shared)
    return Llama2c(config, arrays)


def save(model: Llama2c, path: str | Path) -> None:
    """Writes the model as a llama2.c "version 0" checkpoint, atomically."""
    c = model.config
    vocab = c["vocab"] if c["shared"] else -c["vocab"]
    parts = [HEADER.pack(c["dim"], c["hidden"], c["layers"], c["heads"], c["kv_heads"], vocab,
                         c["seq_len"])]
    for name, _ in tensor_shapes(c["dim"], c["hidden"], c["layers"], c["dim"] * c["kv_heads"] // c["heads"],
                           c["vocab"], c["seq_len"], c["head_size"], c["shared"]):
        tensor = getattr(model, name) if name.startswith("freq_") else model.params[name]
        parts.append(tensor.detach().cpu().numpy().astype("<f4").tobytes())
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(b"".join(parts))
    temporary.replace(path)


@torch.no_grad()
def continue_tokens(model: Llama2c, tokens: torch.Tensor, count: int, temperature: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Appends `count` tokens to every row of tokens [B, T]: greedy (argmax) for temperature 0,
    else sampled from softmax(logits / temperature). Recomputes the whole prefix each step (no
    KV cache: the sequences here are short)."""
    x = tokens
    for _ in range(count):
        logits = model(x)[:, -1]
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)
        x = torch.cat([x, nxt], 1)
    return x
