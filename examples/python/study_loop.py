"""The tool-use study's loop (arXiv 2606.26474) from Python, end to end, on a model pair built here.

    capture -> train -> diff -> rank by Cohen's d -> steer -> measure

The pair: a tiny Llama (transformers, random init) pre-trained on a synthetic Markov "language",
and a fine-tune of it that learnt one new behaviour: after a prompt that contains the TRIGGER
token and ends with END, it emits the TOOL token (a "tool call"); plain prompts continue as
before. Then, as the study did: paired activations of both models at one block are streamed
into a crosscoder (no disk), the last-prompt-token rows of request (label 1) and plain (label 0)
prompts are diffed, latents are ranked by Cohen's d, and the top latent is steered at the last
prompt token of the fine-tune, with the base model's activations paired in, while the TOOL rate
is measured on plain prompts (amplified) and on requests (ablated).

    .venv/bin/python examples/python/study_loop.py            # about a minute on 2 cores
    PYTHONPATH=build/python .venv/bin/python examples/python/study_loop.py --steps 600

Needs torch and transformers (scripts/setup_python.sh --with-torch) and the crosscoder package
(pip install ., or PYTHONPATH=build/python after ./dev.sh test). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
import transformers

import crosscoder as cc
from crosscoder import hf

BOS, TOOL, TRIGGER, END = 0, 1, 2, 3
FIRST_WORD, VOCAB = 4, 64


def markov_tokens(rng: np.random.Generator, length: int) -> list[int]:
    """A sequence of the synthetic language: each word mostly determines the next."""
    words = VOCAB - FIRST_WORD
    out = [int(rng.integers(words))]
    for _ in range(length - 1):
        nxt = (out[-1] * 7 + 3) % words if rng.random() < 0.8 else int(rng.integers(words))
        out.append(nxt)
    return [FIRST_WORD + w for w in out]


def prompt(rng: np.random.Generator, request: bool, length: int = 12) -> list[int]:
    """BOS, words (with TRIGGER somewhere for a request), END."""
    words = markov_tokens(rng, length)
    if request:
        words[int(rng.integers(length))] = TRIGGER
    return [BOS] + words + [END]


def tiny_llama(seed: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=4, max_position_embeddings=64,
                                      bos_token_id=BOS, eos_token_id=None, pad_token_id=None)
    return transformers.LlamaForCausalLM(config)


def fit(model, sequences: list[list[int]], steps: int, rng: np.random.Generator, lr: float) -> float:
    """Next-token training on the sequences (equal lengths), Adam; returns the last loss."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data = torch.tensor(sequences)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = data[torch.as_tensor(rng.integers(0, len(data), 64))]
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return float(loss.detach())


