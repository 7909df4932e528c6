"""scripts/convert_checkpoint.py against the peers' definitions: same encodings to float tolerance.

(a) Always (needs torch): checkpoints in each peer's exact state-dict layout, written here from
    the peer's documented layout (not a copy of its code), with random non-trivial weights,
    biases and normaliser statistics; converted; and our library's encodings of random raw rows
    (tests/tools/encode_rows.cpp, path in CROSSCODER_ENCODE_ROWS) compared with a float64
    forward pass written from the peer's definition:
      - the study (arXiv 2606.26474, dfc.py + cache.py): per-channel z-score, masked encoder,
        ReLU, per-row top-k; latent order [A-excl | B-excl | shared] and model A = fine-tune;
      - dictionary_learning (science-of-finetuning fork, dictionary.py): CrossCoder (ReLU) and
        BatchTopKCrossCoder (threshold on Σ_l‖W_dec[l,f]‖-weighted activations, and batch top-k
        when no threshold is learnt), its (x − mean)·activation_global_scale normaliser or none;
    and the export: ours (written by our library) → the fork's state dict → the fork's forward
    gives our encodings; → ours again gives the same tensors and encodings. Refusals name the
    tensor.
(b) When CROSSCODER_PEER_DFC / CROSSCODER_PEER_DICTIONARY_LEARNING point at checkouts of the
    peers, also with their own classes: checkpoints made by DFCCrossCoder.save and by the fork's
    CrossCoder/BatchTopKCrossCoder, their own encode() against ours, the fixtures' and our
    exports' strict load (DFCCrossCoder.load, from_pretrained) and cache.py's statistics against
    --zscore-from-cache.

Run: CROSSCODER_ENCODE_ROWS=build/tests/encode_rows .venv/bin/python tests/python/test_convert.py
Exits 77 (ctest: skipped) when numpy, safetensors or torch is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

try:
    import numpy as np
    import safetensors
    import safetensors.numpy
    import torch
except ImportError as error:  # pragma: no cover - depends on the environment
    MISSING = f"{error.name} is not installed: run scripts/setup_python.sh --with-torch"
else:
    MISSING = ""

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "convert_checkpoint.py"
TOOL = os.environ.get("CROSSCODER_ENCODE_ROWS", "")
PEER_DFC = os.environ.get("CROSSCODER_PEER_DFC", "")
PEER_DL = os.environ.get("CROSSCODER_PEER_DICTIONARY_LEARNING", "")

# float32 (ours) against float64 (the reference): pre-activations are sums of 2·d products of
# order-one terms, so errors are ~1e-6; 1e-4 leaves room without hiding a wrong mapping (a wrong
# mean, scale, order or transpose moves values by order one).
ATOL = RTOL = 1e-4
# Entries this close to a selection boundary (k-th vs (k+1)-th, or the threshold) may flip
# between float32 and float64; they are left out, and at most 5% of rows may be.
MARGIN = 1e-3

STUDY_FLOOR = 1e-6
CROSSCODER_CODE = 1  # dictionary_learning CodeNormalization.CROSSCODER.value


def run(args: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}"
        )
    return result


def convert(*args: Any, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(SCRIPT), *map(str, args)], expect_ok)


def ours_encode(model: Path, rows: np.ndarray, resave: Path | None = None) -> np.ndarray:
    """Our library's dense codes [rows, F] of raw rows [rows, M, d] (one encode call)."""
    rows_path = model.with_suffix(".rows.npy")
    out_path = model.with_suffix(".codes.npy")
    np.save(rows_path, np.ascontiguousarray(rows, dtype=np.float32))
    command = [TOOL, str(model), str(rows_path), str(out_path)]
    if resave is not None:
        command += ["--resave", str(resave)]
    run(command)
    return np.load(out_path).astype(np.float64)


def f32(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float32))


def compare_codes(
    test: unittest.TestCase, ours: np.ndarray, reference: np.ndarray, keep: np.ndarray, what: str
) -> float:
    """ours and reference [rows, F]; keep [rows, F] marks entries away from selection boundaries."""
    test.assertEqual(ours.shape, reference.shape, what)
    left_out_rows = np.mean(~keep.all(axis=1))
    test.assertLessEqual(left_out_rows, 0.05, f"{what}: too many rows near a selection boundary")
    error = np.abs(ours - reference)[keep]
    bound = ATOL + RTOL * np.abs(reference[keep])
    worst = int(np.argmax(error - bound)) if error.size else 0
    test.assertTrue(
        np.all(error <= bound), f"{what}: max |ours - peer| = {error.max():.3g} (entry {worst})"
    )
    active = (reference[keep] > 0).mean()
    test.assertGreater(active, 0.0, f"{what}: no active latent, the comparison would be vacuous")
    test.assertLess(active, 1.0, f"{what}: every latent active, the selection is not exercised")
    return float(error.max())


# ---- The study's layout and forward (from dfc.py's and cache.py's definitions) ----------------


