#!/usr/bin/env python3
"""llama2c_splice_eval (examples/llama2c/splice_eval.cpp) against a float64 reference on the
real pretrained model (../shared/models/stories260K.bin) and a perturbed copy of it: clean,
spliced (reconstruction, both diffing patches) and zero-ablated cross-entropy and KL, with the
reference splicing the crosscoder's float64 reconstruction into
examples/llama2c/reference_forward.py's forward pass.

Environment: CROSSCODER_SPLICE_EVAL (the built tool), CROSSCODER_LLAMA2C_MODEL (the checkpoint;
default ../shared/models/stories260K.bin beside the project). Exits 77 (skipped) without the
model, numpy or safetensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = os.environ.get("CROSSCODER_SPLICE_EVAL", "")
MODEL = Path(os.environ.get("CROSSCODER_LLAMA2C_MODEL",
                            ROOT.parent / "shared" / "models" / "stories260K.bin"))
sys.path.insert(0, str(ROOT / "examples" / "llama2c"))

try:
    import numpy as np
    import safetensors.numpy
    import reference_forward
except ImportError as error:  # pragma: no cover - reported as skipped
    print(f"skipped: {error}")
    sys.exit(77)

BLOCK, LATENTS, K, EXCLUSIVE = 2, 32, 4, 4


def perturbed_copy(source: Path, target: Path, rng) -> None:
    """The model with its blocks' w2 weights moved by 5% noise: a second model that predicts
    differently, in the same format."""
    raw = bytearray(source.read_bytes())
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = (
        int(v) for v in np.frombuffer(bytes(raw[:28]), "<i4"))
    kv_dim = dim * kv_heads // heads
    offset = 0
    for name, shape in reference_forward.tensor_shapes(dim, hidden, layers, kv_dim, abs(vocab),
                                                       seq_len, dim // heads, vocab > 0):
        size = int(np.prod(shape))
        if name == "w2":
            start = 28 + 4 * offset
            values = np.frombuffer(bytes(raw[start:start + 4 * size]), "<f4").copy()
            values += 0.05 * values.std() * rng.standard_normal(size).astype(np.float32)
            raw[start:start + 4 * size] = values.astype("<f4").tobytes()
        offset += size
    target.write_bytes(bytes(raw))


class Crosscoder:
    """A random TopK crosscoder with dedicated partitions [shared | excl. 0 | excl. 1], written
    in the library's checkpoint format (docs/formats.md) and evaluated in float64."""

    def __init__(self, d: int, states, rng):
        F, M = LATENTS, 2
        self.shared = F - 2 * EXCLUSIVE
        owner = np.full(F, -1)
        owner[self.shared:self.shared + EXCLUSIVE] = 0
        owner[self.shared + EXCLUSIVE:] = 1
        self.owner = owner
        uses = np.array([[owner[f] in (-1, m) for m in range(M)] for f in range(F)])  # [F, M]
        self.encoder = rng.standard_normal((M, d, F)) / np.sqrt(d) * uses.T[:, None, :]
        self.encoder_bias = 0.1 * rng.standard_normal(F)
        self.decoder = rng.standard_normal((M, F, d)) / np.sqrt(d) * uses.T[:, :, None]
        self.decoder_bias = 0.1 * rng.standard_normal((M, d))
        # The library's scalar normaliser fitted on the models' block outputs: E‖x_m‖² = d.
        self.scale = np.array([np.sqrt(d / np.mean(np.sum(s * s, axis=1))) for s in states])
        self.mean = np.zeros((M, d))

    def save(self, path: Path) -> None:
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        tensors = {"encoder.weight": f32(self.encoder), "encoder.bias": f32(self.encoder_bias),
                   "decoder.weight": f32(self.decoder), "decoder.bias": f32(self.decoder_bias),
                   "k": np.array(K, dtype=np.int64), "normaliser.scale": f32(self.scale),
                   "normaliser.mean": f32(self.mean)}
        config = {"sources": 2, "width": int(self.encoder.shape[1]), "latents": LATENTS,
                  "activation": "topk", "k": K, "exclusive": [EXCLUSIVE, EXCLUSIVE],
                  "normalisation": "scalar", "jumprelu_initial_threshold": 0.001,
                  "jumprelu_bandwidth": 0.001}
        safetensors.numpy.save_file(tensors, str(path), metadata={
            "format": "crosscoder-checkpoint-1", "config": json.dumps(config),
            "normaliser_fitted": "true"})
        # Float32 weights: the reference computes with exactly those values.
        for name in ("encoder", "encoder_bias", "decoder", "decoder_bias", "scale"):
            setattr(self, name, getattr(self, name).astype(np.float32).astype(np.float64))

    def encode(self, pair):
        """Activations [T, F] of rows pair [T, 2, d] (raw), TopK of ReLU per row."""
        xn = (pair - self.mean[None]) * self.scale[None, :, None]
        pre = np.maximum(np.einsum("tmd,mdf->tf", xn, self.encoder) + self.encoder_bias, 0.0)
        acts = np.zeros_like(pre)
        for t in range(len(pre)):
            keep = np.argsort(-pre[t], kind="stable")[:K]
            acts[t, keep] = pre[t, keep]
        return acts

    def raw_direction(self, m):
        return self.decoder[m] / self.scale[m]  # [F, d]

    def splice(self, kind, s, own, other):
        pair = np.stack([own, other] if s == 0 else [other, own], axis=1)
        acts = self.encode(pair)
        o = 1 - s
        reconstruction = (acts @ self.decoder[s] + self.decoder_bias[s]) / self.scale[s]
        if kind == "reconstruction":
            return reconstruction
        if kind == "zero":
            return np.zeros_like(own)
        if kind == "add_latents_of":
            mask = self.owner == o
            return own + acts[:, mask] @ self.raw_direction(o)[mask]
        if kind == "decoder_of":
            mask = self.owner == -1
            return (reconstruction - acts[:, mask] @ self.raw_direction(s)[mask]
                    + acts[:, mask] @ self.raw_direction(o)[mask])
        raise ValueError(kind)


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@unittest.skipUnless(MODEL.exists(), f"no model at {MODEL}")
class SpliceEvaluation(unittest.TestCase):
    def test_cross_entropy_and_kl_match_the_float64_reference(self):
        if not TOOL:
            self.skipTest("CROSSCODER_SPLICE_EVAL is not set")
        rng = np.random.default_rng(20261205)
        kinds = ["reconstruction", "zero", "add_latents_of", "decoder_of"]
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            second = scratch / "second.bin"
            perturbed_copy(MODEL, second, rng)
            models = [MODEL, second]
            loaded = [reference_forward.load(m) for m in models]
            config = loaded[0][0]
            lengths = [13, 9, 13]
            text = np.full((3, 13), -1, np.int32)
            for q, n in enumerate(lengths):
                text[q, 0] = 1
                text[q, 1:n] = rng.integers(3, config["vocab"], n - 1)
            np.save(scratch / "text.npy", text)
            sequences = [text[q, :n] for q, n in enumerate(lengths)]
            # Clean runs: logits and block outputs of both models (the reference feeds all but
            # the last token, as the tool does).
            clean = [[reference_forward.forward(c, w, list(seq[:-1]), BLOCK) for seq in sequences]
                     for c, w in loaded]
            crosscoder = Crosscoder(config["dim"],
                                    [np.concatenate([st for _, st in runs]) for runs in clean],
                                    rng)
            crosscoder.save(scratch / "crosscoder.safetensors")
            out = scratch / "result.json"
            subprocess.run([TOOL, "--models", str(MODEL), "--models", str(second),
                            "--crosscoder", str(scratch / "crosscoder.safetensors"),
                            "--block", str(BLOCK), "--text", str(scratch / "text.npy"),
                            "--kinds", ",".join(kinds), "--resamples", "50", "--json", str(out)],
                           check=True, capture_output=True, text=True)
            result = json.loads(out.read_text())
            self.assertEqual(result["tokens"], sum(n - 1 for n in lengths))
            self.assertGreater(result["spliced_tokens_per_second"], 0)
            for s in (0, 1):
                got = {c["name"]: c for c in result["sources"][s]["conditions"]}
                c, w = loaded[s]
                totals = {}
                for q, seq in enumerate(sequences):
                    targets = seq[1:]
                    reference_logits = clean[s][q][0]
                    other_logits = clean[1 - s][q][0]
                    other_states = clean[1 - s][q][1]
                    runs = {"clean": reference_logits}
                    for kind in kinds:
                        runs[kind], _ = reference_forward.forward(
                            c, w, list(seq[:-1]), BLOCK,
                            replace=lambda x, kind=kind: crosscoder.splice(kind, s, x,
                                                                          other_states))
                    for name, logits in runs.items():
                        lp = log_softmax(logits)
                        ce = -lp[np.arange(len(targets)), targets].sum()
                        for reference_name, reference in (("", reference_logits),
                                                          (" vs other", other_logits)):
                            lr = log_softmax(reference)
                            kl = (np.exp(lr) * (lr - lp)).sum()
                            key = name + reference_name
                            ce_sum, kl_sum, n = totals.get(key, (0.0, 0.0, 0))
                            totals[key] = (ce_sum + ce, kl_sum + kl, n + len(targets))
                for name in ["clean", "clean vs other"] + kinds + [
                        k + " vs other" for k in ("add_latents_of", "decoder_of")]:
                    ce_sum, kl_sum, n = totals[name]
                    with self.subTest(source=s, condition=name):
                        self.assertEqual(got[name]["tokens"], n)
                        self.assertAlmostEqual(got[name]["cross_entropy"]["value"], ce_sum / n,
                                               delta=5e-5)
                        if name != "clean":
                            self.assertAlmostEqual(got[name]["kl"]["value"], kl_sum / n,
                                                   delta=5e-5)
                # The splices changed something, and the patch moved the model.
                self.assertGreater(totals["reconstruction"][1], 1e-3)
                recovered = result["sources"][s]["ce_loss_recovered"]["reconstruction"]
                clean_ce = totals["clean"][0] / totals["clean"][2]
                zero_ce = totals["zero"][0] / totals["zero"][2]
                spliced_ce = totals["reconstruction"][0] / totals["reconstruction"][2]
                self.assertAlmostEqual(recovered["value"],
                                       (zero_ce - spliced_ce) / (zero_ce - clean_ce), delta=1e-3)

    def test_bad_input_is_named(self):
        if not TOOL:
            self.skipTest("CROSSCODER_SPLICE_EVAL is not set")
        with tempfile.TemporaryDirectory() as scratch:
            text = Path(scratch) / "text.npy"
            np.save(text, np.array([[1, 99999]], np.int32))
            run = subprocess.run([TOOL, "--models", str(MODEL), "--models", str(MODEL),
                                  "--crosscoder", str(text), "--block", "2", "--text", str(text),
                                  "--json", str(Path(scratch) / "out.json")],
                                 capture_output=True, text=True)
            self.assertNotEqual(run.returncode, 0)
            self.assertIn("llama2c_splice_eval:", run.stderr)


if __name__ == "__main__":
    unittest.main()
