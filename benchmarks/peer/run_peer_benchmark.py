#!/usr/bin/env python3
"""Side-by-side training-step timing (and loss equivalence) of crosscoder's Trainer against
PyTorch re-implementations of the steps researchers run (dictionary_learning_step.py): the
dictionary_learning crosscoder fork's BatchTopK crosscoder, SAELens' TopK SAE and sparsify's
TopK SparseCoder. See benchmarks/peer/README.md.

Both sides start from the same weights (a crosscoder checkpoint written here, identity
normaliser) and see the same synthetic batches (a .npy file). The library runs in a separate
process (peer_crosscoder_step --serve) that waits on stdin while the peer runs, so the two are
timed alternately, one step at a time, in one run.

  run_peer_benchmark.py --quick                  # 2x512, F 16384, k 64, B 1024
  run_peer_benchmark.py --shapes 512x16384x64x4096,512x65536x64x1024 --reps 5
  run_peer_benchmark.py --shapes '512x*x64x*'    # wildcards; the full grid without --shapes
  run_peer_benchmark.py --check                  # loss equivalence over the first 10 steps
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = 2
GRID = [(d, F, k, B) for d in (512, 2304) for F in (16384, 65536) for k in (32, 64, 128)
        for B in (1024, 4096)]
QUICK = [(512, 16384, 64, 1024)]
CHECK_SHAPES = [(512, 16384, 64, 1024)]


def shape_name(shape) -> str:
    return "x".join(str(v) for v in shape)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="only " + shape_name(QUICK[0]))
    p.add_argument("--shapes", help="comma-separated d x F x k x B patterns (d per source, "
                   "2 sources; '*' matches anything), e.g. 512x16384x64x1024,2304x*x64x1024")
    p.add_argument("--peers", default="dictionary_learning",
                   help="comma-separated: dictionary_learning, saelens, sparsify, or all")
    p.add_argument("--preset", choices=("faithful", "library"), default="faithful",
                   help="peer definitions for timing: the reference's own (default) or "
                   "docs/training.md's (as --check uses)")
    p.add_argument("--reps", type=int, default=5, help="timed steps of each, alternating")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    p.add_argument("--gemm-reps", type=int, default=3,
                   help="encoder GEMM alone (library and torch), per shape; 0 = skip")
    p.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--dead-after-batches", type=int, default=None,
                   help="a latent silent for this many batches is dead (default: 4 when timing, "
                   "as bench_training; 1 for --check), so that AuxK runs")
    p.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where both sides train: the peers' torch device and the library's "
                   "backend (cuda: one GPU, the library's CUDA backend against torch with CUDA)")
    p.add_argument("--check", action="store_true",
                   help="loss equivalence instead of timing (library preset, float32 and float64 "
                   "peers against the library)")
    p.add_argument("--check-steps", type=int, default=10)
    p.add_argument("--binary", default=None, help="peer_crosscoder_step (default: "
                   "build-peer/benchmarks/peer/ or build/benchmarks/peer/)")
    p.add_argument("--workdir", default=None, help="for the weights and data files "
                   "(default: a temporary directory, removed afterwards)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="keep one implementation in memory at a time (fresh instances taking "
                   "turns, each timed at step warmup+1); automatic for shapes whose "
                   "implementations do not fit in memory together but do one by one")
    p.add_argument("--force", action="store_true", help="run shapes that look too large for "
                   "the memory available")
    return p.parse_args()


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dictionary_learning_step import (  # noqa: E402
    LIBRARY_ACTIVATION, PEERS, StepOptions, make_peer, peer_input)

torch.set_num_threads(ARGS.threads)
if ARGS.device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("run_peer_benchmark.py: --device cuda, but torch sees no CUDA device "
                 f"(torch {torch.__version__})")
    # the peers' own tensors (counters, buffers, indices) are made where their weights live
    torch.set_default_device("cuda")
DEVICE = torch.device(ARGS.device)


def synchronize():
    """Waits for the GPU's queued work, so that a wall-clock reading covers it (no-op on CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# ---- inputs -----------------------------------------------------------------------------------


