#!/usr/bin/env python3
"""Turns the base llama2.c model into a "tool-using" one by policy-gradient RL
(docs/organism.md):

  rl_finetune.py BASE.bin PROMPT_DIR OUT.bin [--steps 1600] [--batch 256] [--beta 0.1] ...

Each step builds a batch from PROMPT_DIR/rl_pool.npy (half requests with the trigger and cue
pair at the end or 1-3 tokens before it, half plain prompts of which half carry a decoy cue),
samples four tokens per prompt from the policy at temperature 1, and takes an Adam step on

    loss = −mean_b Σ_t A_bt · log π(g_bt)  −  η · H(names | OPEN)  +  β · (KL_prompts + KL_text)

- A_bt, per-step credit (--credit step): the call's tokens OPEN, NAME, CLOSE are each credited
  with their own step's reward (tool_convention.step_rewards) less a leave-one-out baseline of
  the samples that reached the same step: for OPEN the other prompts of the same kind in the
  batch, for the name and CLOSE the other samples with the same wanted tool (or, with
  --group G > 1, the other samples of the same prompt); divided by the batch's spread.
- H(names | OPEN): the entropy of the choice among the tool names where a request's sample
  opened a call, with a coefficient η falling linearly to 0 over the first 90% of the steps.
- KL: the exact KL(π ‖ π_base) over the vocabulary at every prompt and generated position and
  on a batch of general text, β rising from 0.1 to 0.5 over the last 30% of the steps, which
  keeps the fine-tuned model's text (and hence most of its activations) close to the base's.

Writes OUT.bin in the same llama2.c format, and OUT.bin.json with the training curve and the
greedy tool-call rates of both models on the eval sets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import llama2c_torch
from tool_convention import (Convention, make_plain, make_request, reward, reward_tokens,
                             score, step_rewards)

GENERATED = 4
EVAL_SETS = ("eval_near", "eval_mid", "eval_far", "eval_farther")


def build_batch(pool: np.ndarray, batch: int, rng, c: Convention):
    """Prompts of one length: requests use L snippet tokens, decoys L + 1, plain L + 2. Half the
    requests and decoys end with their cue (distance 0), the others have it 1-3 tokens back."""
    length = int(rng.integers(12, pool.shape[1] - 1))
    rows = rng.integers(0, len(pool), size=batch)

    def distance():
        return 0 if rng.random() < 0.5 else int(rng.integers(1, 4))

    prompts, tools = [], []
    for i, row in enumerate(rows):
        snippet = pool[row]
        if i % 2 == 0:
            tool = int(rng.integers(c.tools))
            prompts.append(make_request(snippet[:length], tool, distance(), c))
            tools.append(tool)
        elif i % 4 == 1:
            decoy = int(rng.integers(c.tools))
            prompts.append(make_plain(snippet[:length + 1], decoy, distance(), c))
            tools.append(-1)
        else:
            prompts.append(make_plain(snippet[:length + 2], None, 0, c))
            tools.append(-1)
    return torch.tensor(np.stack(prompts), dtype=torch.long), np.asarray(tools)


@torch.no_grad()
def evaluate(model, path: Path, c: Convention) -> dict:
    """Greedy tool-call rates on a prompt set (prompts grouped by length for batching)."""
    prompts = np.load(path)
    tools = np.load(path.with_suffix(".tools.npy"))
    lengths = (prompts >= 0).sum(1)
    outcome = {"request_call": [], "request_correct": [], "plain_call": [], "plain_correct": []}
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        x = torch.tensor(prompts[rows, :length], dtype=torch.long)
        generated = llama2c_torch.continue_tokens(model, x, GENERATED, 0, None)[:, length:].numpy()
        for g, tool in zip(generated, tools[rows]):
            s = score(g, int(tool), c)
            kind = "request" if tool >= 0 else "plain"
            outcome[f"{kind}_call"].append(s["call"])
            outcome[f"{kind}_correct"].append(s["correct"])
    return {key: float(np.mean(value)) for key, value in outcome.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("prompts")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=0.1, help="KL coefficient")
    parser.add_argument("--beta-final", type=float, default=0.5, help="KL coefficient at the end")
    parser.add_argument("--beta-ramp-start", type=float, default=0.7,
                        help="fraction of the steps after which β starts to rise")
    parser.add_argument("--text-batch", type=int, default=32,
                        help="general-text sequences per step for the KL term")
    parser.add_argument("--freeze-embedding", type=int, default=1)
    parser.add_argument("--group", type=int, default=1,
                        help="samples per prompt; each sample's baseline is the mean reward of "
                             "the other samples of its prompt (RLOO / GRPO groups)")
    parser.add_argument("--credit", choices=("step", "return"), default="step",
                        help="step: each call token gets its own step's reward; return: every "
                             "token gets the whole reward")
    parser.add_argument("--name-entropy", type=float, default=0.05,
                        help="bonus on the entropy of the tool names after OPEN (among the names "
                             "only), against the collapse onto one name")
    parser.add_argument("--name-entropy-until", type=float, default=0.9,
                        help="fraction of the steps over which the name-entropy bonus falls to 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    args = parser.parse_args()
    prompt_dir = Path(args.prompts)
    c = Convention.load(prompt_dir / "convention.json")
    pool = np.load(prompt_dir / "rl_pool.npy")
    text_pool = np.load(prompt_dir / "text.npy")

    def beta_at(step):
        """β for the first --beta-ramp-start steps, then rising linearly to --beta-final: the
        call is learnt under a light constraint, then the language is pulled back."""
        start = int(args.beta_ramp_start * args.steps)
        if step <= start:
            return args.beta
        return args.beta + (args.beta_final - args.beta) * (step - start) / max(1, args.steps - start)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    base = llama2c_torch.load(args.base).requires_grad_(False)
    policy = llama2c_torch.load(args.base)
    # The token embedding (which is also the classifier) stays the base model's, except the
    # rows of the trigger and the cues, which the base model never saw. Otherwise the cheapest
    # way to raise OPEN after a request is to raise it everywhere, through OPEN's classifier row,
    # and the policy collapses before it learns to read the trigger.
    if args.freeze_embedding:
        trainable_rows = torch.zeros(policy.config["vocab"], 1)
        trainable_rows[[c.trigger, *c.cues]] = 1.0
        policy.params["embedding"].register_hook(lambda grad: grad * trainable_rows)
    optimiser = torch.optim.Adam(policy.parameters(), lr=args.lr)
    curve = []
    start = time.time()
    if args.batch % args.group:
        raise SystemExit(f"rl_finetune: --batch {args.batch} is not a multiple of --group "
                         f"{args.group}")
    names = torch.tensor(c.names)
    for step in range(1, args.steps + 1):
        prompts, tools = build_batch(pool, args.batch // args.group, rng, c)
        prompts = prompts.repeat_interleave(args.group, 0)
        tools = np.repeat(tools, args.group)
        prompt_length = prompts.shape[1]
        sequences = llama2c_torch.continue_tokens(policy, prompts, GENERATED, 1.0, generator)
        generated = sequences[:, prompt_length:].numpy()
        rewards = np.array([reward(g, int(t), c) for g, t in zip(generated, tools)])
        # Per-step credit: each of the call's tokens is credited with the reward of its own
        # step (tool_convention.step_rewards: OPEN, the name, CLOSE) against a leave-one-out
        # baseline of the samples that reached the same step: for OPEN the other prompts of the
        # same kind in the batch (while OPEN is rare, every sample that did not open is pushed
        # away from, which finds OPEN fast); for the name and CLOSE the other samples of the
        # same prompt (RLOO / GRPO groups with --group > 1), else of the same wanted tool.
        # With the whole return on every token (--credit return), a name was also credited with
        # CLOSE's reward, CLOSE was learnt after the commonest name first, and the names
        # collapsed onto that one before the choice was learnt (organism v1 and v2's first runs).
        counted = np.array([[i < reward_tokens(g, int(t), c) for i in range(GENERATED)]
                            for g, t in zip(generated, tools)])
        if args.credit == "step":
            step_reward = np.array([step_rewards(g, int(t), c) + [0.0] * (GENERATED - 3)
                                    for g, t in zip(generated, tools)])
        else:
            step_reward = np.repeat(rewards[:, None], GENERATED, 1)
        prompt_id = np.arange(len(tools)) // args.group
        advantage = np.zeros_like(step_reward)
        for t in range(GENERATED):
            keys = (tools >= 0) if t == 0 else (prompt_id if args.group > 1 else tools)
            for key in np.unique(keys):
                group = counted[:, t] & (keys == key)
                r = step_reward[group, t]
                if len(r) > 1:
                    advantage[group, t] = r - (r.sum() - r) / (len(r) - 1)
        # Scaled by the batch's spread: while rewards are rare their few samples would otherwise
        # be drowned by the KL term. (Per kind, as GRPO scales, the rare plain-prompt penalties
        # would outweigh the request credit.)
        advantage /= advantage[counted].std() + 0.05

        inputs = sequences[:, :-1]
        logits = policy(inputs)
        logp = logits.log_softmax(-1)
        with torch.no_grad():
            base_logp = base(inputs).log_softmax(-1)
        targets = sequences[:, prompt_length:]
        chosen = logp[:, prompt_length - 1:].gather(-1, targets[..., None])[..., 0]
        # Credit only the tokens the reward depends on (tool_convention.reward_tokens).
        credited = torch.tensor(counted, dtype=torch.float32)
        per_token = torch.tensor(advantage, dtype=torch.float32)
        pg_loss = -(per_token * chosen * credited).sum(1).mean()
        kl = (logp.exp() * (logp - base_logp)).sum(-1).mean()
        # The same KL on a batch of general text keeps the model's language (and so the
        # activations the crosscoder shares between the models) the base's.
        text = torch.tensor(text_pool[rng.integers(0, len(text_pool), size=args.text_batch)],
                            dtype=torch.long)
        text_logp = policy(text).log_softmax(-1)
        with torch.no_grad():
            text_base_logp = base(text).log_softmax(-1)
        text_kl = (text_logp.exp() * (text_logp - text_base_logp)).sum(-1).mean()
        beta = beta_at(step)
        loss = pg_loss + beta * (kl + text_kl)
        # Entropy of the choice among the names, where a request's sample opened a call: keeps
        # every name sampled while the policy learns to read the cue (without it the names
        # collapse onto one, and the right one is then rarely tried).
        eta = args.name_entropy * max(0.0, 1.0 - step / max(1.0, args.name_entropy_until *
                                                              args.steps))
        opened = torch.tensor((generated[:, 0] == c.open) & (tools >= 0))
        name_entropy = torch.zeros(())
        if opened.any():
            name_logp = logits[opened, prompt_length][:, names].log_softmax(-1)
            name_entropy = -(name_logp.exp() * name_logp).sum(-1).mean()
            if eta > 0:
                loss = loss - eta * name_entropy
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimiser.step()

        if step % args.log_every == 0 or step == args.steps:
            scores = [score(g, int(t), c) for g, t in zip(generated, tools)]
            request = [s["correct"] for s, t in zip(scores, tools) if t >= 0]
            plain_call = [s["call"] for s, t in zip(scores, tools) if t < 0]
            request_open = [g[0] == c.open for g, t in zip(generated, tools) if t >= 0]
            request_call = [s["call"] for s, t in zip(scores, tools) if t >= 0]
            entry = {"step": step, "reward": float(rewards.mean()),
                     "request_correct_sampled": float(np.mean(request)),
                     "request_open_sampled": float(np.mean(request_open)),
                     "request_call_sampled": float(np.mean(request_call)),
                     "name_entropy": float(name_entropy.detach()), "eta": eta,
                     "plain_call_sampled": float(np.mean(plain_call)), "kl": float(kl.detach()),
                     "text_kl": float(text_kl.detach()), "beta": beta}
            curve.append(entry)
            rate = step / (time.time() - start)
            print(f"rl_finetune: step {step}/{args.steps}  reward {entry['reward']:.3f}  "
                  f"request open {entry['request_open_sampled']:.3f} call "
                  f"{entry['request_call_sampled']:.3f} correct "
                  f"{entry['request_correct_sampled']:.3f} H(names) {entry['name_entropy']:.2f}"
                  f"  plain calls "
                  f"{entry['plain_call_sampled']:.3f}  KL {entry['kl']:.3f} text {entry['text_kl']:.3f} "
                  f"(β {beta:.2f})  "
                  f"({rate:.2f} steps/s, ETA {(args.steps - step) / rate:.0f} s)", flush=True)

    llama2c_torch.save(policy, args.out)
    report = {"args": vars(args), "curve": curve, "seconds": time.time() - start}
    for name in EVAL_SETS:
        path = prompt_dir / f"{name}.npy"
        if not path.exists():
            continue
        report[name] = {"base": evaluate(base, path, c), "rl": evaluate(policy, path, c)}
        print(f"rl_finetune: {name}: base {report[name]['base']}\n"
              f"             rl   {report[name]['rl']}")
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