def study_masks(F: int, n_a: int, n_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = torch.ones(2, F)
    enc[1, :n_a] = 0  # B cannot encode A-exclusive latents
    enc[0, n_a : n_a + n_b] = 0  # A cannot encode B-exclusive latents
    return enc, enc.T.contiguous()


def make_study_checkpoint(
    directory: Path, rng: np.random.Generator, d: int, F: int, k: int, n_a: int, n_b: int
) -> None:
    """DIR/model.pt (W_enc [2,d,F], b_enc [F], W_dec [F,2,d], b_dec [2,d], enc_mask [2,F],
    dec_mask [F,2]) and DIR/config.json, as DFCCrossCoder.save writes them. The forbidden
    weights are left non-zero on purpose: the study's forward masks them, so must we."""
    enc_mask, dec_mask = study_masks(F, n_a, n_b)
    state = {
        "W_enc": f32(rng.normal(size=(2, d, F)) / np.sqrt(d)),
        "b_enc": f32(rng.normal(scale=0.3, size=F)),
        "W_dec": f32(rng.normal(size=(F, 2, d)) / np.sqrt(F)),
        "b_dec": f32(rng.normal(scale=0.5, size=(2, d))),
        "enc_mask": enc_mask,
        "dec_mask": dec_mask,
    }
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "model.pt")
    config = {"activation_dim": d, "dict_size": F, "k": k, "n_a": n_a, "n_b": n_b}
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def study_stats(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std [2, d] (float32 as the study computes them); channel 0 of model B
    is constant (std 0), so the 1e-6 floor acts."""
    mean = rng.normal(scale=2.0, size=(2, d)).astype(np.float32)
    std = np.exp(rng.normal(scale=0.5, size=(2, d))).astype(np.float32)
    std[1, 0] = 0.0
    return mean, std


def study_rows(rng: np.random.Generator, mean: np.ndarray, std: np.ndarray, n: int) -> np.ndarray:
    rows = (mean + std * rng.normal(size=(n, *mean.shape))).astype(np.float32)
    rows[:, 1, 0] = mean[1, 0]  # the constant channel
    return rows


def study_encode(
    directory: Path, mean: np.ndarray | None, std: np.ndarray | None, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The study's features in float64 (cache.py's z-score, then DFCCrossCoder.encode) and which
    rows are away from the top-k boundary."""
    state = {
        name: t.double()
        for name, t in torch.load(directory / "model.pt", weights_only=True).items()
    }
    k = json.loads((directory / "config.json").read_text())["k"]
    x = torch.tensor(rows, dtype=torch.float64)
    if mean is not None:
        x = (x - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(
            std, dtype=torch.float64
        ).clamp(min=STUDY_FLOOR)
    weight = state["W_enc"] * state["enc_mask"].unsqueeze(1)
    pre = torch.relu(torch.einsum("bmd,mdf->bf", x, weight) + state["b_enc"])
    values, indices = torch.topk(pre, k + 1, dim=-1)
    features = torch.zeros_like(pre).scatter_(-1, indices[:, :k], values[:, :k])
    gap = values[:, k - 1] - values[:, k]
    keep_row = ((gap > MARGIN) | (values[:, k - 1] == 0)).numpy()
    return features.numpy(), np.repeat(keep_row[:, None], pre.shape[1], axis=1)


def study_latent_order(F: int, n_a: int, n_b: int, rl_is: str) -> list[int]:
    """Study latent of each of our latents: ours [shared | excl. to base | excl. to fine-tune]."""
    a_excl, b_excl = list(range(n_a)), list(range(n_a, n_a + n_b))
    base_excl, tuned_excl = (b_excl, a_excl) if rl_is == "a" else (a_excl, b_excl)
    return list(range(n_a + n_b, F)) + base_excl + tuned_excl


# ---- dictionary_learning's layout and forward (from dictionary.py's definitions) ---------------


def make_fork_state(
    rng: np.random.Generator,
    L: int,
    d: int,
    F: int,
    *,
    batchtopk: bool,
    normaliser: bool = True,
    target_rms: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The state dict of the fork's CrossCoder / BatchTopKCrossCoder: NormalizableMixin's buffers
    (target_rms, activation_mean, activation_std, activation_global_scale), encoder.weight
    [L,d,F], encoder.bias [F], decoder.weight [L,F,d], decoder.bias [L,d], code_normalization_id,
    and for BatchTopK k (int32) and threshold (float32, set later)."""
    if normaliser:
        mean = f32(rng.normal(scale=1.5, size=(L, d)))
        std = f32(np.exp(rng.normal(scale=0.4, size=(L, d))))
        global_scale = target_rms / torch.sqrt((std**2).sum(dim=-1) + 1e-8)
    else:
        mean = torch.full((L, d), float("nan"))
        std = torch.full((L, d), float("nan"))
        global_scale = torch.ones(L)
    # Raw-unit weights large enough that normalised inputs (norm ~ target_rms) give spread pre-acts.
    state = {
        "target_rms": torch.tensor(target_rms),
        "activation_mean": mean,
        "activation_std": std,
        "activation_global_scale": global_scale,
        "encoder.weight": f32(rng.normal(size=(L, d, F)) * (1.0 if normaliser else 1 / np.sqrt(d))),
        "encoder.bias": f32(rng.normal(scale=0.2, size=F)),
        "decoder.weight": f32(
            rng.normal(size=(L, F, d)) / np.sqrt(d) * rng.uniform(0.5, 2.0, size=(1, F, 1))
        ),
        "decoder.bias": f32(rng.normal(scale=0.5, size=(L, d))),
        "code_normalization_id": torch.tensor(CROSSCODER_CODE),
    }
    if batchtopk:
        state["k"] = torch.tensor(4, dtype=torch.int)
        state["threshold"] = torch.tensor(-1.0, dtype=torch.float32)
    return state


def fork_rows(rng: np.random.Generator, state: dict[str, torch.Tensor], n: int) -> np.ndarray:
    L, d = state["decoder.bias"].shape
    mean = state["activation_mean"].nan_to_num(0.0).numpy()
    spread = state["activation_std"].nan_to_num(1.0).numpy()
    return (mean + spread * rng.normal(size=(n, L, d))).astype(np.float32)


def fork_pre(
    state: dict[str, torch.Tensor], rows: np.ndarray, keep_relative_variance: bool = True
) -> torch.Tensor:
    """ReLU(Σ_l x̃_l W_l + b) in float64 with the fork's normaliser applied to raw rows."""
    s = {name: t.double() for name, t in state.items() if t.is_floating_point()}
    x = torch.tensor(rows, dtype=torch.float64)
    if not (s["activation_mean"].isnan().any() or s["activation_std"].isnan().any()):
        x = x - s["activation_mean"]
        if keep_relative_variance:
            x = x * s["activation_global_scale"].unsqueeze(0).unsqueeze(-1)
        else:
            x = x / (s["activation_std"] + 1e-8)
    return torch.relu(torch.einsum("bld,ldf->bf", x, s["encoder.weight"]) + s["encoder.bias"])


def fork_encode(
    state: dict[str, torch.Tensor],
    rows: np.ndarray,
    keep_relative_variance: bool = True,
    use_threshold: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The fork's encode in float64, and which entries are away from a selection boundary."""
    pre = fork_pre(state, rows, keep_relative_variance)
    keep = torch.ones_like(pre, dtype=torch.bool)
    if "k" not in state:
        return pre.numpy(), keep.numpy()
    weight = state["decoder.weight"].double().norm(dim=2).sum(dim=0, keepdim=True)  # CROSSCODER
    scaled = pre * weight
    if use_threshold:
        threshold = float(state["threshold"])
        features = pre * (scaled > threshold)
        keep = (scaled - threshold).abs() > MARGIN
    else:
        count = int(state["k"]) * pre.shape[0]
        values, indices = scaled.flatten().topk(count + 1)
        flat = torch.zeros(pre.numel(), dtype=torch.float64)
        flat[indices[:count]] = pre.flatten()[indices[:count]]
        features = flat.reshape(pre.shape)
        # One boundary for the whole batch: entries near it may swap with each other.
        boundary = 0.5 * (values[count - 1] + values[count])
        keep = (scaled - boundary).abs() > MARGIN
    return features.numpy(), keep.numpy()


def set_threshold_quantile(
    state: dict[str, torch.Tensor], rows: np.ndarray, quantile: float = 0.9
) -> None:
    """A threshold that keeps some but not all positive scores of these rows."""
    pre = fork_pre(state, rows)
    scaled = pre * state["decoder.weight"].double().norm(dim=2).sum(dim=0, keepdim=True)
    state["threshold"] = torch.tensor(
        float(torch.quantile(scaled[scaled > 0], quantile)), dtype=torch.float32
    )


# ---- Our format, written here (then re-saved by our library) ------------------------------------


def write_our_checkpoint(
    path: Path,
    rng: np.random.Generator,
    *,
    M: int,
    d: int,
    F: int,
    activation: str,
    normalisation: str,
    exclusive: list[int] | None = None,
    threshold: float | None = None,
    k: int = 4,
    source_models: list[int] | None = None,
) -> None:
    exclusive = exclusive or []
    model_of = source_models or list(range(M))
    enc = rng.normal(size=(M, d, F)) / np.sqrt(d)
    dec = rng.normal(size=(M, F, d)) / np.sqrt(d)
    start = F - sum(exclusive)
    for owner, count in enumerate(exclusive):  # exclusive latents: zero for other models
        for m in range(M):
            if model_of[m] != owner:
                enc[m, :, start : start + count] = 0
                dec[m, start : start + count, :] = 0
        start += count
    mean = np.zeros((M, d))
    if normalisation == "none":
        scale = np.ones(M)
    elif normalisation == "scalar":
        scale = rng.uniform(0.3, 3.0, size=M)
    elif normalisation == "mean_and_scale":
        scale, mean = rng.uniform(0.3, 3.0, size=M), rng.normal(scale=1.5, size=(M, d))
    else:
        scale, mean = np.exp(rng.normal(scale=0.5, size=(M, d))), rng.normal(scale=1.5, size=(M, d))
    tensors = {
        "encoder.weight": enc,
        "encoder.bias": rng.normal(scale=0.2, size=F),
        "decoder.weight": dec,
        "decoder.bias": rng.normal(scale=0.5, size=(M, d)),
        "normaliser.scale": scale,
        "normaliser.mean": mean,
    }
    if activation == "batchtopk":
        tensors["threshold"] = np.array(-1.0 if threshold is None else threshold)
    out = {name: np.asarray(v, dtype=np.float32) for name, v in tensors.items()}
    out["k"] = np.array(k, dtype=np.int64)
    config = {
        "sources": M,
        "width": d,
        "latents": F,
        "activation": activation,
        "k": k,
        "exclusive": exclusive,
        "normalisation": normalisation,
        "jumprelu_initial_threshold": 0.001,
        "jumprelu_bandwidth": 0.001,
    }
    if source_models:
        config["source_models"] = source_models
    if activation == "jumprelu":
        out["threshold"] = np.full(F, 0.1, dtype=np.float32)
    safetensors.numpy.save_file(
        out,
        str(path),
        metadata={
            "format": "crosscoder-checkpoint-1",
            "library_version": "0.1.0",
            "config": json.dumps(config),
            "normaliser_fitted": "true",
        },
    )


def our_rows(rng: np.random.Generator, path: Path, n: int) -> np.ndarray:
    t = safetensors.numpy.load_file(str(path))
    mean = t["normaliser.mean"]
    scale = t["normaliser.scale"]
    spread = 1.0 / (scale if scale.ndim == 2 else scale[:, None])
    return (mean + spread * rng.normal(size=(n, *mean.shape))).astype(np.float32)


def read_ours(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with safetensors.safe_open(str(path), "np") as handle:
        config = json.loads(handle.metadata()["config"])
    return config, safetensors.numpy.load_file(str(path))


def export_ours(
    directory: Path,
    rng: np.random.Generator,
    M: int,
    d: int,
    F: int,
    activation: str,
    normalisation: str,
    exclusive: list[int] | None = None,
    threshold: float | None = None,
    source_models: list[int] | None = None,
) -> tuple[Path, Path, np.ndarray]:
    """A random checkpoint of ours, re-saved by our library, exported to the fork's .pt;
    returns (ours, export, raw rows)."""
    written, ours = directory / "written.safetensors", directory / "ours.safetensors"
    write_our_checkpoint(
        written,
        rng,
        M=M,
        d=d,
        F=F,
        activation=activation,
        normalisation=normalisation,
        exclusive=exclusive,
        threshold=threshold,
        source_models=source_models,
    )
    rows = our_rows(rng, written, 200)
    ours_encode(written, rows[:1], resave=ours)
    exported = directory / "fork.pt"
    convert("to-dictionary-learning", ours, "--out", exported)
    return ours, exported, rows


# ---- Tests -------------------------------------------------------------------------------------


class Base(unittest.TestCase):
    def setUp(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="crosscoder-convert-")
        self.dir = Path(self._dir.name)
        self.rng = np.random.default_rng(20)

    def tearDown(self) -> None:
        self._dir.cleanup()

    def refused(self, *args: Any, naming: list[str]) -> None:
        result = convert(*args, expect_ok=False)
        self.assertEqual(result.returncode, 1, result.stderr)
        for text in naming:
            self.assertIn(text, result.stderr)


class FromStudy(Base):
    d, F, k, n_a, n_b = 12, 48, 6, 5, 7

    def check(self, rl_is: str, stats_kind: str) -> float:
        study = self.dir / "study"
        make_study_checkpoint(study, self.rng, self.d, self.F, self.k, self.n_a, self.n_b)
        mean, std = study_stats(self.rng, self.d)
        rows = study_rows(self.rng, mean, std, 300)
        if stats_kind == "pt":
            stats = self.dir / "stats.pt"
            torch.save({"mean": torch.tensor(mean), "std": torch.tensor(std)}, stats)
            extra = ["--zscore", stats]
        elif stats_kind == "npz":
            stats = self.dir / "stats.npz"
            np.savez(stats, mean=mean, std=std)
            extra = ["--zscore", stats]
        else:
            mean = std = None
            extra = ["--no-normalisation"]
        out = self.dir / "ours.safetensors"
        convert("from-study", study, *extra, "--rl-is", rl_is, "--out", out)
        config, tensors = read_ours(out)
        self.assertEqual(config["activation"], "topk")
        self.assertEqual(config["k"], self.k)
        self.assertEqual(
            config["exclusive"], [self.n_b, self.n_a] if rl_is == "a" else [self.n_a, self.n_b]
        )
        self.assertEqual(config["normalisation"], "per_channel" if mean is not None else "none")
        reference, keep = study_encode(study, mean, std, rows)
        order = study_latent_order(self.F, self.n_a, self.n_b, rl_is)
        sources = [1, 0] if rl_is == "a" else [0, 1]  # our source 0 is the base model
        ours = ours_encode(out, rows[:, sources])
        return compare_codes(
            self, ours, reference[:, order], keep[:, order], f"study rl-is {rl_is} {stats_kind}"
        )

    def test_zscore_pt_fine_tune_is_a(self) -> None:
        self.check("a", "pt")

    def test_zscore_npz_fine_tune_is_b(self) -> None:
        self.check("b", "npz")

    def test_without_normalisation(self) -> None:
        self.check("a", "none")

    def test_zscore_from_cache(self) -> None:
        """--zscore-from-cache computes cache.py's statistics: mean and unbiased std over every
        row of the float16 shards, read as float32."""
        cache = self.dir / "cache"
        cache.mkdir()
        shards = [
            torch.tensor(self.rng.normal(loc=1.0, scale=2.0, size=(n, 2, self.d))).half()
            for n in (70, 33)
        ]
        for i, shard in enumerate(shards):
            torch.save(shard, cache / f"shard_{i:05d}.pt")
        (cache / "meta.json").write_text(
            json.dumps(
                {
                    "layer_idx": 13,
                    "shard_size": 70,
                    "total_samples": 103,
                    "shards": ["shard_00000.pt", "shard_00001.pt"],
                }
            )
        )
        study = self.dir / "study"
        make_study_checkpoint(study, self.rng, self.d, self.F, self.k, self.n_a, self.n_b)
        out = self.dir / "ours.safetensors"
        convert("from-study", study, "--zscore-from-cache", cache, "--out", out)
        data = torch.cat([s.float() for s in shards])
        mean, std = data.mean(dim=0), data.std(dim=0).clamp(min=1e-6)
        _, tensors = read_ours(out)
        np.testing.assert_allclose(tensors["normaliser.mean"], mean.numpy()[[1, 0]], rtol=0, atol=0)
        np.testing.assert_allclose(
            tensors["normaliser.scale"], (1 / std.double()).float().numpy()[[1, 0]], rtol=1e-7
        )

    def test_refusals(self) -> None:
        study = self.dir / "study"
        make_study_checkpoint(study, self.rng, self.d, self.F, self.k, self.n_a, self.n_b)
        out = self.dir / "x.safetensors"
        bad = self.dir / "bad.npz"
        np.savez(bad, mean=np.zeros((2, self.d + 1)), std=np.ones((2, self.d + 1)))
        self.refused(
            "from-study",
            study,
            "--zscore",
            bad,
            "--out",
            out,
            naming=[str(bad), "'mean'", "[2, 12]"],
        )
        state = torch.load(study / "model.pt", weights_only=True)
        state["enc_mask"][0, 0] = 0
        torch.save(state, study / "model.pt")
        self.refused(
            "from-study",
            study,
            "--no-normalisation",
            "--out",
            out,
            naming=["model.pt", "'enc_mask'"],
        )
        del state["b_enc"]
        state["enc_mask"][0, 0] = 1
        torch.save(state, study / "model.pt")
        self.refused(
            "from-study",
            study,
            "--no-normalisation",
            "--out",
            out,
            naming=["model.pt", "'b_enc'", "missing"],
        )
        result = convert("from-study", study, "--out", out, expect_ok=False)
        self.assertEqual(
            result.returncode, 2
        )  # the statistics are required: the study normalises by default
        self.assertFalse(out.exists())


class FromDictionaryLearning(Base):
    L, d, F = 2, 10, 40

    def check(
        self,
        *,
        batchtopk: bool,
        normaliser: bool = True,
        use_threshold: bool = True,
        keep_relative_variance: bool = True,
        target_rms: float = 1.0,
    ) -> float:
        state = make_fork_state(
            self.rng,
            self.L,
            self.d,
            self.F,
            batchtopk=batchtopk,
            normaliser=normaliser,
            target_rms=target_rms,
        )
        rows = fork_rows(self.rng, state, 200)
        if batchtopk and use_threshold:
            set_threshold_quantile(state, rows)
        path = self.dir / "fork.pt"
        torch.save(state, path)
        out = self.dir / "ours.safetensors"
        convert(
            "from-dictionary-learning",
            path,
            "--out",
            out,
            *([] if keep_relative_variance else ["--no-keep-relative-variance"]),
        )
        config, _ = read_ours(out)
        self.assertEqual(config["activation"], "batchtopk" if batchtopk else "relu")
        expected = (
            "none"
            if not normaliser
            else "mean_and_scale" if keep_relative_variance else "per_channel"
        )
        self.assertEqual(config["normalisation"], expected)
        reference, keep = fork_encode(state, rows, keep_relative_variance, use_threshold)
        return compare_codes(
            self,
            ours_encode(out, rows),
            reference,
            keep,
            f"fork batchtopk={batchtopk} normaliser={normaliser} threshold={use_threshold}",
        )

    def test_relu_crosscoder(self) -> None:
        self.check(batchtopk=False, target_rms=0.7)

    def test_relu_crosscoder_without_normaliser(self) -> None:
        self.check(batchtopk=False, normaliser=False)

    def test_batchtopk_threshold(self) -> None:
        self.check(batchtopk=True)

    def test_batchtopk_without_threshold_is_batch_selection(self) -> None:
        self.check(batchtopk=True, use_threshold=False)

    def test_keep_relative_variance_false(self) -> None:
        self.check(batchtopk=False, keep_relative_variance=False)

    def test_three_layers(self) -> None:
        self.L = 3
        self.check(batchtopk=True)

    def test_refusals(self) -> None:
        state = make_fork_state(self.rng, self.L, self.d, self.F, batchtopk=True)
        path, out = self.dir / "fork.pt", self.dir / "x.safetensors"
        torch.save({**state, "code_normalization_id": torch.tensor(2)}, path)
        self.refused(
            "from-dictionary-learning",
            path,
            "--out",
            out,
            naming=[str(path), "'code_normalization_id'", "SAE"],
        )
        torch.save({**state, "threshold": torch.zeros(self.L)}, path)
        self.refused(
            "from-dictionary-learning",
            path,
            "--out",
            out,
            naming=[str(path), "'threshold'", "DECOUPLED"],
        )
        torch.save({**state, "decoder.bias": torch.zeros(self.L, self.d + 1)}, path)
        self.refused(
            "from-dictionary-learning", path, "--out", out, naming=["'decoder.bias'", "[2, 11]"]
        )
        torch.save({**state, "extra": torch.zeros(1)}, path)
        self.refused("from-dictionary-learning", path, "--out", out, naming=["'extra'"])
        torch.save({k: v for k, v in state.items() if k != "activation_global_scale"}, path)
        self.refused(
            "from-dictionary-learning", path, "--out", out, naming=["activation_global_scale"]
        )
        torch.save(state, path)
        self.refused(
            "from-dictionary-learning",
            path,
            "--exclusive",
            "3,4",
            "--out",
            out,
            naming=["'encoder.weight'", "exclusive to model 0"],
        )
        self.assertFalse(out.exists())


class ToDictionaryLearning(Base):
    M, d, F = 2, 10, 40
    source_models: list[int] | None = None

    def export(
        self,
        activation: str,
        normalisation: str,
        exclusive: list[int] | None = None,
        threshold: float | None = None,
    ) -> tuple[Path, Path, np.ndarray]:
        return export_ours(
            self.dir,
            self.rng,
            self.M,
            self.d,
            self.F,
            activation,
            normalisation,
            exclusive,
            threshold,
            self.source_models,
        )

    def check(
        self,
        activation: str,
        normalisation: str,
        exclusive: list[int] | None = None,
        use_threshold: bool = True,
    ) -> float:
        threshold = None
        if activation == "batchtopk" and use_threshold:
            threshold = 0.0  # set from the rows below
        ours, exported, rows = self.export(activation, normalisation, exclusive, threshold)
        state = torch.load(exported, weights_only=True)
        if threshold is not None:  # a threshold inside the score distribution, in both files
            set_threshold_quantile(state, rows)
            value = float(state["threshold"])
            config, tensors = read_ours(ours)
            tensors["threshold"] = np.array(value, dtype=np.float32)
            with safetensors.safe_open(str(ours), "np") as handle:
                metadata = handle.metadata()
            safetensors.numpy.save_file(tensors, str(ours), metadata=metadata)
            torch.save(state, exported)
        codes = ours_encode(ours, rows)
        reference, keep = fork_encode(state, rows, use_threshold=use_threshold)
        error = compare_codes(self, codes, reference, keep, f"export {activation} {normalisation}")
        # Back to ours: the same encodings; the same tensors unless the scale was folded.
        back = self.dir / "back.safetensors"
        convert(
            "from-dictionary-learning",
            exported,
            "--out",
            back,
            *(["--exclusive", ",".join(map(str, exclusive))] if exclusive else []),
            *(
                ["--source-models", ",".join(map(str, self.source_models))]
                if self.source_models
                else []
            ),
        )
        np.testing.assert_allclose(ours_encode(back, rows), codes, rtol=1e-5, atol=1e-5)
        config, tensors = read_ours(ours)
        config_back, tensors_back = read_ours(back)
        if normalisation != "per_channel":
            if activation == "relu":  # k means nothing to ReLU and the fork's CrossCoder has none
                config.pop("k"), config_back.pop("k"), tensors.pop("k"), tensors_back.pop("k")
            for name in ("jumprelu_initial_threshold", "jumprelu_bandwidth"):  # float32 in ours
                self.assertAlmostEqual(config.pop(name), config_back.pop(name), places=7)
            self.assertEqual(config, config_back)
            self.assertEqual(sorted(tensors), sorted(tensors_back))
            for name in tensors:
                np.testing.assert_array_equal(tensors[name], tensors_back[name], err_msg=name)
        return error

    def test_relu_each_normalisation(self) -> None:
        for normalisation in ("none", "scalar", "mean_and_scale", "per_channel"):
            with self.subTest(normalisation=normalisation):
                self.check("relu", normalisation)

    def test_batchtopk_threshold(self) -> None:
        for normalisation in ("none", "scalar", "mean_and_scale"):
            with self.subTest(normalisation=normalisation):
                self.check("batchtopk", normalisation)

    def test_batchtopk_exclusive_partitions(self) -> None:
        self.check("batchtopk", "mean_and_scale", exclusive=[3, 5])

    def test_layers_of_two_models(self) -> None:
        """A crosscoder across two models' layers (source_models): partitions per model."""
        self.M, self.source_models = 4, [0, 0, 1, 1]
        self.check("batchtopk", "mean_and_scale", exclusive=[3, 5])

    def test_batchtopk_without_threshold(self) -> None:
        self.check("batchtopk", "scalar", use_threshold=False)

    def test_refusals(self) -> None:
        for activation, normalisation, naming in (
            ("topk", "scalar", ["'topk'"]),
            ("jumprelu", "scalar", ["'jumprelu'"]),
            ("batchtopk", "per_channel", ["'normaliser.scale'", "per channel"]),
        ):
            with self.subTest(activation=activation):
                path = self.dir / f"{activation}.safetensors"
                write_our_checkpoint(
                    path,
                    self.rng,
                    M=self.M,
                    d=self.d,
                    F=self.F,
                    activation=activation,
                    normalisation=normalisation,
                    threshold=0.5,
                )
                out = self.dir / "refused.pt"
                self.refused(
                    "to-dictionary-learning", path, "--out", out, naming=[str(path), *naming]
                )
                self.assertFalse(out.exists())


# ---- (b) The peers' own code ---------------------------------------------------------------------


@unittest.skipUnless(
    PEER_DFC, "CROSSCODER_PEER_DFC is not set (a checkout of Antebe/model_diffing_crosscoders)"
)
class PeerStudy(Base):
    def setUp(self) -> None:
        super().setUp()
        sys.path.insert(0, PEER_DFC)
        import dfc  # noqa: PLC0415 - the peer's module, only here

        self.dfc = dfc

    def test_own_class(self) -> None:
        d, F, k = 12, 60, 6
        torch.manual_seed(0)
        model = self.dfc.DFCCrossCoder(
            d, F, k, model_a_exclusive_pct=0.1, model_b_exclusive_pct=0.15
        )
        with torch.no_grad():  # trained-looking: non-zero biases, then the masks as after a step
            model.b_enc.copy_(torch.randn(F) * 0.3)
            model.b_dec.copy_(torch.randn(2, d) * 0.5)
            model._apply_masks()
        study = self.dir / "study"
        model.save(str(study))
        mean, std = study_stats(self.rng, d)
        rows = study_rows(self.rng, mean, std, 300)
        stats = self.dir / "stats.pt"
        torch.save({"mean": torch.tensor(mean), "std": torch.tensor(std)}, stats)
        out = self.dir / "ours.safetensors"
        convert("from-study", study, "--zscore", stats, "--out", out)
        x = (
            torch.tensor(rows, dtype=torch.float64) - torch.tensor(mean, dtype=torch.float64)
        ) / torch.tensor(std, dtype=torch.float64).clamp(min=STUDY_FLOOR)
        with torch.no_grad():
            theirs = model.double().encode(x).numpy()
        reference, keep = study_encode(study, mean, std, rows)
        np.testing.assert_allclose(
            theirs, reference, rtol=1e-12, atol=1e-12
        )  # our reading of dfc.py
        order = study_latent_order(F, model.n_a, model.n_b, "a")
        error = compare_codes(
            self,
            ours_encode(out, rows[:, [1, 0]]),
            theirs[:, order],
            keep[:, order],
            "DFCCrossCoder",
        )
        print(f"peer DFCCrossCoder: max |ours - theirs| = {error:.3g}", file=sys.stderr)

    def test_fixture_loads_with_own_class(self) -> None:
        study = self.dir / "study"
        make_study_checkpoint(study, self.rng, 12, 48, 6, 5, 7)
        model = self.dfc.DFCCrossCoder.load(str(study))  # strict load_state_dict
        rows = self.rng.normal(size=(50, 2, 12)).astype(np.float32)
        with torch.no_grad():
            theirs = model.double().encode(torch.tensor(rows, dtype=torch.float64)).numpy()
        reference, _ = study_encode(study, None, None, rows)
        np.testing.assert_allclose(theirs, reference, rtol=1e-12, atol=1e-12)

    def test_cache_statistics(self) -> None:
        import cache  # noqa: PLC0415 - the peer's module

        d = 12
        directory = self.dir / "cache"
        directory.mkdir()
        shards = [
            torch.tensor(self.rng.normal(loc=1.0, scale=2.0, size=(n, 2, d))).half()
            for n in (40, 25)
        ]
        for i, shard in enumerate(shards):
            torch.save(shard, directory / f"shard_{i:05d}.pt")
        (directory / "meta.json").write_text(
            json.dumps({"total_samples": 65, "shards": ["shard_00000.pt", "shard_00001.pt"]})
        )
        dataset = cache.CachedActivationDataset(str(directory), normalize=True)
        study = self.dir / "study"
        make_study_checkpoint(study, self.rng, d, 48, 6, 5, 7)
        out = self.dir / "ours.safetensors"
        convert("from-study", study, "--zscore-from-cache", directory, "--out", out)
        _, tensors = read_ours(out)
        np.testing.assert_array_equal(tensors["normaliser.mean"], dataset.mean.numpy()[[1, 0]])
        np.testing.assert_allclose(
            tensors["normaliser.scale"], 1 / dataset.std.double().numpy()[[1, 0]], rtol=1e-7
        )


@unittest.skipUnless(
    PEER_DL, "CROSSCODER_PEER_DICTIONARY_LEARNING is not set (a checkout of the fork)"
)
class PeerDictionaryLearning(Base):
    L, d, F = 2, 10, 40

    def setUp(self) -> None:
        super().setUp()
        sys.path.insert(0, PEER_DL)
        from dictionary_learning.dictionary import BatchTopKCrossCoder, CrossCoder  # noqa: PLC0415

        self.CrossCoder, self.BatchTopKCrossCoder = CrossCoder, BatchTopKCrossCoder

    def own_model(self, batchtopk: bool) -> Any:
        mean = f32(self.rng.normal(scale=1.5, size=(self.L, self.d)))
        std = f32(np.exp(self.rng.normal(scale=0.4, size=(self.L, self.d))))
        kind = self.BatchTopKCrossCoder if batchtopk else self.CrossCoder
        extra = {"k": 4} if batchtopk else {}
        torch.manual_seed(1)
        model = kind(
            self.d,
            self.F,
            self.L,
            activation_mean=mean,
            activation_std=std,
            target_rms=0.8,
            **extra,
        )
        with torch.no_grad():
            model.encoder.bias.copy_(torch.randn(self.F) * 0.2)
            model.decoder.bias.copy_(torch.randn(self.L, self.d) * 0.5)
            model.encoder.weight.mul_(3.0)
        return model

    def test_own_classes(self) -> None:
        for batchtopk in (False, True):
            with self.subTest(batchtopk=batchtopk):
                model = self.own_model(batchtopk)
                state = {name: t.detach().clone() for name, t in model.state_dict().items()}
                rows = fork_rows(self.rng, state, 200)
                if batchtopk:
                    set_threshold_quantile(state, rows)
                    model.threshold.copy_(state["threshold"])
                path = self.dir / "own.pt"
                torch.save(model.state_dict(), path)
                out = self.dir / "ours.safetensors"
                convert("from-dictionary-learning", path, "--out", out)
                with torch.no_grad():
                    theirs = model.double().encode(torch.tensor(rows, dtype=torch.float64)).numpy()
                reference, keep = fork_encode(state, rows)
                np.testing.assert_allclose(
                    theirs, reference, rtol=1e-9, atol=1e-9
                )  # our reading of dictionary.py
                error = compare_codes(
                    self, ours_encode(out, rows), theirs, keep, f"own batchtopk={batchtopk}"
                )
                print(
                    f"peer {type(model).__name__}: max |ours - theirs| = {error:.3g}",
                    file=sys.stderr,
                )

    def test_fixtures_and_exports_load_strictly(self) -> None:
        for batchtopk in (False, True):
            with self.subTest(what="fixture", batchtopk=batchtopk):
                state = make_fork_state(self.rng, self.L, self.d, self.F, batchtopk=batchtopk)
                path = self.dir / "fixture.pt"
                torch.save(state, path)
                kind = self.BatchTopKCrossCoder if batchtopk else self.CrossCoder
                model = kind.from_pretrained(str(path))  # load_state_dict(strict=True) inside
                self.assertEqual(set(model.state_dict()), set(state))
                for name, value in model.state_dict().items():
                    self.assertEqual(tuple(value.shape), tuple(state[name].shape), name)
                    self.assertEqual(value.dtype, state[name].dtype, name)
        for activation, normalisation in (
            ("relu", "mean_and_scale"),
            ("relu", "per_channel"),
            ("relu", "none"),
            ("batchtopk", "scalar"),
        ):
            with self.subTest(what="export", activation=activation, normalisation=normalisation):
                ours, exported, rows = export_ours(
                    self.dir, self.rng, self.L, self.d, self.F, activation, normalisation, None, 0.3
                )
                kind = self.BatchTopKCrossCoder if activation == "batchtopk" else self.CrossCoder
                model = kind.from_pretrained(str(exported))
                fresh = kind(
                    self.d, self.F, self.L, **({"k": 4} if activation == "batchtopk" else {})
                )
                saved = torch.load(exported, weights_only=True)
                self.assertEqual(
                    {n: (tuple(v.shape), v.dtype) for n, v in saved.items()},
                    {n: (tuple(v.shape), v.dtype) for n, v in fresh.state_dict().items()},
                )
                model = model.double()
                with torch.no_grad():
                    theirs = model.encode(torch.tensor(rows, dtype=torch.float64)).numpy()
                _, keep = fork_encode(torch.load(exported, weights_only=True), rows)
                error = compare_codes(
                    self,
                    ours_encode(ours, rows),
                    theirs,
                    keep,
                    f"export {activation} {normalisation}",
                )
                print(
                    f"peer from_pretrained of export {activation}/{normalisation}: max |ours - theirs| = "
                    f"{error:.3g}",
                    file=sys.stderr,
                )


if __name__ == "__main__":
    if MISSING:
        print(f"skipped: {MISSING}")
        sys.exit(77)
    if not TOOL or not Path(TOOL).is_file():
        print("skipped: CROSSCODER_ENCODE_ROWS does not name the encode_rows tool (ctest sets it)")
        sys.exit(77)
    unittest.main(verbosity=2)
