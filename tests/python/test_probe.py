#!/usr/bin/env python3
"""The organism's linear probes (examples/organism/probe.py) against a float64 loop reference
and on synthetic data whose separability is known. numpy only."""

from __future__ import annotations

import json
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "organism"))

try:
    import numpy as np
    from probe import lda_fit, lda_predict, probe, read_dataset
except ImportError as error:  # pragma: no cover - reported as skipped
    print(f"skipped: {error}")
    sys.exit(77)


def reference_predict(x, y, rows, shrinkage=0.1):
    """Equal-prior LDA written out with loops in float64."""
    classes = sorted(set(int(v) for v in y))
    d = x.shape[1]
    means = {c: [sum(x[i, k] for i in range(len(x)) if y[i] == c) / sum(y == c)
                 for k in range(d)] for c in classes}
    cov = np.zeros((d, d))
    for i in range(len(x)):
        for a in range(d):
            for b in range(d):
                cov[a, b] += (x[i, a] - means[y[i]][a]) * (x[i, b] - means[y[i]][b])
    cov /= len(x) - len(classes)
    mean_diagonal = sum(cov[a, a] for a in range(d)) / d
    for a in range(d):
        for b in range(d):
            cov[a, b] = (1 - shrinkage) * cov[a, b] + (shrinkage * mean_diagonal if a == b else 0)
    precision = np.linalg.inv(cov)
    out = []
    for row in rows:
        scores = []
        for c in classes:
            m = np.array(means[c])
            scores.append(row @ precision @ m - 0.5 * m @ precision @ m)
        out.append(classes[int(np.argmax(scores))])
    return np.array(out)


class Probe(unittest.TestCase):
    def test_predictions_match_a_loop_reference(self) -> None:
        rng = np.random.default_rng(11)
        for n_classes in (2, 4):
            x = rng.normal(size=(60, 5)) + rng.normal(size=(1, 5))
            y = rng.integers(0, n_classes, size=60)
            x += 0.8 * np.eye(5)[y % 5]
            rows = rng.normal(size=(25, 5))
            np.testing.assert_array_equal(lda_predict(lda_fit(x, y), rows),
                                          reference_predict(x, y, rows))

    def test_accuracy_follows_the_separation(self) -> None:
        rng = np.random.default_rng(5)
        n, d = 2000, 16
        y = rng.integers(0, 2, size=n)
        direction = rng.normal(size=d)
        direction /= np.linalg.norm(direction)
        train = rng.random(n) < 0.75
        noise = rng.normal(size=(n, d))
        # Means 4 SDs apart: the Bayes accuracy is Φ(2) ≈ 0.977.
        separated = probe(noise + 4.0 * np.outer(y, direction), y, train)
        self.assertGreater(separated, 0.95)
        self.assertLess(abs(probe(noise, y, train) - 0.5), 0.06)

    def test_a_capture_reads_back_per_source_with_documents(self) -> None:
        rng = np.random.default_rng(2)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            rows = {name: rng.normal(size=(7, 3)).astype(np.float32)
                    for name in ("base.block0", "rl.block0")}
            for name, value in rows.items():
                np.save(folder / f"{name}.npy", value)
            np.save(folder / "documents.npy", np.arange(7, dtype=np.int32))
            manifest = {"sources": [{"name": n, "shards": [{"path": f"{n}.npy", "rows": 7}]}
                                    for n in rows],
                        "document_ids": {"shards": [{"path": "documents.npy", "rows": 7}]}}
            (folder / "manifest.json").write_text(json.dumps(manifest))
            sources, documents = read_dataset(folder)
            for name, value in rows.items():
                np.testing.assert_array_equal(sources[name], value.astype(np.float64))
            np.testing.assert_array_equal(documents, np.arange(7))


if __name__ == "__main__":
    unittest.main()
