#!/usr/bin/env python3
"""Where the organism's behaviour lives (docs/organism.md): linear probes on every block's
residual stream at the last prompt token, per model.

  probe.py CAPTURE_DIR CONTRAST.npy OUT.json [--train-fraction 0.75] [--seed 0]

CAPTURE_DIR is `llama2c_organism capture --blocks all --positions last` of the contrast prompts
(sources base.blockN, rl.blockN); CONTRAST.tools.npy gives each prompt's wanted tool (-1 plain).
Two probes per (model, block), fitted on a random 75% of the prompts and scored on the rest:

  call   requests against plain prompts (two-class LDA, shrunk covariance)
  tool   which of the tools a request names (multi-class LDA on the requests only)

numpy only; the LDA is small enough to solve directly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_dataset(directory: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every source's rows [N, d] by name, and the rows' document (prompt) ids."""
    manifest = json.loads((directory / "manifest.json").read_text())
    sources = {s["name"]: np.concatenate([np.load(directory / shard["path"])
                                          for shard in s["shards"]]).astype(np.float64)
               for s in manifest["sources"]}
    documents = np.concatenate([np.load(directory / shard["path"])
                                for shard in manifest["document_ids"]["shards"]])
    return sources, documents


def lda_fit(x: np.ndarray, y: np.ndarray, shrinkage: float = 0.1):
    """Class means and the inverse of the pooled covariance, shrunk towards its mean diagonal."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    covariance = centred.T @ centred / max(1, len(x) - len(classes))
    covariance = ((1 - shrinkage) * covariance +
                  shrinkage * np.trace(covariance) / len(covariance) * np.eye(len(covariance)))
    return classes, means, np.linalg.inv(covariance)


def lda_predict(model, x: np.ndarray) -> np.ndarray:
    classes, means, precision = model
    # Linear discriminants with equal priors: argmax_c x'P mu_c - mu_c'P mu_c / 2.
    scores = x @ precision @ means.T - 0.5 * np.einsum("cd,de,ce->c", means, precision, means)
    return classes[np.argmax(scores, 1)]


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    model = lda_fit(x[train], y[train])
    test = ~train
    return float(np.mean(lda_predict(model, x[test]) == y[test]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("capture")
    parser.add_argument("contrast")
    parser.add_argument("out")
    parser.add_argument("--train-fraction", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sources, documents = read_dataset(Path(args.capture))
    tools = np.load(Path(args.contrast).with_suffix(".tools.npy"))[documents]
    rng = np.random.default_rng(args.seed)
    train = rng.random(len(tools)) < args.train_fraction
    request = tools >= 0
    result = {"prompts": int(len(tools)), "test_prompts": int((~train).sum()), "probes": {}}
    for name, x in sources.items():
        model, block = name.split(".block")
        call = probe(x, request.astype(int), train)
        tool = probe(x[request], tools[request], train[request])
        result["probes"].setdefault(model, {})[int(block)] = {"call": call, "tool": tool}
        print(f"probe: {model} block {block}: call {call:.3f}, tool {tool:.3f} "
              f"(chance 0.5 and {1 / len(np.unique(tools[request])):.2f})", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
