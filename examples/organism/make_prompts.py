#!/usr/bin/env python3
"""Samples the model organism's prompt sets from the base model (docs/organism.md).

  make_prompts.py BASE.bin OUT_DIR [--scale 1.0] [--seed 0]

Writes to OUT_DIR:
  convention.json          the token convention (tool_convention.py), read by the C++ tools
  rl_pool.npy              story snippets for RL fine-tuning [N, 24] int32
  SET.npy, SET.tools.npy   prompt sets, BOS-first token ids [N, T] int32 padded with -1, and
                           the wanted tool per prompt (-1: plain):
    eval_near      requests ending with the trigger and cue, and plain prompts, half each
    eval_mid       the same with 1-3 snippet tokens after the pair
    eval_far       the same with 4-8 (further than RL trained on)
    capture_train  requests and plain prompts for the crosscoder's training data (all tokens)
    contrast       requests and plain prompts for the contrast ranking (last token, labelled)
    eval_farther   requests and plain prompts with 9-16 snippet tokens after the pair
    capture_last   requests and plain prompts whose last tokens train the crosscoders the
                   study's way (one row per prompt, balanced)
  text.npy                 general text: base samples of 64 tokens (all tokens captured)

Every snippet is sampled at temperature 0.8 from BOS; the sets use disjoint snippets. --scale
shrinks every set (the smoke pipeline uses 0.1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import llama2c_torch
from tool_convention import Convention, make_plain, make_request

SNIPPET = 24
# How many snippet tokens follow the request's (or decoy's) pair, per set. RL trains on 0-3.
DISTANCES = {"eval_near": (0, 0), "eval_mid": (1, 3), "eval_far": (4, 8),
             "capture_train": (0, 8), "contrast": (0, 8), "eval_farther": (9, 16),
             "capture_last": (0, 8)}


def sample(model, count: int, length: int, generator: torch.Generator, batch: int = 512):
    """count sequences of `length` tokens after BOS, sampled at temperature 0.8."""
    out = []
    for first in range(0, count, batch):
        bos = torch.ones(min(batch, count - first), 1, dtype=torch.long)
        out.append(llama2c_torch.continue_tokens(model, bos, length, 0.8, generator)[:, 1:].numpy())
    return np.concatenate(out).astype(np.int32)


def pad(rows: list[np.ndarray]) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), -1, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def prompt_set(snippets, distances, rng, c: Convention):
    """Half requests (a random tool each), half plain (half of those with a decoy cue), in a
    shuffled order; snippet lengths vary from 12 to 24 tokens."""
    prompts, tools = [], []
    for i, snippet in enumerate(snippets):
        snippet = snippet[:rng.integers(max(12, distances[1]), SNIPPET + 1)]
        distance = min(len(snippet), int(rng.integers(distances[0], distances[1] + 1)))
        if i % 2 == 0:
            tool = int(rng.integers(c.tools))
            prompts.append(make_request(snippet, tool, distance, c))
            tools.append(tool)
        else:
            decoy = int(rng.integers(c.tools)) if i % 4 == 1 else None
            prompts.append(make_plain(snippet, decoy, distance, c))
            tools.append(-1)
    order = rng.permutation(len(prompts))
    return pad([prompts[i] for i in order]), np.asarray(tools, np.int32)[order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("out")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = llama2c_torch.load(args.base)
    c = Convention()
    c.save(out / "convention.json")
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    def n(count):
        return max(16, int(round(count * args.scale)) // 4 * 4)

    sizes = {"rl_pool": n(4096), "eval_near": n(800), "eval_mid": n(800), "eval_far": n(800),
             "capture_train": n(2048), "contrast": n(1600), "eval_farther": n(800),
             "capture_last": n(6144)}
    snippets = sample(model, sum(sizes.values()), SNIPPET, generator)
    # The trigger and cues must only ever come from the convention.
    special = np.isin(snippets, [c.trigger, *c.cues])
    snippets[special] = c.names[0] + 1  # an ordinary token
    first = 0
    for name, size in sizes.items():
        part = snippets[first:first + size]
        first += size
        if name == "rl_pool":
            np.save(out / "rl_pool.npy", part)
            continue
        distances = DISTANCES[name]
        prompts, tools = prompt_set(part, distances, rng, c)
        np.save(out / f"{name}.npy", prompts)
        np.save(out / f"{name}.tools.npy", tools)
        print(f"make_prompts: {name}: {len(prompts)} prompts, {int((tools >= 0).sum())} requests")
    text = sample(model, n(600), 63, generator)
    np.save(out / "text.npy", np.concatenate([np.ones((len(text), 1), np.int32), text], 1))
    print(f"make_prompts: text: {len(text)} sequences of 64 tokens")


if __name__ == "__main__":
    main()
