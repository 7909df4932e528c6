#!/usr/bin/env python3
"""Draws the results of run_peer_benchmark.py --json as a self-contained SVG bar chart: for each
shape, the median step time of every peer and of crosscoder's matching step, on a log scale,
with crosscoder's encoder GEMM alone as a tick (the floor no sparse trick removes). Standard
library only.

  plot_peer_results.py RESULTS.json [MORE.json ...] --out docs/peer-benchmark.svg
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

COLOURS = {"dictionary_learning": "#d95f02", "saelens": "#7570b3", "sparsify": "#e7298a",
           "crosscoder (batchtopk)": "#1b9e77", "crosscoder (topk)": "#66a61e"}
ORDER = ["dictionary_learning", "crosscoder (batchtopk)", "saelens", "sparsify",
         "crosscoder (topk)"]


def load(paths):
    results = []
    for path in paths:
        for result in json.loads(Path(path).read_text()):
            if "skipped" not in result:
                results.append(result)
    return results


def svg(results, title):
    names = [n for n in ORDER if any(n in r["median_s"] for r in results)]
    bar, gap, group_gap = 16, 2, 40
    group_width = len(names) * (bar + gap) + group_gap
    left, top, height = 70, 50, 300
    width = max(left + 20 + group_width * len(results), left + 3 * 200)
    seconds = [s for r in results for s in r["median_s"].values()]
    low = 10 ** math.floor(math.log10(min(seconds) * 0.8))
    high = 10 ** math.ceil(math.log10(max(seconds) * 1.2))

    def y(value):
        return top + height * (1 - (math.log10(value) - math.log10(low)) /
                               (math.log10(high) - math.log10(low)))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 130}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="20" font-size="14">{title}</text>']
    decade = low
    while decade <= high * 1.001:
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(decade):.1f}" y2="{y(decade):.1f}" '
                   'stroke="#ddd"/>')
        label = f"{decade * 1e3:g} ms" if decade < 1 else f"{decade:g} s"
        out.append(f'<text x="{left - 6}" y="{y(decade) + 4:.1f}" text-anchor="end">{label}</text>')
        decade *= 10
    for g, result in enumerate(results):
        x0 = left + 10 + g * group_width
        for i, name in enumerate(names):
            if name not in result["median_s"]:
                continue
            value = result["median_s"][name]
            x = x0 + i * (bar + gap)
            out.append(f'<rect x="{x}" y="{y(value):.1f}" width="{bar}" '
                       f'height="{top + height - y(value):.1f}" fill="{COLOURS[name]}">'
                       f'<title>{name}: {value * 1e3:.0f} ms</title></rect>')
            gemm = result.get("gemm_s", {}).get(name)
            if gemm:
                out.append(f'<line x1="{x - 2}" x2="{x + bar + 2}" y1="{y(gemm):.1f}" '
                           f'y2="{y(gemm):.1f}" stroke="black" stroke-width="2"/>')
        for line, label in enumerate((f"d={result['d']} F={result['F']}",
                                      f"k={result['k']} B={result['B']}")):
            out.append(f'<text x="{x0}" y="{top + height + 16 + 13 * line}">{label}</text>')
    legend_y = top + height + 46
    for i, name in enumerate(names):
        x, row = left + (i % 3) * 200, legend_y + 18 * (i // 3)
        out.append(f'<rect x="{x}" y="{row}" width="12" height="12" fill="{COLOURS[name]}"/>')
        out.append(f'<text x="{x + 16}" y="{row + 10}">{name}</text>')
    legend_y += 18 * ((len(names) - 1) // 3)
    out.append(f'<line x1="{left}" x2="{left + 14}" y1="{legend_y + 34}" y2="{legend_y + 34}" '
               'stroke="black" stroke-width="2"/>')
    out.append(f'<text x="{left + 20}" y="{legend_y + 38}">crosscoder\'s encoder GEMM alone (B×D×F)'
               '</text>')
    out.append(f'<text x="{left}" y="{legend_y + 60}">median step time, log scale; lower is '
               'faster; CPU, 2 threads</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("results", nargs="+", help="JSON files from run_peer_benchmark.py --json")
    parser.add_argument("--out", required=True, help="SVG file to write")
    parser.add_argument("--title", default="Training step: crosscoder vs the PyTorch peers")
    args = parser.parse_args()
    results = load(args.results)
    if not results:
        raise SystemExit("plot_peer_results.py: no measured shape in the input")
    Path(args.out).write_text(svg(results, args.title))


if __name__ == "__main__":
    main()
