#!/usr/bin/env python3
"""The whole tool-use model-organism experiment in one command (docs/organism.md):

  run_organism.py --model stories260K.bin --out DIR [--smoke] [--build build]

  1. make_prompts.py     prompt sets sampled from the base model, and the token convention
  2. rl_finetune.py      REINFORCE + KL fine-tune of the base into a tool-using model
  3. llama2c_organism capture   block outputs of both models with the ActivationWriter: every
                         token of general text and prompts (training data), and the last prompt
                         token of labelled request / plain prompts (contrast data)
  4. crosscoder train    a sweep of plain BatchTopK and dedicated-feature crosscoders
  5. crosscoder diff     Cohen's d and AUROC between request and plain prompts, relative norms
  6. llama2c_organism steer     the study's protocol (scale at the last prompt token, prefill
                         only, greedy) over α ∈ {0, 1, 4, 8, 16, 32, 64} per condition; paired
                         (the other source's model runs in lockstep and its activations enter
                         the encoder, as the study encoded both models together) unless
                         --unpaired (the other source enters as its mean; results are then
                         written beside the paired ones with the suffix .unpaired)
  7. report.py           bootstrap 95% intervals, the results table and the plots

Every step's output lands in DIR; a step whose output exists is not run again (delete it to
redo). --smoke shrinks every step to a few minutes of work for CI: its numbers mean nothing,
only that every piece runs and writes well-formed output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALPHAS = "0,1,4,8,16,32,64"
BLOCK = 2  # default: the middle of the 5 blocks


def log(message: str) -> None:
    print(f"run_organism: {message}", flush=True)


def run(command: list, **kwargs) -> None:
    log("$ " + " ".join(map(str, command)))
    start = time.time()
    subprocess.run([str(c) for c in command], check=True, **kwargs)
    log(f"  done in {time.time() - start:.0f} s")


def sweep(smoke: bool) -> list[dict]:
    """Crosscoders trained: the plain BatchTopK baseline and dedicated-feature variants."""
    if smoke:
        return [{"name": "batchtopk_k8", "k": 8, "exclusive": 0, "latents": 256, "steps": 60},
                {"name": "dedicated_k8_x32", "k": 8, "exclusive": 32, "latents": 256,
                 "steps": 60}]
    configs = []
    for k in (4, 8):
        configs.append({"name": f"batchtopk_k{k}", "k": k, "exclusive": 0})
        for exclusive in (16, 64):
            configs.append({"name": f"dedicated_k{k}_x{exclusive}", "k": k,
                            "exclusive": exclusive})
    for c in configs:
        c.update(latents=512, steps=1200)
    return configs


def exclusive_range(config: dict, source: int) -> range:
    """Latent indices of a source's dedicated partition (shared latents come first, then one
    block per source: crosscoder/config.hpp)."""
    blocks = config.get("exclusive") or []
    if not blocks:
        return range(0)
    first = config["latents"] - sum(blocks) + sum(blocks[:source])
    return range(first, first + blocks[source])


def ranked(diff: dict, metric: str, candidates) -> list[int]:
    by_index = {latent["index"]: latent for latent in diff["latents"]}
    return sorted(candidates, key=lambda j: -by_index[j][metric])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", required=True, help="the base llama2.c checkpoint")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--build", default=str(HERE.parents[1] / "build"),
                        help="the CMake build directory (for crosscoder and llama2c_organism)")
    parser.add_argument("--smoke", action="store_true", help="a few minutes, for CI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block", type=int, default=BLOCK,
                        help="block whose output is captured and steered (default: 2, the middle)")
    parser.add_argument("--reuse", help="a finished run's directory: reuse its prompts and RL model")
    parser.add_argument("--unpaired", action="store_true",
                        help="steer unpaired: the other source enters the encoder as its mean "
                             "(steering/*.unpaired.json, plan.unpaired.json, report.unpaired.md)")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build = Path(args.build)
    cli, organism = build / "bin" / "crosscoder", build / "examples" / "llama2c_organism"
    for tool in (cli, organism):
        if not tool.exists():
            sys.exit(f"run_organism: {tool} not found: build the project first (./dev.sh run)")
    model = Path(args.model)
    if not model.exists():
        sys.exit(f"run_organism: model {model} not found (docs/organism.md says where to get it)")
    python = sys.executable
    started = time.time()
    prompts, rl = out / "prompts", out / "rl.bin"
    if args.reuse:
        prompts, rl = Path(args.reuse) / "prompts", Path(args.reuse) / "rl.bin"
        (out / "rl.bin.json").write_text((Path(args.reuse) / "rl.bin.json").read_text())
    block = args.block

    # 1-2: prompts and the RL fine-tune
    if not (prompts / "text.npy").exists():
        run([python, HERE / "make_prompts.py", model, prompts, "--scale",
             0.1 if args.smoke else 1.0, "--seed", args.seed])
    if not rl.exists():
        steps = ["--steps", 30, "--batch", 32] if args.smoke else []
        run([python, HERE / "rl_finetune.py", model, prompts, rl, "--seed", args.seed, *steps])

    # 3: capture
    train_data, contrast_data = out / "capture_train", out / "capture_contrast"
    if not (train_data / "manifest.json").exists():
        run([organism, "capture", "--base", model, "--rl", rl, "--block", block, "--prompts",
             prompts / "text.npy", "--prompts", prompts / "capture_train.npy", "--positions",
             "all", "--out", train_data])
    if not (contrast_data / "manifest.json").exists():
        run([organism, "capture", "--base", model, "--rl", rl, "--block", block, "--prompts",
             prompts / "contrast.npy", "--positions", "last", "--out", contrast_data])

    # 4-5: crosscoders and their diffs
    diffs = {}
    for config in sweep(args.smoke):
        path = out / "crosscoders" / f"{config['name']}.safetensors"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            run([cli, "train", "--data", train_data / "manifest.json", "--latents",
                 config["latents"], "--k", config["k"], "--exclusive", config["exclusive"],
                 "--steps", config["steps"], "--batch", 1024, "--lr", 1e-3, "--warmup", 50,
                 "--validation-rows", 4096, "--seed", args.seed, "--out", path,
                 "--checkpoint-every", 100000])
        diff_path = path.with_suffix(".diff.json")
        if not diff_path.exists():
            run([cli, "diff", path, "--data", contrast_data / "manifest.json", "--json",
                 diff_path, "--top", 5], stdout=subprocess.DEVNULL)
        diffs[config["name"]] = {"config": config, "diff": json.loads(diff_path.read_text())}

    # 6: steering. The eval set for the RL model is the one where its unsteered correctness is
    # most moderate (nearest 40%), as the study steered where the model's baseline was ~22%.
    convention = prompts / "convention.json"
    steering = out / "steering"
    steering.mkdir(exist_ok=True)
    eval_sets = ["eval_near", "eval_mid", "eval_far"]
    baseline = {}
    for name in eval_sets:
        for which, path in (("base", model), ("rl", rl)):
            result = steering / f"unsteered_{which}_{name}.json"
            if not result.exists():
                run([organism, "steer", "--model", path, "--block", block, "--latents", "none",
                     "--prompts", prompts / f"{name}.npy", "--convention", convention,
                     "--subset", "all", "--out", result])
            cell = json.loads(result.read_text())
            tools = cell["tools"]
            correct = cell["cells"][0]["correct"]
            baseline[(which, name)] = sum(c for c, t in zip(correct, tools) if t >= 0) / max(
                1, sum(t >= 0 for t in tools))
    steer_set = min(eval_sets, key=lambda n: abs(baseline[("rl", n)] - 0.4))
    log(f"steering on {steer_set}: RL-model request correctness "
        + ", ".join(f"{n} {baseline[('rl', n)]:.2f}" for n in eval_sets))

    dedicated = [n for n in diffs if diffs[n]["config"]["exclusive"] > 0]
    plain = [n for n in diffs if diffs[n]["config"]["exclusive"] == 0]
    main_dedicated = max(dedicated, key=lambda n: diffs[n]["diff"]["summary"]["data"]["fve"][1])
    main_plain = max(plain, key=lambda n: diffs[n]["diff"]["summary"]["data"]["fve"][1])
    d = diffs[main_dedicated]["diff"]
    rl_exclusive = ranked(d, "cohens_d", exclusive_range(d["config"], 1))
    base_exclusive = ranked(d, "cohens_d", exclusive_range(d["config"], 0))
    import random
    chooser = random.Random(args.seed)
    random_rl = chooser.choice(rl_exclusive[1:])
    # The latents the relative norm calls RL-exclusive (class exclusive:1), partition or not.
    rl_class = ranked(d, "cohens_d", [l["index"] for l in d["latents"]
                                      if l["class"] == "exclusive:1"])
    plain_ranked = ranked(diffs[main_plain]["diff"], "cohens_d",
                          range(diffs[main_plain]["diff"]["n_latents"]))

    conditions = [
        # name, model, crosscoder, source, latents, subset
        ("rl_top_rl_exclusive", rl, main_dedicated, 1, [rl_exclusive[0]], "request"),
        ("rl_random_rl_exclusive", rl, main_dedicated, 1, [random_rl], "request"),
        ("rl_top_exclusive_class", rl, main_dedicated, 1, rl_class[:1], "request"),
        ("rl_top_rl_exclusive_on_plain", rl, main_dedicated, 1, [rl_exclusive[0]], "plain"),
        ("base_top_base_exclusive", model, main_dedicated, 0, [base_exclusive[0]], "request"),
        ("base_transplant_rl_exclusive", model, main_dedicated, 1, [rl_exclusive[0]],
         "request"),
    ]
    for n in (1, 4, 16):
        conditions.append((f"rl_plain_top{n}", rl, main_plain, 1, plain_ranked[:n], "request"))
    # The model whose activations fill the other source: source 0 is the base, 1 the RL model
    # (the capture's source order). The transplant steers the base model as source 1, so its
    # partner for source 0 is the base model itself.
    models = {0: model, 1: rl}
    suffix = ".unpaired" if args.unpaired else ""
    cells = []
    for name, path, crosscoder, source, latents, subset in conditions:
        if not latents:
            log(f"{name}: no such latent in this crosscoder; skipped")
            continue
        result = steering / f"{name}{suffix}.json"
        pairing = ["--unpaired"] if args.unpaired else ["--paired-model", models[1 - source]]
        if not result.exists():
            run([organism, "steer", "--model", path, *pairing, "--crosscoder",
                 out / "crosscoders" / f"{crosscoder}.safetensors", "--source", source,
                 "--block", block, "--latents", ",".join(map(str, latents)), "--alphas", ALPHAS,
                 "--prompts", prompts / f"{steer_set}.npy", "--convention", convention,
                 "--subset", subset, "--out", result])
        cells.append({"condition": name, "crosscoder": crosscoder, "source": source,
                      "latents": latents, "subset": subset, "result": str(result)})

    plan = {"block": block, "steer_set": steer_set, "alphas": ALPHAS,
            "pairing": "unpaired" if args.unpaired else "paired",
            "baseline_request_correct": {f"{w}/{n}": v for (w, n), v in baseline.items()},
            "main_dedicated": main_dedicated, "main_plain": main_plain,
            "rl_exclusive_ranked": rl_exclusive[:10], "rl_exclusive_class_ranked": rl_class[:10], "base_exclusive_ranked": base_exclusive[:10],
            "plain_ranked": plain_ranked[:20], "random_rl_exclusive": random_rl,
            "conditions": cells, "smoke": args.smoke}
    (out / f"plan{suffix}.json").write_text(json.dumps(plan, indent=2) + "\n")

    # 7: the report
    run([python, HERE / "report.py", out, *(["--unpaired"] if args.unpaired else [])])
    log(f"finished in {time.time() - started:.0f} s: {out / f'report{suffix}.md'}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
