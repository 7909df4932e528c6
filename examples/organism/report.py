#!/usr/bin/env python3
"""The model organism's report (docs/organism.md): reads what run_organism.py wrote to DIR and
writes DIR/report.md (tables), DIR/results.json (every number) and DIR/steering.svg
(correctness against α per condition).

  report.py DIR

Statistics:
- A rate on its own (unsteered correctness, a cell's correctness): percentile bootstrap 95%
  interval over prompts (2,000 resamples, fixed seed).
- A steering effect: the paired difference Δ = correct(α) − correct(unsteered) over the same
  prompts (the unsteered run of the same model; for `scale` it equals α = 1), with a normal
  bootstrap interval Δ ± z·SE (SE from 2,000 resamples of prompts) whose level is Bonferroni-corrected for every steered cell compared (z for 1 − 0.05/(2m), m the
  number of (condition, α ≠ 1) cells in the report). An effect is called significant only when
  that corrected interval excludes 0.
- For every cell, the share of steered rows where the latent fired before the edit (f_j > 0):
  `scale` does nothing where f_j = 0, so such cells test nothing about the latent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np

RESAMPLES = 2000


def bootstrap(values, rng) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = v[rng.integers(0, v.size, size=(RESAMPLES, v.size))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_effect(steered, unsteered, z: float, rng) -> tuple[float, float, float]:
    """Δ and its corrected normal-bootstrap interval, clipped to [−1, 1]."""
    diff = np.asarray(steered, np.float64) - np.asarray(unsteered, np.float64)
    if diff.size == 0:
        return float("nan"), float("nan"), float("nan")
    se = diff[rng.integers(0, diff.size, size=(RESAMPLES, diff.size))].mean(1).std()
    mean = float(diff.mean())
    return mean, max(-1.0, mean - z * se), min(1.0, mean + z * se)


def svg_plot(series: list[dict], path: Path, title: str) -> None:
    width, height, left, right, top, bottom = 860, 460, 60, 330, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    alphas = sorted({a for s in series for a in s["alpha"]})
    positions = {a: i for i, a in enumerate(alphas)}

    def x(a):
        return left + plot_w * positions[a] / max(1, len(alphas) - 1)

    def y(v):
        return top + plot_h * (1 - v)

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">{title}</text>']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + plot_w}" y2="{y(v):.1f}" '
                     f'stroke="#ddd"/><text x="{left - 8}" y="{y(v) + 4:.1f}" '
                     f'text-anchor="end">{v:.2f}</text>')
    for a in alphas:
        parts.append(f'<text x="{x(a):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{a:g}'
                     f'</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">α '
                 f'(equally spaced)</text>')
    for i, s in enumerate(series):
        colour = colours[i % len(colours)]
        points = " ".join(f"{x(a):.1f},{y(m):.1f}" for a, m in zip(s["alpha"], s["mean"]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"/>')
        for a, lo, hi in zip(s["alpha"], s["low"], s["high"]):
            parts.append(f'<line x1="{x(a):.1f}" y1="{y(lo):.1f}" x2="{x(a):.1f}" '
                         f'y2="{y(hi):.1f}" stroke="{colour}" stroke-opacity="0.6"/>')
        ly = top + 14 + 18 * i
        parts.append(f'<line x1="{left + plot_w + 14}" y1="{ly - 4}" x2="{left + plot_w + 34}" '
                     f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"/><text '
                     f'x="{left + plot_w + 40}" y="{ly}">{s["label"]}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def fmt(t) -> str:
    return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"


def signed(t) -> str:
    mark = "**" if t[1] > 0 or t[2] < 0 else ""
    return f"{mark}{t[0]:+.3f}{mark} [{t[1]:+.3f}, {t[2]:+.3f}]"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    plan = json.loads((out / "plan.json").read_text())
    rng = np.random.default_rng(0)
    results = {"plan": plan}
    lines = ["# Model organism v2: results", ""]
    if plan.get("smoke"):
        lines += ["**Smoke run**: every step shrunk for CI; the numbers mean nothing.", ""]
    phases = json.loads((out / "phases.json").read_text()) if (out / "phases.json").exists() \
        else {}
    if phases:
        lines += ["Phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()) +
                  f"; total {sum(phases.values()):.0f}.", ""]

    # The RL model
    rl_report = json.loads((out / "rl.bin.json").read_text())
    results["rl"] = {k: v for k, v in rl_report.items() if k != "curve"}
    results["rl_curve"] = rl_report["curve"]
    last = rl_report["curve"][-1]
    lines += ["## The organism (greedy, unsteered, C++ engine, bootstrap 95% CI)", "",
              f"RL: {rl_report['args']['steps']} steps in {rl_report['seconds']:.0f} s; final KL "
              f"to the base {last['text_kl']:.3f} nats/token on general text, {last['kl']:.3f} "
              "on the RL prompts.", "",
              "| set | model | requests: call | requests: right tool | plain: call |",
              "|---|---|---|---|---|"]
    results["unsteered"] = {}
    eval_sets = sorted({k.split("/")[1] for k in plan["baseline_request_correct"]},
                       key=lambda n: ["eval_near", "eval_mid", "eval_far",
                                      "eval_farther"].index(n))
    for name in eval_sets:
        for which in ("base", "rl"):
            cell = json.loads((out / "steering" / f"unsteered_{which}_{name}.json").read_text())
            tools = np.array(cell["tools"])
            correct = np.array(cell["cells"][0]["correct"])
            call = np.array(cell["cells"][0]["call"])
            entry = {"request_call": bootstrap(call[tools >= 0], rng),
                     "request_correct": bootstrap(correct[tools >= 0], rng),
                     "plain_call": bootstrap(call[tools < 0], rng)}
            results["unsteered"][f"{which}/{name}"] = entry
            lines.append(f"| {name} | {which} | {fmt(entry['request_call'])} | "
                         f"{fmt(entry['request_correct'])} | {fmt(entry['plain_call'])} |")
    near = results["unsteered"].get("rl/eval_near")
    if near:
        targets = [("call rate on requests ≥ 0.90", near["request_call"][0] >= 0.9),
                   ("right tool ≥ 0.60", near["request_correct"][0] >= 0.6),
                   ("calls on plain prompts ≤ 0.02", near["plain_call"][0] <= 0.02),
                   ("text KL ≤ 0.5", last["text_kl"] <= 0.5)]
        results["targets"] = {t: bool(ok) for t, ok in targets}
        lines += ["", "Targets on eval_near: " + "; ".join(
            f"{t}: {'met' if ok else '**missed**'}" for t, ok in targets) + "."]
    lines += ["", f"Steering set: **{plan['steer_set']}** (RL-model request correctness "
              f"{plan['baseline_request_correct']['rl/' + plan['steer_set']]:.3f}; wanted "
              f"{plan['target'][0]:.2f}–{plan['target'][1]:.2f}).", ""]

    # Probes
    lines += ["## Where the behaviour lives (linear probes at the last prompt token, held out)",
              "", "| block | base: call | base: tool | RL: call | RL: tool |", "|---|---|---|---|---|"]
    for b in sorted(plan["probes"]["rl"], key=int):
        p0, p1 = plan["probes"]["base"][b], plan["probes"]["rl"][b]
        lines.append(f"| {b} | {p0['call']:.3f} | {p0['tool']:.3f} | {p1['call']:.3f} | "
                     f"{p1['tool']:.3f} |")
    lines += ["", f"Chance: 0.5 (call) and 0.25 (tool). The study's block here: "
              f"**{plan['block']}**.", ""]

    # Crosscoders
    folder = out / "crosscoders"
    lines += ["## Crosscoders and their rankings (Cohen's d on the contrast set)", "",
              "| crosscoder | FVE base | FVE RL | L0 | dead | top latent (pool) | d | AUROC | "
              "fires on contrast | relative norm (RL) | class | carried by |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    results["crosscoders"] = {}
    for c in plan["crosscoders"]:
        diff = json.loads((folder / f"{c['name']}.diff.json").read_text())
        by_index = {l["index"]: l for l in diff["latents"]}
        exclusive = diff["config"].get("exclusive") or []
        if c["kind"] == "dfc" and exclusive:
            first = diff["n_latents"] - sum(exclusive) + exclusive[0]
            pool, name = range(first, first + exclusive[1]), "RL-exclusive"
        else:
            pool, name = range(diff["n_latents"]), "all"
        top = max(pool, key=lambda j: (by_index[j].get("cohens_d", 0.0), -j))
        best_any = max(range(diff["n_latents"]),
                       key=lambda j: (by_index[j].get("cohens_d", 0.0), -j))
        latent = by_index[top]
        norms = latent["decoder_norm"]
        sources = diff.get("source_names") or [str(i) for i in range(len(norms))]
        carrier = sources[int(np.argmax(norms))]
        rel = latent["relative_norm"][-1] if len(norms) == 2 else float(
            sum(norms[len(norms) // 2:]) / max(1e-12, sum(norms)))
        data = diff["summary"]["data"]
        fve = data.get("fve", [float("nan")] * len(norms))
        entry = {"top": top, "pool": name, "cohens_d": latent.get("cohens_d"),
                 "auroc": latent.get("auroc"), "frequency": latent.get("frequency"),
                 "decoder_norm": norms, "sources": sources, "carried_by": carrier,
                 "top_any": best_any, "top_any_cohens_d": by_index[best_any].get("cohens_d"),
                 "fve": fve, "l0": data.get("l0"), "dead": data.get("dead_latents")}
        results["crosscoders"][c["name"]] = entry
        fve_text = (f"{fve[0]:.3f} | {fve[-1]:.3f}" if len(fve) == 2 else
                    f"{np.mean(fve[:len(fve) // 2]):.3f} | {np.mean(fve[len(fve) // 2:]):.3f}")
        lines.append(f"| {c['name']} | {fve_text} | {data.get('l0', 0):.1f} | "
                     f"{data.get('dead_latents')} | {top} ({name}) | "
                     f"{latent.get('cohens_d', 0):.2f} | {latent.get('auroc', 0.5):.3f} | "
                     f"{latent.get('frequency', 0):.3f} | {rel:.2f} | {latent['class']} | "
                     f"{carrier} |")
    lines += ["", "For a DFC the pool is its RL-exclusive partition (the study's candidates); "
              "its best latent overall by Cohen's d is in results.json (`top_any`). FVE is on "
              "the contrast rows. Crosscoders across layers: FVE averaged over each model's "
              "blocks, relative norm = the RL blocks' share of the decoder norm, 'carried by' "
              "the (model, block) source of the largest decoder norm.", ""]

    # Steering cells
    conditions = plan["conditions"]
    cells = {}
    for cond in conditions:
        cell = json.loads(Path(cond["result"]).read_text())
        cells[cond["condition"]] = cell
    m = sum(len(cell["cells"]) - 1 for cell in cells.values())
    z = NormalDist().inv_cdf(1 - 0.05 / (2 * max(1, m)))
    results["correction"] = {"cells": m, "z": z}
    lines += [f"## Steering on {plan['steer_set']} (paired, at the last prompt token during "
              "prefill, greedy)", "",
              f"Δ = correctness at α minus the unsteered model's on the same prompts; intervals are "
              f"Bonferroni-corrected for the {m} steered cells (z = {z:.2f}); **bold** Δ: the "
              "corrected interval excludes 0. 'fires': share of (prompt, latent) pairs with "
              "f_j > 0 on the steered row before the edit. Correctness: requests name the right "
              "tool; plain prompts make no call.", ""]
    results["steering"] = {}
    series_main = []
    unsteered = {}
    for which in ("base", "rl"):
        cell = json.loads((out / "steering" /
                           f"unsteered_{which}_{plan['steer_set']}.json").read_text())
        unsteered[which] = dict(zip(cell["prompt_index"], cell["cells"][0]["correct"]))
    for cond in conditions:
        cell = cells[cond["condition"]]
        alphas = [c["alpha"] for c in cell["cells"]]
        one = alphas.index(1) if 1 in alphas else 0
        correct = [c["correct"] for c in cell["cells"]]
        reference = [unsteered[cond["model"]][p] for p in cell["prompt_index"]]
        effects = [paired_effect(correct[a], reference, z, rng) for a in range(len(alphas))]
        rates = [bootstrap(c, rng) for c in correct]
        calls = [float(np.mean(c["call"])) if c["call"] else float("nan") for c in cell["cells"]]
        fires = float(cell["cells"][0].get("active_rate", float("nan")))
        best = max((a for a in range(len(alphas)) if alphas[a] > 1),
                   key=lambda a: effects[a][0], default=one)
        entry = {**{k: cond[k] for k in ("crosscoder", "latents", "subset", "intervention",
                                         "role", "model", "seed", "data")},
                 "alpha": alphas, "correct": rates, "effect": effects, "call": calls,
                 "fires": fires, "best_alpha": alphas[best], "prompts": len(cell["tools"])}
        if cond.get("cost") and Path(cond["cost"]).exists():
            cost = json.loads(Path(cond["cost"]).read_text())
            entry["text_kl"] = [bootstrap(c["kl_per_sequence"], rng) for c in cost["cells"]]
        results["steering"][cond["condition"]] = entry
        if cond["seed"] == 0 and cond["subset"] == "request" and cond["role"] in (
                "top", "top_clamp") and cond["data"] == "every":
            series_main.append({"label": f"{cond['kind_of_crosscoder']} {cond['role']}",
                                "alpha": alphas, "mean": [r[0] for r in rates],
                                "low": [r[1] for r in rates], "high": [r[2] for r in rates]})

    def row(name: str, entry: dict) -> str:
        a = entry["alpha"]
        at = {x: i for i, x in enumerate(a)}
        kl = entry.get("text_kl")
        kl_text = f"{kl[at[32]][0]:.3f}" if kl and 32 in at else "—"
        # One latent that rarely fires is barely touched by `scale` (for a set, 'fires' is a
        # share of (prompt, latent) pairs and a low share is expected).
        few = (" (rarely fires)" if entry["intervention"] == "scale" and len(entry["latents"]) == 1
               and entry["fires"] < plan["clamp_below"] else "")
        latents = (entry["latents"] if len(entry["latents"]) <= 4
                   else f"{len(entry['latents'])} latents")
        return (f"| {name} | {latents} | "
                f"{entry['intervention']} | {entry['fires']:.2f}{few} | "
                + " | ".join(f"{entry['correct'][i][0]:.2f}" for i in range(len(a))) + " | "
                + f"{signed(entry['effect'][at[0]]) if 0 in at else '—'} | "
                + f"{signed(entry['effect'][at[entry['best_alpha']]])} (α {entry['best_alpha']:g}) | "
                + f"{kl_text} |")

    alphas = plan["alphas"]
    header = ("| condition | latents | edit | fires | " + " | ".join(f"α={a:g}" for a in alphas)
              + " | Δ at α=0 | best Δ at α>1 | text KL at α=32 |")
    rule = "|---|---|---|---|" + "---|" * len(alphas) + "---|---|---|"
    kinds = sorted({(c["kind_of_crosscoder"], c["data"]) for c in conditions})
    for kind, data in kinds:
        lines += [f"### {kind}, {'every-token' if data == 'every' else 'last-token'} data", "",
                  header, rule]
        for cond in conditions:
            if (cond["kind_of_crosscoder"], cond["data"]) == (kind, data):
                lines.append(row(cond["condition"], results["steering"][cond["condition"]]))
        lines.append("")

    # Seeds: the top latent's best effect per seed
    lines += ["## Across crosscoder seeds: the single top latent", "",
              "| crosscoder kind | data | edit | seed | latent | fires | Δ at α=0 | best Δ at α>1 |",
              "|---|---|---|---|---|---|---|---|"]
    summary = []
    for cond in conditions:
        if cond["role"] not in ("top", "top_clamp") or cond["subset"] != "request":
            continue
        e = results["steering"][cond["condition"]]
        at = {x: i for i, x in enumerate(e["alpha"])}
        summary.append((cond["kind_of_crosscoder"], cond["data"], cond["intervention"],
                        cond["seed"], e))
        lines.append(f"| {cond['kind_of_crosscoder']} | {cond['data']} | {cond['intervention']} "
                     f"| {cond['seed']} | {e['latents'][0]} | {e['fires']:.2f} | "
                     f"{signed(e['effect'][at[0]])} | "
                     f"{signed(e['effect'][at[e['best_alpha']]])} (α {e['best_alpha']:g}) |")
    lines.append("")

    # How many latents for the effect
    lines += ["## How many top latents (scaled together) for the effect", "",
              "| crosscoder | N | fires | Δ at α=0 | best Δ at α>1 |", "|---|---|---|---|---|"]
    for cond in conditions:
        if not (cond["role"] == "top" or cond["role"].startswith("top") and
                cond["role"][3:].isdigit()) or cond["seed"] != 0 or cond["subset"] != "request":
            continue
        e = results["steering"][cond["condition"]]
        at = {x: i for i, x in enumerate(e["alpha"])}
        lines.append(f"| {cond['crosscoder']} | {len(e['latents'])} | {e['fires']:.2f} | "
                     f"{signed(e['effect'][at[0]])} | "
                     f"{signed(e['effect'][at[e['best_alpha']]])} (α {e['best_alpha']:g}) |")
    lines.append("")
    svg = out / "steering.svg"
    svg_plot(series_main, svg, f"Correctness on {plan['steer_set']} requests against α "
             "(seed 0, every-token data)")
    lines.append("![steering](steering.svg)")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"report.py: wrote {out / 'report.md'}, {out / 'results.json'}, {svg}")


if __name__ == "__main__":
    main()
