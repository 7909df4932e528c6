#!/usr/bin/env python3
"""The model organism's report (docs/organism.md): reads what run_organism.py wrote to DIR and
writes DIR/report.md (tables), DIR/results.json (every number) and DIR/steering.svg (tool-call
correctness against α per condition, with bootstrap 95% intervals).

  report.py DIR [--unpaired]

--unpaired reports the unpaired steering run (plan.unpaired.json) into report.unpaired.md,
results.unpaired.json and steering.unpaired.svg.

Intervals are percentile bootstraps over prompts (2,000 resamples, fixed seed). Each steering
cell also reports on how many steered rows the steered latents were active (f_j > 0, computed
before steering as the Steerer does): a latent with f_j = 0 on a row is not touched by `scale`,
so a cell where it is rarely active says nothing about that latent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

RESAMPLES = 2000


def bootstrap(values, rng) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = v[rng.integers(0, v.size, size=(RESAMPLES, v.size))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def ranking_comparison(diff: dict) -> dict:
    """Cohen's d ranking against the relative-norm ranking (of the fine-tuned model)."""
    latents = diff["latents"]
    d = np.array([l.get("cohens_d", 0.0) for l in latents])
    rel = np.array([l["relative_norm"][1] for l in latents])
    by_d, by_rel = np.argsort(-d), np.argsort(-rel)
    top = int(by_d[0])
    return {"spearman": spearman(d, rel),
            "top10_overlap": len(set(by_d[:10].tolist()) & set(by_rel[:10].tolist())),
            "top_cohens_d_latent": top, "its_cohens_d": float(d[top]),
            "its_auroc": float(latents[top].get("auroc", float("nan"))),
            "its_relative_norm": float(rel[top]), "its_class": latents[top]["class"],
            "its_rank_by_relative_norm": int(np.flatnonzero(by_rel == top)[0]) + 1}


