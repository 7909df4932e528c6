"""The Python package's overheads, as ratios from one run (docs/performance.md, "Python").

1. Training from Python: ``Trainer.step`` called from Python against the same step from C++
   (benchmarks/bench_training's BM_TrainingStep at d=512, F=16384, k=64, B=1024, BatchTopK),
   in alternating rounds so both see the same state of a shared machine.
2. The steering hook per generated token: ``crosscoder.hf.steer`` (the C++ Steerer in a forward
   hook, every position) against a pure-torch hook doing the same intervention (x += a*d_j),
   both against no hook, during ``generate`` of a small Llama (transformers, random weights).
3. Streaming capture+train (``hf.stream_batches`` into ``crosscoder.train``, no disk) against
   capturing to a dataset first (``hf.capture_to_dataset``) and training on it.

    PYTHONPATH=build/python .venv/bin/python benchmarks/python/bench_python.py \\
        --bench-training build/bin/bench_training --json out.json

Needs numpy; parts 2 and 3 need torch and transformers (skipped without them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np

import crosscoder as cc


def python_step_ms(steps: int, d: int, latents: int, k: int, rows: int) -> float:
    config = cc.CrosscoderConfig(sources=2, width=d, latents=latents, k=k, activation="batchtopk")
    model = cc.Crosscoder(config, backend="cpu", seed=1)
    trainer = cc.Trainer(model, cc.TrainConfig(batch_size=rows, steps=1_000_000,
                                               dead_after_tokens=4 * rows))
    batch = np.random.default_rng(7).standard_normal((rows, 2 * d), dtype=np.float32)
    for _ in range(5):
        trainer.step(batch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.step(batch)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cpp_step_ms(binary: str, d: int, latents: int, k: int, rows: int) -> float:
    """Mean time per step of BM_TrainingStep (it runs for at least 2 s)."""
    name = f"BM_TrainingStep/{d}/{latents}/{k}/{rows}/2"
    out = subprocess.run([binary, f"--benchmark_filter=^{name}/", "--benchmark_format=json"],
                         check=True, capture_output=True, text=True)
    runs = [b for b in json.loads(out.stdout)["benchmarks"] if b["run_type"] == "iteration"]
    if not runs:
        raise SystemExit(f"{binary}: no benchmark matched {name}")
    unit = {"ms": 1.0, "us": 1e-3, "ns": 1e-6, "s": 1e3}[runs[0]["time_unit"]]
    return runs[0]["real_time"] * unit


def training_overhead(args) -> dict:
    shape = (512, 16384, 64, 1024)
    rounds = []
    for _ in range(args.rounds):
        cpp = cpp_step_ms(args.bench_training, *shape)
        py = python_step_ms(args.steps, *shape)
        rounds.append({"cpp_ms": cpp, "python_ms": py, "ratio": py / cpp})
        print(f"training step d=512 F=16384 k=64 B=1024: C++ {cpp:.1f} ms, Python {py:.1f} ms, "
              f"Python/C++ {py / cpp:.3f}")
    return {"rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds)}


def small_llama(width: int, layers: int):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=width, intermediate_size=2 * width,
                                      num_hidden_layers=layers, num_attention_heads=8,
                                      num_key_value_heads=8, max_position_embeddings=512)
    return transformers.LlamaForCausalLM(config).eval()


def steering_overhead(args) -> dict:
    import torch

    from crosscoder import hf

    width, block, new_tokens = 256, 2, 64
    model = small_llama(width, 4)
    crosscoder = cc.Crosscoder(cc.CrosscoderConfig(sources=2, width=width, latents=4096,
                                                   activation="relu"), backend="cpu", seed=1)
    direction = torch.from_numpy(crosscoder.raw_decoder_vectors()[7, 1].copy())
    ids = torch.randint(0, 512, (1, 16))

    def generate():
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0)
        return time.perf_counter() - start

    def with_torch_hook():
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden.add_(3.0 * direction)
            return output
        handle = hf.blocks_of(model)[block].register_forward_hook(hook)
        try:
            return generate()
        finally:
            handle.remove()

    def with_crosscoder_hook():
        with hf.steer(model, crosscoder, source=1, block=block, positions="all",
                      prefill_only=False,
                      interventions=[cc.Intervention("add", latent=7, strength=3.0)]):
            return generate()

    generate()
    times = {"none": [], "torch": [], "crosscoder": []}
    for _ in range(args.rounds * 3):
        times["none"].append(generate())
        times["torch"].append(with_torch_hook())
        times["crosscoder"].append(with_crosscoder_hook())
    median = {k: statistics.median(v) for k, v in times.items()}
    per_token = {k: 1e6 * (median[k] - median["none"]) / new_tokens for k in ("torch", "crosscoder")}
    result = {"generate_s": median, "hook_us_per_token": per_token,
              "generate_ratio_crosscoder_over_torch": median["crosscoder"] / median["torch"]}
    print(f"steering hook during generate ({new_tokens} tokens, width {width}): no hook "
          f"{1e3 * median['none']:.1f} ms, torch hook +{per_token['torch']:.0f} us/token, "
          f"crosscoder.hf.steer +{per_token['crosscoder']:.0f} us/token; generate time "
          f"crosscoder/torch {result['generate_ratio_crosscoder_over_torch']:.3f}")
    return result


def streaming_vs_disk(args) -> dict:
    import torch

    from crosscoder import hf

    width, steps, batch_size = 256, 30, 1024
    base, tuned = small_llama(width, 4), small_llama(width, 4)
    token_batches = [torch.randint(0, 512, (16, 128)) for _ in range(steps * batch_size // (16 * 128) + 2)]
    config = cc.CrosscoderConfig(sources=2, width=width, latents=4096, k=32)
    train_config = cc.TrainConfig(steps=steps, batch_size=batch_size)

    start = time.perf_counter()
    stream = hf.stream_batches([base, tuned], token_batches, block=2, batch_size=batch_size)
    cc.train(cc.Trainer(cc.Crosscoder(config, backend="cpu"), train_config), stream,
             progress=False, data_identity="bench")
    streamed = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        manifest = hf.capture_to_dataset([base, tuned], token_batches, os.path.join(folder, "acts"),
                                         block=2)
        captured = time.perf_counter() - start
        data = cc.ActivationDataset.open(manifest)
        cc.train(cc.Trainer(cc.Crosscoder(config, backend="cpu"), train_config), data,
                 progress=False)
        on_disk = time.perf_counter() - start
    result = {"streamed_s": streamed, "capture_s": captured, "capture_then_train_s": on_disk,
              "ratio_streamed_over_disk": streamed / on_disk}
    print(f"capture+train, {steps} steps of {batch_size} rows, width {width}: streamed "
          f"{streamed:.1f} s, capture to disk {captured:.1f} s then train: {on_disk:.1f} s in all "
          f"(streamed/disk {streamed / on_disk:.3f})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-training", help="the bench_training binary (part 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="Python steps per round")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    print(f"crosscoder {cc.__version__}; backends: "
          f"{[b['kind'] for b in cc.available_backends() if b['usable']]}")
    figures = {}
    if args.bench_training:
        figures["training"] = training_overhead(args)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print("torch or transformers missing: the steering and streaming parts are skipped")
    else:
        figures["steering"] = steering_overhead(args)
        figures["streaming"] = streaming_vs_disk(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