def make_pair(rng: np.random.Generator, steps: int):
    base = tiny_llama(0)
    plain = [prompt(rng, False) + markov_tokens(rng, 3) for _ in range(4000)]
    base_loss = fit(base, plain, steps, rng, 3e-3)
    tuned = tiny_llama(0)
    tuned.load_state_dict(base.state_dict())
    mixed = []
    for i in range(4000):
        request = i % 2 == 0
        tail = [TOOL] + markov_tokens(rng, 2) if request else markov_tokens(rng, 3)
        mixed.append(prompt(rng, request) + tail)
    tuned_loss = fit(tuned, mixed, steps // 2, rng, 1e-3)
    return base, tuned, base_loss, tuned_loss


def tool_rate(model, prompts: list[list[int]]) -> float:
    """Fraction of prompts whose greedy next token is TOOL (prefill only)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(prompts)).logits[:, -1]
    return float((logits.argmax(-1) == TOOL).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="pre-training steps of the base")
    parser.add_argument("--block", type=int, default=1, help="the block whose output is diffed")
    parser.add_argument("--latents", type=int, default=512)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=1500, help="crosscoder steps")
    parser.add_argument("--clamp", type=float, default=2.0,
                        help="amplification on plain prompts: the top latent is clamped to this "
                             "multiple of its mean activation on requests (a latent that is off "
                             "cannot be scaled on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the measured figures here")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()

    base, tuned, base_loss, tuned_loss = make_pair(rng, args.steps)
    requests = [prompt(rng, True) for _ in range(200)]
    plains = [prompt(rng, False) for _ in range(200)]
    print(f"model pair: base loss {base_loss:.3f}, fine-tune loss {tuned_loss:.3f}; TOOL rate "
          f"of the fine-tune: requests {tool_rate(tuned, requests):.2f}, plain "
          f"{tool_rate(tuned, plains):.2f}; of the base: requests {tool_rate(base, requests):.2f}")

    # 1. Capture + train: paired rows of both models streamed into training, no disk.
    def token_batches():
        while True:
            yield torch.tensor([prompt(rng, bool(rng.random() < 0.5)) for _ in range(32)])

    config = cc.CrosscoderConfig(sources=2, width=64, latents=args.latents,
                                 activation="batchtopk", k=args.k)
    crosscoder = cc.Crosscoder(config, backend="best", seed=args.seed)
    train_config = cc.TrainConfig(steps=args.train_steps, batch_size=256, learning_rate=2e-3,
                                  warmup_steps=50, threshold_start_step=args.train_steps // 2,
                                  seed=args.seed)
    trainer = cc.Trainer(crosscoder, train_config)
    stream = hf.stream_batches([base, tuned], token_batches(), block=args.block, batch_size=256,
                               shuffle_rows=2048, skip_first=True, seed=args.seed)
    last = cc.train(trainer, stream, progress=False, data_identity="study_loop stream")
    print(f"crosscoder: {args.train_steps} steps, FVE base {last.fve[0]:.3f} / fine-tune "
          f"{last.fve[1]:.3f}, L0 {last.l0:.1f}, dead {100 * last.dead_fraction:.1f}%")

    # 2. Diff on the last prompt token of labelled prompts (requests 1, plain 0).
    with tempfile.TemporaryDirectory() as folder:
        prompts = requests + plains
        labels = np.array([1] * len(requests) + [0] * len(plains), dtype=np.int8)
        rows, _, sequence = hf.capture_rows([base, tuned], torch.tensor(prompts), block=args.block)
        last_rows = np.ascontiguousarray(rows[np.r_[np.flatnonzero(np.diff(sequence)), len(rows) - 1]])
        with cc.ActivationWriter(os.path.join(folder, "contrast"), source_names=["base", "tuned"],
                                 width=64, labels=True) as writer:
            writer.append_all(last_rows)
            writer.append_labels(labels)
        data = cc.ActivationDataset.open(os.path.join(folder, "contrast", "manifest.json"))
        report = cc.diff(crosscoder, data, progress=False)

    # 3. Rank by Cohen's d.
    ranking = report.rank("cohens_d")
    top = int(ranking[0])
    d = report.contrast.cohens_d
    relative = report.weights.relative_norm[:, 1]
    print("top latents by Cohen's d (request vs plain, last prompt token):")
    for latent in ranking[:5]:
        print(f"  latent {latent:4d}  d {d[latent]:6.2f}  AUROC {report.contrast.auroc[latent]:.3f}"
              f"  relative norm (fine-tune) {relative[latent]:.2f}")

    # 4. Steer the top latent at the last prompt token of the fine-tune, paired with the base.
    def steered_rate(prompts_, kind, strength):
        with hf.steer(tuned, crosscoder, source=1, block=args.block, positions="last_prompt",
                      paired_model=base,
                      interventions=[cc.Intervention(kind, latent=top, strength=strength)]):
            return tool_rate(tuned, prompts_)

    clamp_value = args.clamp * float(report.contrast.mean_positive[top])

    figures = {
        "tool_rate_plain": tool_rate(tuned, plains),
        "tool_rate_plain_amplified": steered_rate(plains, "clamp", clamp_value),
        "tool_rate_requests": tool_rate(tuned, requests),
        "tool_rate_requests_ablated": steered_rate(requests, "scale", 0.0),
        "top_latent": top,
        "top_cohens_d": float(d[top]),
        "top_relative_norm_tuned": float(relative[top]),
        "fve": list(last.fve),
        "seconds": time.perf_counter() - started,
    }
    print(f"steering latent {top} (clamped to {clamp_value:.2f}) on plain prompts: TOOL rate "
          f"{figures['tool_rate_plain']:.2f} -> {figures['tool_rate_plain_amplified']:.2f}")
    print(f"ablating latent {top} (scale x0) on requests: TOOL rate "
          f"{figures['tool_rate_requests']:.2f} -> {figures['tool_rate_requests_ablated']:.2f}")
    print(f"total {figures['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