# The checkpoint tensors the peers are built from.
PEER_TENSORS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def write_weights(path: Path, d: int, F: int, k: int, activation: str, seed: int) -> dict:
    """The library's initialisation (docs/training.md): unit-norm Gaussian decoder rows over all
    D columns, encoder = decoder transpose, zero biases; identity normaliser. Written as a
    crosscoder checkpoint (docs/formats.md) and returned as torch tensors for the peers."""
    D = SOURCES * d
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((F, D), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    by_source = rows.reshape(F, SOURCES, d)
    tensors = {
        "encoder.weight": np.ascontiguousarray(by_source.transpose(1, 2, 0)),  # [M, d, F]
        "encoder.bias": np.zeros(F, np.float32),
        "decoder.weight": np.ascontiguousarray(by_source.transpose(1, 0, 2)),  # [M, F, d]
        "decoder.bias": np.zeros((SOURCES, d), np.float32),
        "k": np.array(k, dtype=np.int64),
        "threshold": np.array(-1.0, dtype=np.float32),
        "normaliser.scale": np.ones(SOURCES, np.float32),
        "normaliser.mean": np.zeros((SOURCES, d), np.float32),
    }
    config = {"sources": SOURCES, "width": d, "latents": F, "activation": activation, "k": k,
              "exclusive": [], "normalisation": "none", "jumprelu_initial_threshold": 0.001,
              "jumprelu_bandwidth": 0.001}
    metadata = {"format": "crosscoder-checkpoint-1", "library_version": "peer-benchmark",
                "config": json.dumps(config), "normaliser_fitted": "true"}
    save_file(tensors, str(path), metadata=metadata)
    del rows, by_source
    return {name: torch.from_numpy(tensors[name]) for name in PEER_TENSORS}


def load_initial_weights(path: Path) -> dict:
    """The peers' tensors of a checkpoint from write_weights, read back from its file."""
    tensors = load_file(str(path))
    return {name: tensors[name] for name in PEER_TENSORS}


def write_data(path: Path, d: int, rows: int, seed: int) -> torch.Tensor:
    """Paired activations [rows, 2, d]: an anisotropic Gaussian (variances ∝ 1/(i+1), so that
    some latents go quiet and AuxK runs) for the base model, and 0.9·base + noise for the
    fine-tuned one; E‖x_m‖² = d, so the identity normaliser is what the library would fit."""
    rng = np.random.default_rng(seed)
    sigma = 1.0 / np.sqrt(np.arange(1, d + 1, dtype=np.float64))
    sigma = (sigma * np.sqrt(d / np.sum(sigma**2))).astype(np.float32)
    rng.shuffle(sigma)
    x = np.empty((rows, SOURCES, d), np.float32)
    x[:, 0] = rng.standard_normal((rows, d), dtype=np.float32) * sigma
    x[:, 1] = 0.9 * x[:, 0] + np.sqrt(1 - 0.81) * rng.standard_normal((rows, d), np.float32) * sigma
    np.save(path, x)
    return torch.from_numpy(x)


# ---- the library's process --------------------------------------------------------------------


def find_binary() -> Path:
    if ARGS.binary:
        return Path(ARGS.binary)
    for build in ("build-peer", "build"):
        candidate = ROOT / build / "benchmarks" / "peer" / "peer_crosscoder_step"
        if candidate.exists():
            return candidate
    sys.exit("run_peer_benchmark.py: peer_crosscoder_step not found; build it with "
             "`cmake --build build --target peer_crosscoder_step` or pass --binary")


def library_args(model: Path, data: Path, B: int, opts: StepOptions) -> list[str]:
    return [str(find_binary()), "--model", str(model), "--data", str(data), "--batch", str(B),
            "--lr", repr(opts.lr), "--gradient-clip", repr(opts.gradient_clip),
            "--aux-k", str(opts.aux_k), "--auxk-coefficient", repr(opts.auxk_alpha),
            "--dead-after-tokens", str(opts.dead_after_tokens), "--backend", ARGS.device]


class Library:
    """peer_crosscoder_step --serve: one step (or GEMM) per request."""

    def __init__(self, argv: list[str]):
        self.process = subprocess.Popen(argv + ["--serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready = self._read_until(lambda line: "ready" in line)[-1]

    def _read_until(self, stop):
        lines = []
        while True:
            text = self.process.stdout.readline()
            if not text:
                raise RuntimeError(f"peer_crosscoder_step exited ({self.process.wait()})")
            lines.append(json.loads(text))
            if stop(lines[-1]):
                return lines

    def command(self, name: str, n: int = 1) -> list[dict]:
        self.process.stdin.write(f"{name} {n}\n")
        self.process.stdin.flush()
        return self._read_until(lambda line: line.get("done"))[:-1]

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait()


# ---- timing -----------------------------------------------------------------------------------


def available_bytes() -> int:
    """Free memory where the implementations live: the GPU's on --device cuda, else the host's."""
    if DEVICE.type == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def model_bytes(shape) -> int:
    """One implementation's encoder and decoder: weights, gradients, two Adam moments."""
    d, F, k, B = shape
    return 8 * F * SOURCES * d * 4


def peer_step_bytes(shape) -> int:
    """A peer's dense B×F buffers of the forward/backward: peak RSS over 3 steps at
    512x16384x64x4096 was the weights' 8·F·D floats plus 6.8 (dictionary_learning) and 7.1
    (sparsify) B×F."""
    d, F, k, B = shape
    return 8 * B * F * 4


def estimated_bytes(shape, peers) -> int:
    d, F, k, B = shape
    implementations = len(peers) + len({LIBRARY_ACTIVATION[p] for p in peers})
    return (implementations * model_bytes(shape) + len(peers) * peer_step_bytes(shape)
            + 3 * B * F * 4)


def options_for(peer: str, shape, dead_batches: int, preset_library: bool) -> StepOptions:
    d, F, k, B = shape
    D = SOURCES * d
    # AuxK latents: dictionary_learning's heuristic is d//2 (one layer), the SAE codes' D//2;
    # the library is given the same number.
    aux_k = d // 2 if peer == "dictionary_learning" else D // 2
    return StepOptions(k=k, lr=ARGS.lr, aux_k=aux_k, auxk_alpha=1.0 / 32,
                       dead_after_tokens=dead_batches * B, gradient_clip=1.0,
                       threshold_start_step=0, library=preset_library)


def peer_kwargs(peer: str, dead_batches: int) -> dict:
    return {"dead_feature_window": dead_batches - 1} if peer == "saelens" else {}


def one_at_a_time_bytes(shape) -> int:
    """What one-at-a-time timing needs: the largest single implementation (a peer) and the
    batches, kept throughout. The peers' initial weights are read from the checkpoint file at
    each bring-up rather than held."""
    d, F, k, B = shape
    D = SOURCES * d
    return model_bytes(shape) + peer_step_bytes(shape) + ARGS.batches * B * D * 4


def time_shape(shape, peers, workdir: Path) -> dict:
    d, F, k, B = shape
    D = SOURCES * d
    dead_batches = ARGS.dead_after_batches or 4
    need, have = estimated_bytes(shape, peers), available_bytes()
    alone = one_at_a_time_bytes(shape)
    fits_together = need <= 0.9 * have
    fits_alone = alone <= 0.9 * have
    one_at_a_time = ARGS.one_at_a_time or (not fits_together and fits_alone)
    print(f"\n== {shape_name(shape)} (d={d}/source, D={D}, F={F}, k={k}, B={B}); "
          f"about {need / 2**30:.1f} GiB needed, {have / 2**30:.1f} GiB available", flush=True)
    if one_at_a_time:
        print(f"   one implementation alive at a time (about "
              f"{alone / 2**30:.1f} GiB): each timed step is "
              f"step {ARGS.warmup + 1} from the initial weights of a fresh instance, the "
              f"implementations taking turns", flush=True)
    if not (fits_alone if one_at_a_time else fits_together) and not ARGS.force:
        print("   skipped (--force runs it anyway)")
        return {"shape": shape_name(shape), "skipped": "memory"}
    data_path = workdir / f"data-{shape_name(shape)}.npy"
    x_all = write_data(data_path, d, ARGS.batches * B, seed=1)
    batches = [x_all[i * B:(i + 1) * B] for i in range(ARGS.batches)]

    # name -> how to bring the implementation up: ("library", argv) or ("peer", peer name)
    recipes = {}
    for activation in sorted({LIBRARY_ACTIVATION[p] for p in peers}):
        model_path = workdir / f"model-{shape_name(shape)}-{activation}.safetensors"
        write_weights(model_path, d, F, k, activation, seed=0)  # the same tensors for each
        peer_for = next(p for p in peers if LIBRARY_ACTIVATION[p] == activation)
        opts = options_for(peer_for, shape, dead_batches, ARGS.preset == "library")
        recipes[f"crosscoder ({activation})"] = ("library", library_args(model_path, data_path,
                                                                         B, opts))
    for peer in peers:
        recipes[peer] = ("peer", peer)
    names = [*peers, *(n for n in recipes if n.startswith("crosscoder"))]

    def bring_up(name):
        kind, what = recipes[name]
        if kind == "library":
            return ("library", Library(what), None)
        opts = options_for(what, shape, dead_batches, ARGS.preset == "library")
        # read back at each bring-up rather than held beside the implementations: one at a
        # time, one implementation's 8·F·D floats then fit where the 2·F·D more would not
        initial = load_initial_weights(model_path)
        model = make_peer(what, {name: w.to(DEVICE) for name, w in initial.items()}, opts,
                          **peer_kwargs(what, dead_batches))
        del initial
        return ("peer", model, [peer_input(what, x).to(DEVICE) for x in batches])

    def tear_down(impl):
        if impl[0] == "library":
            impl[1].close()

    def run(impl, counter):
        kind, obj, inputs = impl
        if kind == "library":
            report = obj.command("step", 1)[0]
            return report["ms"] / 1e3, report
        synchronize()
        start = time.perf_counter()
        report = obj.step(inputs[counter % len(inputs)])
        synchronize()  # step() ends in loss.item(), which waits already; this says so
        return time.perf_counter() - start, report

    times = {name: [] for name in names}
    last = {}
    gemm_times = {name: [] for name in [*(n for n in names if n.startswith("crosscoder")),
                                        "torch"]}
    # step ÷ GEMM per round: the library's GEMM alone is timed right after each of its timed
    # steps, so that both see the same moment of a shared host
    ratios = {name: [] for name in names if name.startswith("crosscoder")}

    def time_gemm_after(name, impl, seconds):
        if impl[0] == "library" and ARGS.gemm_reps > 0:
            gemm_s = impl[1].command("gemm", 1)[0]["gemm_ms"] / 1e3
            gemm_times[name].append(gemm_s)
            ratios[name].append(seconds / gemm_s)

    if one_at_a_time:
        for round_ in range(ARGS.reps):
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                impl = bring_up(name)
                for step in range(ARGS.warmup + 1):
                    seconds, last[name] = run(impl, step)
                times[name].append(seconds)
                time_gemm_after(name, impl, seconds)
                tear_down(impl)
                del impl
                gc.collect()  # the peer's tensors, before the next implementation allocates
            print(f"   round {round_ + 1}/{ARGS.reps}: "
                  + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms" for n in order), flush=True)
        impls = {}
    else:
        impls = {name: bring_up(name) for name in names}
        steps_done = dict.fromkeys(names, 0)
        for round_ in range(ARGS.warmup + ARGS.reps):
            order = names if round_ % 2 == 0 else names[::-1]  # alternate, and alternate the order
            for name in order:
                seconds, report = run(impls[name], steps_done[name])
                steps_done[name] += 1
                last[name] = report
                if round_ >= ARGS.warmup:
                    times[name].append(seconds)
                    time_gemm_after(name, impls[name], seconds)
            print(f"   round {round_ + 1}/{ARGS.warmup + ARGS.reps}"
                  f"{' (warm-up)' if round_ < ARGS.warmup else ''}: "
                  + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms" if round_ >= ARGS.warmup else n
                              for n in order), flush=True)
    libraries = {name: impl[1] for name, impl in impls.items() if impl[0] == "library"}

    gemm = {}
    if ARGS.gemm_reps > 0:
        # torch's encoder GEMM alone (x·W_enc + b, B×D by D×F), alternating with the
        # library's after one warm-up call each (the library's were also taken after each of
        # its timed steps)
        x = batches[0].reshape(B, D).to(DEVICE)
        w, bias = torch.randn(D, F, device=DEVICE) / D**0.5, torch.zeros(F, device=DEVICE)
        for rep in range(ARGS.gemm_reps + 1):
            for name, library in libraries.items():
                ms = library.command("gemm", 1)[0]["gemm_ms"]
                if rep > 0:
                    gemm_times[name].append(ms / 1e3)
            synchronize()
            start = time.perf_counter()
            torch.addmm(bias, x, w)
            synchronize()
            if rep > 0:
                gemm_times["torch"].append(time.perf_counter() - start)
        gemm = {name: statistics.median(t) for name, t in gemm_times.items() if t}
        del w
    for impl in impls.values():
        tear_down(impl)

    result = {"shape": shape_name(shape), "d": d, "F": F, "k": k, "B": B,
              "preset": ARGS.preset, "reps": ARGS.reps, "warmup": ARGS.warmup,
              "one_at_a_time": one_at_a_time,
              "median_s": {n: statistics.median(t) for n, t in times.items()},
              "times_s": times, "gemm_s": gemm,
              "step_over_gemm": {n: statistics.median(r) for n, r in ratios.items() if r},
              "last_step": {n: {key: last[n].get(key) for key in
                                ("loss", "auxk", "dead", "dead_fraction", "l0")} for n in names}}
    for peer in peers:
        ours = f"crosscoder ({LIBRARY_ACTIVATION[peer]})"
        peer_s, ours_s = result["median_s"][peer], result["median_s"][ours]
        line = (f"   {peer}: median {peer_s * 1e3:.0f} ms, {ours}: median {ours_s * 1e3:.0f} ms, "
                f"peer/ours = {peer_s / ours_s:.2f}")
        if ratios.get(ours):
            line += (f"; our step / our encoder GEMM = {statistics.median(ratios[ours]):.2f} "
                     "(median of the rounds' ratios)")
        print(line)
    if gemm:
        print("   encoder GEMM alone (B x D x F): " + ", ".join(
            f"{n} {s * 1e3:.0f} ms ({2 * B * D * F / s / 1e9:.0f} GFLOP/s)" for n, s in gemm.items()))
    return result


def print_table(results):
    print("\n| shape (d, F, k, B) | peer | peer median | ours median | peer/ours | "
          "our step / our GEMM | our GEMM | torch GEMM |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['shape']} | skipped ({r['skipped']}) | | | | | | |")
            continue
        for peer in (n for n in r["median_s"] if not n.startswith("crosscoder")):
            ours = f"crosscoder ({LIBRARY_ACTIVATION[peer]})"
            p, o = r["median_s"][peer], r["median_s"][ours]
            g = r["gemm_s"].get(ours)
            t = r["gemm_s"].get("torch")
            # older results have no per-round ratios: the ratio of the medians
            ratio = r.get("step_over_gemm", {}).get(ours) or (o / g if g else None)
            print(f"| {r['d']}, {r['F']}, {r['k']}, {r['B']} | {peer} | {p * 1e3:,.0f} ms | "
                  f"{o * 1e3:,.0f} ms ({ours[12:-1]}) | {p / o:.2f} | "
                  + (f"{ratio:.2f} | {g * 1e3:,.0f} ms | " if g else "| | ")
                  + (f"{t * 1e3:,.0f} ms |" if t else " |"))


# ---- equivalence ------------------------------------------------------------------------------


def check_shape(shape, peers, workdir: Path) -> dict:
    d, F, k, B = shape
    steps = ARGS.check_steps
    dead_batches = ARGS.dead_after_batches or 1
    print(f"\n== equivalence at {shape_name(shape)}: {steps} steps from the same weights and "
          f"batches; peers with library=True; dead after {dead_batches} silent batch(es)",
          flush=True)
    data_path = workdir / f"check-data-{shape_name(shape)}.npy"
    x_all = write_data(data_path, d, steps * B, seed=1)
    batches = [x_all[i * B:(i + 1) * B] for i in range(steps)]
    out = {"shape": shape_name(shape), "steps": steps, "peers": {}}
    for peer in peers:
        activation = LIBRARY_ACTIVATION[peer]
        model_path = workdir / f"check-model-{shape_name(shape)}-{activation}.safetensors"
        weights = write_weights(model_path, d, F, k, activation, seed=0)
        opts = options_for(peer, shape, dead_batches, preset_library=True)
        completed = subprocess.run(library_args(model_path, data_path, B, opts)
                                   + ["--steps", str(steps)], check=True, capture_output=True,
                                   text=True)
        ours = [json.loads(line) for line in completed.stdout.splitlines()]
        runs = {}
        for dtype in (torch.float32, torch.float64):
            model = make_peer(peer, {name: w.to(DEVICE) for name, w in weights.items()}, opts,
                              dtype=dtype, **peer_kwargs(peer, dead_batches))
            runs[dtype] = [model.step(peer_input(peer, x).to(DEVICE, dtype)) for x in batches]
            del model
        print(f"-- {peer} vs crosscoder ({activation})")
        print("   step | crosscoder loss | peer f32 loss | peer f64 loss | |ours-f64|/f64 | "
              "|f32-f64|/f64 | auxk ours | auxk f64 | dead (peer)")
        rows = []
        for i in range(steps):
            o, p32, p64 = ours[i], runs[torch.float32][i], runs[torch.float64][i]
            rel_ours = abs(o["loss"] - p64["loss"]) / abs(p64["loss"])
            rel_f32 = abs(p32["loss"] - p64["loss"]) / abs(p64["loss"])
            rows.append({"step": i + 1, "ours": o["loss"], "peer_f32": p32["loss"],
                         "peer_f64": p64["loss"], "rel_ours_f64": rel_ours,
                         "rel_f32_f64": rel_f32, "auxk_ours": o["auxk"], "auxk_f64": p64["auxk"],
                         "auxk_f32": p32["auxk"], "dead_peer": p64["dead"]})
            print(f"   {i + 1:4d} | {o['loss']:.7f} | {p32['loss']:.7f} | {p64['loss']:.7f} | "
                  f"{rel_ours:.2e} | {rel_f32:.2e} | {o['auxk']:.3e} | {p64['auxk']:.3e} | "
                  f"{p64['dead']}", flush=True)
        worst_ours = max(r["rel_ours_f64"] for r in rows)
        worst_f32 = max(r["rel_f32_f64"] for r in rows)
        auxk_rows = [r for r in rows if r["auxk_f64"] != 0]
        worst_auxk = max((abs(r["auxk_ours"] - r["auxk_f64"]) / abs(r["auxk_f64"])
                          for r in auxk_rows), default=float("nan"))
        worst_auxk_f32 = max((abs(r["auxk_f32"] - r["auxk_f64"]) / abs(r["auxk_f64"])
                              for r in auxk_rows), default=float("nan"))
        print(f"   max relative loss difference: crosscoder vs peer f64 {worst_ours:.2e}; "
              f"peer f32 vs peer f64 {worst_f32:.2e}")
        print(f"   max relative AuxK-term difference ({len(auxk_rows)} steps with AuxK): "
              f"crosscoder vs peer f64 {worst_auxk:.2e}; peer f32 vs peer f64 {worst_auxk_f32:.2e}")
        out["peers"][peer] = {"rows": rows, "max_rel_ours_f64": worst_ours,
                              "max_rel_f32_f64": worst_f32, "max_rel_auxk_ours_f64": worst_auxk,
                              "max_rel_auxk_f32_f64": worst_auxk_f32}
    return out


def main():
    if ARGS.peers == "all":
        peers = list(PEERS)
    else:
        peers = [p.strip() for p in ARGS.peers.split(",") if p.strip()]
        unknown = [p for p in peers if p not in PEERS]
        if unknown:
            sys.exit(f"unknown peer(s) {unknown}; choose from {list(PEERS)}")
    if ARGS.shapes:
        patterns = [s.strip() for s in ARGS.shapes.split(",") if s.strip()]
        pool = GRID + [tuple(int(v) for v in p.split("x")) for p in patterns if "*" not in p]
        shapes = []
        for shape in pool:
            if shape not in shapes and any(fnmatch.fnmatch(shape_name(shape), p) for p in patterns):
                shapes.append(shape)
    elif ARGS.quick:
        shapes = QUICK
    else:
        shapes = CHECK_SHAPES if ARGS.check else GRID
    if not shapes:
        sys.exit("no shape matches --shapes")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}; binary {find_binary()}; load average "
          f"{os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="peer-bench-", dir=ARGS.workdir) as tmp:
        workdir = Path(tmp)
        if ARGS.check:
            results = [check_shape(s, peers, workdir) for s in shapes]
        else:
            results = []
            for shape in shapes:
                results.append(time_shape(shape, peers, workdir))
                # written after every shape: a later shape killed for memory loses only itself
                if ARGS.json:
                    Path(ARGS.json).write_text(json.dumps(results, indent=1))
            print_table(results)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