def svg_plot(series: list[dict], path: Path, title: str) -> None:
    width, height, left, right, top, bottom = 760, 420, 60, 230, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    alphas = sorted({a for s in series for a in s["alpha"]})
    xs = {a: left + plot_w * i / max(1, len(alphas) - 1) for i, a in enumerate(alphas)}

    def y(v):
        return top + plot_h * (1 - v)

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#7f7f7f", "#17becf", "#bcbd22"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">{title}</text>']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="#ddd"/><text x="{left - 8}" y="{y(v) + 4:.1f}" '
                     f'text-anchor="end">{v:.2f}</text>')
    for a, x in xs.items():
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{a:g}'
                     '</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">'
                 'α (scale at the last prompt token; categorical axis)</text>')
    parts.append(f'<text x="16" y="{top + plot_h / 2}" transform="rotate(-90 16 '
                 f'{top + plot_h / 2})" text-anchor="middle">tool-call correctness</text>')
    for i, s in enumerate(series):
        colour = colours[i % len(colours)]
        band = [(xs[a], y(hi)) for a, hi in zip(s["alpha"], s["high"])] + \
               [(xs[a], y(lo)) for a, lo in reversed(list(zip(s["alpha"], s["low"])))]
        parts.append('<polygon points="' + " ".join(f"{px:.1f},{py:.1f}" for px, py in band) +
                     f'" fill="{colour}" fill-opacity="0.12" stroke="none"/>')
        line = " ".join(f"{xs[a]:.1f},{y(m):.1f}" for a, m in zip(s["alpha"], s["mean"]))
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" '
                     'stroke-width="2"/>')
        ly = top + 16 * i
        parts.append(f'<line x1="{left + plot_w + 12}" x2="{left + plot_w + 30}" y1="{ly}" '
                     f'y2="{ly}" stroke="{colour}" stroke-width="2"/><text '
                     f'x="{left + plot_w + 34}" y="{ly + 4}">{s["label"]}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    args = sys.argv[1:]
    unpaired = "--unpaired" in args
    args = [a for a in args if a != "--unpaired"]
    if len(args) != 1:
        sys.exit(__doc__)
    out = Path(args[0])
    suffix = ".unpaired" if unpaired else ""
    plan = json.loads((out / f"plan{suffix}.json").read_text())
    rng = np.random.default_rng(0)
    results = {"plan": plan}
    lines = ["# Model organism: results", ""]
    if plan.get("smoke"):
        lines += ["**Smoke run**: every step shrunk for CI; the numbers mean nothing.", ""]

    # RL fine-tune
    rl_report = json.loads((out / "rl.bin.json").read_text())
    results["rl"] = rl_report
    lines += ["## Tool use before and after RL (greedy, unsteered, Python evaluation)", "",
              "| set | model | request call rate | request correct | plain call rate |",
              "|---|---|---|---|---|"]
    for name in ("eval_near", "eval_mid", "eval_far"):
        for which in ("base", "rl"):
            r = rl_report[name][which]
            lines.append(f"| {name} | {which} | {r['request_call']:.3f} | "
                         f"{r['request_correct']:.3f} | {r['plain_call']:.3f} |")
    last = rl_report["curve"][-1]
    lines += ["", f"RL: {rl_report['args']['steps']} steps in {rl_report['seconds']:.0f} s; "
              f"final KL to the base {last['kl']:.3f} nats/token on the RL prompts, "
              f"{last['text_kl']:.3f} on general text.", ""]

    # Unsteered correctness from the C++ engine, with intervals
    lines += ["## Unsteered tool-call correctness (C++ engine, bootstrap 95% CI)", "",
              "| set | model | requests: correct | requests: call | plain: no call |",
              "|---|---|---|---|---|"]
    results["unsteered"] = {}
    for name in ("eval_near", "eval_mid", "eval_far"):
        for which in ("base", "rl"):
            cell = json.loads((out / "steering" / f"unsteered_{which}_{name}.json").read_text())
            tools = np.array(cell["tools"])
            correct = np.array(cell["cells"][0]["correct"])
            call = np.array(cell["cells"][0]["call"])
            req = bootstrap(correct[tools >= 0], rng)
            req_call = bootstrap(call[tools >= 0], rng)
            plain_ok = bootstrap(correct[tools < 0], rng)
            results["unsteered"][f"{which}/{name}"] = {"request_correct": req,
                                                       "request_call": req_call,
                                                       "plain_correct": plain_ok}
            fmt = lambda t: f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"  # noqa: E731
            lines.append(f"| {name} | {which} | {fmt(req)} | {fmt(req_call)} | {fmt(plain_ok)} |")
    lines.append("")

    # The crosscoder sweep and the rankings
    lines += ["## Crosscoder sweep (block " + str(plan["block"]) + " output)", "",
              "| crosscoder | k | exclusive per model | FVE base | FVE rl | L0 | dead | "
              "top latent by Cohen's d (class) | d | AUROC | its rank by relative norm | "
              "Spearman(d, rel. norm) | top-10 overlap |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    results["sweep"] = {}
    for path in sorted((out / "crosscoders").glob("*.diff.json")):
        diff = json.loads(path.read_text())
        name = path.name.replace(".diff.json", "")
        data = diff["summary"]["data"]
        comparison = ranking_comparison(diff)
        results["sweep"][name] = {"config": diff["config"], "data": data,
                                  "classes": diff["summary"]["classes"],
                                  "ranking": comparison}
        exclusive = diff["config"].get("exclusive") or [0]
        lines.append(
            f"| {name} | {diff['config'].get('k')} | {exclusive[0]} | {data['fve'][0]:.3f} | "
            f"{data['fve'][1]:.3f} | {data['l0']:.1f} | {data['dead_latents']} | "
            f"{comparison['top_cohens_d_latent']} ({comparison['its_class']}) | "
            f"{comparison['its_cohens_d']:.2f} | {comparison['its_auroc']:.3f} | "
            f"{comparison['its_rank_by_relative_norm']} | {comparison['spearman']:.2f} | "
            f"{comparison['top10_overlap']}/10 |")
    lines.append("")

    # Steering
    pairing = plan.get("pairing", "unpaired")
    pairing_text = ("paired: the other source's model ran in lockstep and its activations "
                    "entered the encoder" if pairing == "paired" else
                    "unpaired: the other source entered the encoder as its mean")
    lines += [f"## Steering on {plan['steer_set']} (scale α at the last prompt token, prefill "
              f"only, greedy; {pairing}; bootstrap 95% CI)", "", f"Encoder input: {pairing_text}.",
              "",
              f"Dedicated-feature crosscoder: {plan['main_dedicated']}; plain: "
              f"{plan['main_plain']}. Top RL-exclusive latents by Cohen's d: "
              f"{plan['rl_exclusive_ranked'][:5]}; random RL-exclusive control "
              f"{plan['random_rl_exclusive']}; top base-exclusive {plan['base_exclusive_ranked'][:3]}.",
              ""]
    header = None
    series = []
    results["steering"] = {}
    for condition in plan["conditions"]:
        cell = json.loads(Path(condition["result"]).read_text())
        alphas = [c["alpha"] for c in cell["cells"]]
        if header is None:
            header = alphas
            lines += ["| condition | latents | prompts | " +
                      " | ".join(f"α={a:g}" for a in alphas) + " |",
                      "|---|---|---|" + "---|" * len(alphas)]
        metric = "correct"
        stats = [bootstrap(c[metric], rng) for c in cell["cells"]]
        calls = [bootstrap(c["call"], rng) for c in cell["cells"]]
        # f_j > 0: per prompt, the fraction of the steered latents that were active
        n_latents = max(1, len(condition["latents"]))
        positive = [bootstrap(np.asarray(c["active"]) / n_latents, rng) if "active" in c
                    else (float("nan"),) * 3 for c in cell["cells"]]
        results["steering"][condition["condition"]] = {
            "latents": condition["latents"], "subset": condition["subset"],
            "pairing": cell.get("pairing", "unpaired"),
            "prompts": len(cell["tools"]), "alpha": alphas, "correct": stats, "call": calls,
            "f_positive": positive,
            "f_positive_by_latent": [c.get("active_rate_by_latent") for c in cell["cells"]],
            "mean_f_by_latent": [c.get("mean_f_by_latent") for c in cell["cells"]]}
        lines.append(f"| {condition['condition']} | {condition['latents']} | {len(cell['tools'])} | "
                     + " | ".join(f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in stats) + " |")
        if condition["subset"] == "request":
            series.append({"label": condition["condition"], "alpha": alphas,
                           "mean": [s[0] for s in stats], "low": [s[1] for s in stats],
                           "high": [s[2] for s in stats]})
    lines += ["", "On plain prompts `correct` means no call was made.", "",
              "Call rate (a well-formed call, right tool or not) in the same cells:", "",
              "| condition | " + " | ".join(f"α={a:g}" for a in header) + " |",
              "|---|" + "---|" * len(header)]
    for name, cell in results["steering"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
                                                 for m, lo, hi in cell["call"]) + " |")
    lines += ["", "How often the steered latents were active on the steered rows (f_j > 0 "
              "before steering, the share of (prompt, latent) pairs; per latent in results.json). "
              "`scale` changes nothing where f_j = 0, so a row near 0 says nothing about its "
              "latents. f_j is computed before steering, so it is the same for every α:", "",
              "| condition | latents | " + " | ".join(f"α={a:g}" for a in header) + " |",
              "|---|---|" + "---|" * len(header)]
    for name, cell in results["steering"].items():
        lines.append(f"| {name} | {len(cell['latents'])} | " + " | ".join(
            f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in cell["f_positive"]) + " |")
    lines.append("")
    svg = f"steering{suffix}.svg"
    svg_plot(series, out / svg,
             f"Tool-call correctness on {plan['steer_set']} requests against α ({pairing})")
    lines.append(f"![steering]({svg})")
    (out / f"report{suffix}.md").write_text("\n".join(lines) + "\n")
    (out / f"results{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"report.py: wrote {out / f'report{suffix}.md'}, {out / f'results{suffix}.json'}, "
          f"{out / svg}")


if __name__ == "__main__":
    main()
