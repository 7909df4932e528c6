#!/usr/bin/env python3
"""The study's protocol on the tool-use model organism, in one command (docs/organism.md):

  run_organism.py --model stories260K.bin --out DIR [--smoke] [--build build] [--seeds 3]

  1. prompts     make_prompts.py: prompt sets sampled from the base model, the token convention
  2. rl          rl_finetune.py: REINFORCE + KL fine-tune of the base into a tool-using model
  3. probe       every block's last prompt token, both models (llama2c_organism capture
                 --blocks all), and linear probes for "call?" and "which tool?" (probe.py);
                 the block where the RL model's probes gain most over the base model's is
                 the study's block
  4. capture     at that block: every token of text and prompts, and the last prompt token of
                 balanced request / plain prompts (the study's training data); every block at
                 once for the crosscoders across layers; the labelled contrast set
  5. train       per crosscoder seed: the study's dedicated-feature crosscoder (DFC: TopK, its
                 L1 objective, free decoder norms, 32 latents exclusive to each model, AuxK),
                 plain BatchTopK, Matryoshka BatchTopK, each on both kinds of data, and
                 crosscoders across all blocks of both models (plain and dedicated)
  6. diff        Cohen's d and AUROC on the contrast set, relative norms, norms per block
  7. steer       on the eval set where the RL model's unsteered correctness is in 15-40%:
                 the top latent by Cohen's d (for a DFC, of its RL-exclusive partition) scaled
                 by α ∈ {0, 1, 2, 4, 8, 16, 32, 64} at the last prompt token during prefill,
                 paired (the other model runs in lockstep and fills the other source), for
                 every crosscoder and seed; clamped instead where it rarely fires; and for the
                 first seed the controls (a frequency-matched random latent, a random
                 RL-exclusive latent, the top base-exclusive latent in the base model, the RL
                 direction transplanted into the base model, the top latent on plain prompts)
                 and the top N latents together (N = 2, 4, 8, 16, 32)
  8. cost        the language cost of each first-seed steering: KL(clean ‖ steered) on general
                 text with the same edit at every position (llama2c_organism text-cost)
  9. report      report.py: intervals corrected for the number of cells, tables, the figure

Every step's output lands in DIR and a step whose output exists is not run again (delete it to
redo); DIR/phases.json records each phase's seconds. --smoke shrinks every step to about a
minute of work for CI: its numbers mean nothing, only that every piece runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ALPHAS = [0, 1, 2, 4, 8, 16, 32, 64]
TOP_N = [2, 4, 8, 16, 32]
EVAL_SETS = ["eval_near", "eval_mid", "eval_far", "eval_farther"]
TARGET = (0.15, 0.40)  # the unsteered correctness wanted on the steering set (the study: 22.5%)
# Below this share of steered rows with f_j > 0 a `scale` cell tests little (the report says so
# beside it); every top latent is also steered by clamping.
CLAMP_BELOW = 0.5
BLOCKS = 5


def log(message: str) -> None:
    print(f"run_organism: {message}", flush=True)


def run(command: list, quiet: bool = False) -> None:
    log("$ " + " ".join(map(str, command)))
    start = time.time()
    subprocess.run([str(c) for c in command], check=True,
                   stdout=subprocess.DEVNULL if quiet else None)
    log(f"  done in {time.time() - start:.0f} s")


def run_all(commands: list[list], jobs: int) -> None:
    """Independent commands, `jobs` at a time (each engine run is single-threaded)."""
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for future in [pool.submit(run, c, True) for c in commands]:
            future.result()


class Phases:
    """Seconds per phase, written to DIR/phases.json as they finish."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds = json.loads(path.read_text()) if path.exists() else {}

    def __call__(self, name: str, work) -> None:
        start = time.time()
        work()
        took = time.time() - start
        if took > 1 or name not in self.seconds:
            self.seconds[name] = round(took, 1)
        self.path.write_text(json.dumps(self.seconds, indent=2) + "\n")


def crosscoders(smoke: bool, seeds: int) -> list[dict]:
    """The crosscoders of the protocol: kind × data × seed."""
    latents, steps = (128, 60) if smoke else (512, 1500)
    kinds = {
        # The study's DFC: TopK with its L1 objective, free decoder norms, 32 of 512 latents
        # exclusive to each model (the study: 5% per model), AuxK on.
        "dfc": ["--activation", "topk", "--k", 8, "--exclusive", latents // 16,
                "--study-dfc-l1", "1e-3,2e-4", "--free-decoder-norms"],
        "batchtopk": ["--activation", "batchtopk", "--k", 8],
        "matryoshka": ["--activation", "batchtopk", "--k", 8, "--matryoshka",
                       f"{latents // 16},{latents * 3 // 16},{latents * 3 // 4}"],
    }
    out = []
    for seed in range(seeds):
        for data in ("every", "last"):
            for kind, flags in kinds.items():
                if smoke and data == "last" and kind != "dfc":
                    continue
                out.append({"name": f"{kind}_{data}_s{seed}", "kind": kind, "data": data,
                            "seed": seed, "latents": latents, "layers": "one",
                            "steps": steps if data == "every" else max(60, steps // 2),
                            "flags": flags, "exclusive": latents // 16 if kind == "dfc" else 0})
        if seed == 0:  # not steered (below), so one seed
            models = ",".join(["0"] * BLOCKS + ["1"] * BLOCKS)
            for kind, exclusive in (("multilayer", 0), ("multilayer_dfc", latents // 8)):
                if smoke and exclusive:
                    continue
                out.append({"name": f"{kind}_every_s{seed}", "kind": kind, "data": "every",
                            "seed": seed, "latents": 2 * latents, "layers": "all",
                            "steps": steps, "exclusive": exclusive,
                            "flags": ["--activation", "batchtopk", "--k", 16, "--source-models",
                                      models, "--exclusive", exclusive]})
    return out


def partition(config: dict, source: int) -> list[int]:
    """Latents exclusive to a model (shared latents first, then one block per model:
    crosscoder/config.hpp)."""
    blocks = config.get("exclusive") or []
    if not blocks:
        return []
    first = config["latents"] - sum(blocks) + sum(blocks[:source])
    return list(range(first, first + blocks[source]))


def by_cohens_d(diff: dict, candidates) -> list[int]:
    d = {l["index"]: l.get("cohens_d", 0.0) for l in diff["latents"]}
    return sorted(candidates, key=lambda j: (-d[j], j))


def frequency_matched(diff: dict, target: int, exclude: set[int], rng) -> int:
    """A random latent among the five whose firing frequency on the contrast rows is nearest
    the target's (the control for 'any latent that fires this often')."""
    frequency = {l["index"]: l["frequency"] for l in diff["latents"]}
    others = sorted((j for j in frequency if j not in exclude and j != target),
                    key=lambda j: (abs(frequency[j] - frequency[target]), j))
    return int(rng.choice(others[:5]))


def clamp_unit(diff: dict, latent: int) -> float:
    """f_j's size when it fires (its mean activation when active on the contrast rows; the
    median over live latents for one that never fires there)."""
    by_index = {l["index"]: l for l in diff["latents"]}
    value = by_index[latent].get("mean_activation", 0.0)
    if value > 0:
        return float(value)
    live = [l["mean_activation"] for l in diff["latents"] if l.get("mean_activation", 0) > 0]
    return float(np.median(live)) if live else 1.0


def edit_flags(cond: dict) -> list:
    """llama2c_organism's --kind (and --units for clamp) for a condition's edit."""
    units = ["--units", ",".join(f"{u:.6g}" for u in cond["units"])] if cond["units"] else []
    return ["--kind", cond["intervention"], *units]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", required=True, help="the base llama2.c checkpoint")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--build", default=str(HERE.parents[1] / "build"),
                        help="the CMake build directory (for crosscoder and llama2c_organism)")
    parser.add_argument("--smoke", action="store_true", help="about a minute, for CI")
    parser.add_argument("--seed", type=int, default=0, help="prompts and RL")
    parser.add_argument("--seeds", type=int, default=3, help="crosscoder seeds")
    parser.add_argument("--block", type=int, help="the study's block (default: the probe's)")
    parser.add_argument("--reuse", help="a finished run's directory: reuse its prompts and RL model")
    parser.add_argument("--jobs", type=int, default=2, help="engine runs at once")
    parser.add_argument("--text-sequences", type=int, default=32,
                        help="general-text sequences for the language cost")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.text_sequences = 1, 4

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
    phase = Phases(out / "phases.json")
    prompts, rl = out / "prompts", out / "rl.bin"
    if args.reuse:
        prompts, rl = Path(args.reuse) / "prompts", Path(args.reuse) / "rl.bin"
        (out / "rl.bin.json").write_text((Path(args.reuse) / "rl.bin.json").read_text())
    models = {0: model, 1: rl}  # crosscoder source order: base, RL

    # 1-2: prompts and the RL fine-tune
    def make_prompts():
        if not (prompts / "text.npy").exists():
            run([python, HERE / "make_prompts.py", model, prompts, "--scale",
                 0.1 if args.smoke else 1.0, "--seed", args.seed])
    phase("prompts", make_prompts)

    def finetune():
        if not rl.exists():
            steps = ["--steps", 30, "--batch", 32] if args.smoke else []
            run([python, HERE / "rl_finetune.py", model, prompts, rl, "--seed", args.seed, *steps])
    phase("rl", finetune)

    # 3: where the behaviour lives
    probe_data, probe_path = out / "capture_contrast_blocks", out / "probe.json"

    def probe():
        if not (probe_data / "manifest.json").exists():
            run([organism, "capture", "--base", model, "--rl", rl, "--blocks", "all",
                 "--prompts", prompts / "contrast.npy", "--positions", "last", "--out",
                 probe_data])
        if not probe_path.exists():
            run([python, HERE / "probe.py", probe_data, prompts / "contrast.npy", probe_path])
    phase("probe", probe)
    probes = json.loads(probe_path.read_text())["probes"]
    # The block where RL changed the most: the RL model's probes' gain over the base model's
    # (call and tool together; ties: the earlier block). The cue is often the last token, so
    # the tool is readable early in both models; what RL adds is where it is used.
    def gain(b):
        rl_probe, base_probe = probes["rl"][str(b)], probes["base"][str(b)]
        return sum(rl_probe[k] - base_probe[k] for k in ("call", "tool"))
    block = args.block if args.block is not None else max(range(BLOCKS),
                                                          key=lambda b: (gain(b), -b))
    log(f"block {block}: RL-model probes "
        + ", ".join(f"{b}: call {probes['rl'][str(b)]['call']:.2f} tool "
                    f"{probes['rl'][str(b)]['tool']:.2f}" for b in range(BLOCKS)))

    # 4: captures
    data = {"every": out / f"capture_every_b{block}", "last": out / f"capture_last_b{block}",
            "all_blocks": out / "capture_every_blocks",
            "contrast": out / f"capture_contrast_b{block}"}

    def capture():
        jobs = []
        if not (data["every"] / "manifest.json").exists():
            jobs.append(["--block", block, "--prompts", prompts / "text.npy", "--prompts",
                         prompts / "capture_train.npy", "--positions", "all", "--out",
                         data["every"]])
        if not (data["last"] / "manifest.json").exists():
            jobs.append(["--block", block, "--prompts", prompts / "capture_last.npy",
                         "--positions", "last", "--out", data["last"]])
        if not (data["all_blocks"] / "manifest.json").exists():
            jobs.append(["--blocks", "all", "--prompts", prompts / "text.npy", "--prompts",
                         prompts / "capture_train.npy", "--positions", "all", "--out",
                         data["all_blocks"]])
        if not (data["contrast"] / "manifest.json").exists():
            jobs.append(["--block", block, "--prompts", prompts / "contrast.npy",
                         "--positions", "last", "--out", data["contrast"]])
        run_all([[organism, "capture", "--base", model, "--rl", rl, *j] for j in jobs], args.jobs)
    phase("capture", capture)

    # 5-6: crosscoders and their diffs
    sweep = crosscoders(args.smoke, args.seeds)
    folder = out / "crosscoders"
    folder.mkdir(exist_ok=True)

    def train():
        commands = []
        for c in sweep:
            path = folder / f"{c['name']}.safetensors"
            if path.exists():
                continue
            source = data["all_blocks"] if c["layers"] == "all" else data[c["data"]]
            rows = json.loads((source / "manifest.json").read_text())["sources"][0]["shards"]
            held_out = min(4096, sum(s["rows"] for s in rows) // 8)
            commands.append([cli, "train", "--data", source / "manifest.json", "--latents",
                             c["latents"], *c["flags"], "--steps", c["steps"], "--batch", 1024,
                             "--lr", 1e-3, "--warmup", 50, "--validation-rows", held_out,
                             "--seed", c["seed"], "--out", path, "--checkpoint-every", 100000])
        # Each training uses the OpenMP threads; one at a time.
        for command in commands:
            run(command, quiet=True)
    phase("train", train)

    def diff():
        commands = []
        for c in sweep:
            path = folder / f"{c['name']}.safetensors"
            if not path.with_suffix(".diff.json").exists():
                contrast = probe_data if c["layers"] == "all" else data["contrast"]
                commands.append([cli, "diff", path, "--data", contrast / "manifest.json",
                                 "--json", path.with_suffix(".diff.json"), "--top", 5,
                                 "--examples", 0])
        run_all(commands, args.jobs)
    phase("diff", diff)
    diffs = {c["name"]: json.loads((folder / f"{c['name']}.diff.json").read_text())
             for c in sweep}

    # 7: steering. First the unsteered models on every eval set, to pick the steering set.
    convention = prompts / "convention.json"
    steering = out / "steering"
    steering.mkdir(exist_ok=True)
    baseline = {}

    def unsteered():
        commands = []
        for name in EVAL_SETS:
            for which, path in (("base", model), ("rl", rl)):
                result = steering / f"unsteered_{which}_{name}.json"
                if not result.exists():
                    commands.append([organism, "steer", "--model", path, "--block", block,
                                     "--latents", "none", "--prompts", prompts / f"{name}.npy",
                                     "--convention", convention, "--subset", "all", "--out",
                                     result])
        run_all(commands, args.jobs)
    phase("unsteered", unsteered)
    for name in EVAL_SETS:
        for which in ("base", "rl"):
            cell = json.loads((steering / f"unsteered_{which}_{name}.json").read_text())
            tools = np.array(cell["tools"])
            baseline[f"{which}/{name}"] = float(
                np.mean(np.array(cell["cells"][0]["correct"])[tools >= 0]))
    in_range = [n for n in EVAL_SETS if TARGET[0] <= baseline[f"rl/{n}"] <= TARGET[1]]
    steer_set = min(in_range or EVAL_SETS,
                    key=lambda n: abs(baseline[f"rl/{n}"] - sum(TARGET) / 2))
    log(f"steering on {steer_set}: RL-model request correctness "
        + ", ".join(f"{n} {baseline['rl/' + n]:.2f}" for n in EVAL_SETS)
        + ("" if in_range else f" (none in {TARGET}: the nearest)"))

    rng = np.random.default_rng(args.seed)
    conditions = []

    def condition(name, c, model_source, source, latents, subset="request", kind="scale",
                  units=None, role="control"):
        conditions.append({"condition": name, "crosscoder": c["name"], "kind_of_crosscoder":
                           c["kind"], "data": c["data"], "seed": c["seed"], "model":
                           "rl" if model_source == 1 else "base", "source": source,
                           "latents": [int(j) for j in latents], "subset": subset,
                           "intervention": kind, "units": units, "role": role,
                           "result": str(steering / f"{name}.json")})

    for c in sweep:
        if c["layers"] == "all":
            continue  # an acausal encoder reads later blocks: not steerable during prefill
        d = diffs[c["name"]]
        rl_exclusive = partition(d["config"], 1)
        candidates = rl_exclusive if c["kind"] == "dfc" else list(range(d["n_latents"]))
        ranked = by_cohens_d(d, candidates)
        top = ranked[0]
        n = c["name"]
        condition(f"{n}.top", c, 1, 1, [top], role="top")
        # Scaling changes nothing where f_j = 0: clamping to the latent's typical activation
        # times α tests its direction there.
        condition(f"{n}.top_clamp", c, 1, 1, [top], kind="clamp",
                  units=[clamp_unit(d, top)], role="top_clamp")
        if c["seed"] != 0:
            continue
        all_ranked = by_cohens_d(d, range(d["n_latents"]))
        matched = frequency_matched(d, top, set(all_ranked[:max(TOP_N)]), rng)
        condition(f"{n}.frequency_matched", c, 1, 1, [matched])
        condition(f"{n}.top_on_plain", c, 1, 1, [top], subset="plain")
        condition(f"{n}.transplant_to_base", c, 0, 1, [top])
        if c["kind"] == "dfc":
            condition(f"{n}.random_rl_exclusive", c, 1, 1, [int(rng.choice(ranked[1:]))])
            base_top = by_cohens_d(d, partition(d["config"], 0))[0]
            condition(f"{n}.base_exclusive_in_base", c, 0, 0, [base_top])
        for count in TOP_N:
            if count <= len(ranked):
                condition(f"{n}.top{count}", c, 1, 1, ranked[:count], role=f"top{count}")

    def steer():
        commands = []
        for cond in conditions:
            result = Path(cond["result"])
            if result.exists():
                continue
            source = cond["source"]
            model_path = models[1] if cond["model"] == "rl" else models[0]
            # The other source's model runs in lockstep and fills the other source; for the
            # transplant (the base model steered as source 1) the base model fills source 0.
            partner = models[0] if cond["model"] == "base" and source == 1 else models[1 - source]
            extra = edit_flags(cond)
            commands.append([organism, "steer", "--model", model_path, "--paired-model",
                             partner, "--crosscoder", folder / f"{cond['crosscoder']}.safetensors",
                             "--source", source, "--block", block, "--latents",
                             ",".join(map(str, cond["latents"])), "--alphas",
                             ",".join(map(str, ALPHAS)), "--prompts",
                             prompts / f"{steer_set}.npy", "--convention", convention,
                             "--subset", cond["subset"], *extra, "--out", result])
        run_all(commands, args.jobs)
    phase("steer", steer)

    # 8: the language cost of the first seed's steerings in the RL model (requests)
    costs = out / "text_cost"
    costs.mkdir(exist_ok=True)

    def cost():
        commands = []
        for cond in conditions:
            if cond["seed"] != 0 or cond["model"] != "rl" or cond["subset"] != "request":
                continue
            result = costs / Path(cond["result"]).name
            cond["cost"] = str(result)
            if result.exists():
                continue
            extra = edit_flags(cond)
            commands.append([organism, "text-cost", "--model", models[1], "--paired-model",
                             models[0], "--crosscoder",
                             folder / f"{cond['crosscoder']}.safetensors", "--source", 1,
                             "--block", block, "--latents", ",".join(map(str, cond["latents"])),
                             "--alphas", ",".join(map(str, ALPHAS)), *extra, "--text",
                             prompts / "text.npy", "--sequences", args.text_sequences,
                             "--out", result])
        run_all(commands, args.jobs)
    phase("text_cost", cost)

    plan = {"block": block, "probes": probes, "steer_set": steer_set, "target": TARGET,
            "alphas": ALPHAS, "baseline_request_correct": baseline,
            "crosscoders": [{k: v for k, v in c.items() if k != "flags"} |
                            {"flags": list(map(str, c["flags"]))} for c in sweep],
            "conditions": conditions, "smoke": args.smoke, "clamp_below": CLAMP_BELOW}
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")

    # 9: the report
    phase("report", lambda: run([python, HERE / "report.py", out]))
    log(f"finished in {time.time() - started:.0f} s: {out / 'report.md'}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
