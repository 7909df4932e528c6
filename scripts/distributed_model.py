#!/usr/bin/env python3
"""The communication model of docs/distributed.md: bytes per collective and predicted step
times for data-parallel and latent-sharded crosscoder training, from the shapes and the
bandwidths given (defaults: the study-scale shape D = 2 x 4608, k = 100, B = 4096 on H100s).

    scripts/distributed_model.py [--width-total 9216] [--k 100] [--batch 4096]
        [--nvlink-gbs 360] [--network-gbs 40] [--gemm-tflops 400] [--hbm-tbs 3.0]

Nothing here is measured: it is arithmetic on the stated assumptions (see the page). Standard
library only.
"""
import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width-total", type=int, default=2 * 4608, help="D = M * d")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4096, help="rows per step (per node, weak)")
    parser.add_argument("--nvlink-gbs", type=float, default=360.0,
                        help="all-reduce bus bandwidth inside a node, GB/s")
    parser.add_argument("--network-gbs", type=float, default=40.0,
                        help="all-reduce bus bandwidth per GPU between nodes, GB/s")
    parser.add_argument("--gemm-tflops", type=float, default=400.0,
                        help="achieved dense encoder GEMM rate (TF32), TFLOP/s")
    parser.add_argument("--hbm-tbs", type=float, default=3.0, help="GPU memory bandwidth, TB/s")
    a = parser.parse_args()
    D, k, B = a.width_total, a.k, a.batch
    nv, net = a.nvlink_gbs * 1e9, a.network_gbs * 1e9
    ring = lambda n: 2 * (n - 1) / n  # bytes a ring all-reduce moves per byte of the array

    print(f"D = {D}, k = {k}, B = {B}; all-reduce bus bandwidth {a.nvlink_gbs:g} GB/s in a "
          f"node, {a.network_gbs:g} GB/s per GPU between nodes; GEMM {a.gemm_tflops:g} TFLOP/s, "
          f"HBM {a.hbm_tbs:g} TB/s\n")
    header = ("| F | parameters | memory per rank, replicated / 8 shards | gradient all-reduce "
              "| 1-GPU step | 8 GPUs data parallel: comm, strong / weak eff. "
              "| 8 GPUs latent-sharded: comm, strong eff. "
              "| 64 GPUs (8 nodes): sharded in node × data parallel across, weak eff. |")
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    for exponent in range(16, 21):
        F = 2 ** exponent
        P = 2 * F * D + F + D  # encoder, decoder, their biases
        memory = 16 * P  # parameters, gradients, Adam's two moments (float32)
        gradient = 4 * P
        t_gemm = 2 * B * D * F / (a.gemm_tflops * 1e12)
        t_memory = (28 + 8) * P / (a.hbm_tbs * 1e12)  # Adam's pass + writing dense gradients
        t1 = t_gemm + t_memory
        # Data parallel, 8 GPUs: the replicated update stays; the GEMM splits.
        dp_comm = gradient * ring(8) / nv
        dp_strong = t1 / (8 * (t_gemm / 8 + t_memory + dp_comm))
        dp_weak = t1 / (t1 + dp_comm)
        # Latent-sharded, 8 GPUs: partial reconstructions summed (B x D floats) and every
        # rank's top-k candidates of every row gathered (value + index).
        ls_comm = 4 * B * D * ring(8) / nv + 8 * B * k * 7 / nv
        ls_strong = t1 / (8 * (t1 / 8 + ls_comm))
        # 8 nodes: latents sharded 8 ways in a node on the node's B rows; the shards' gradients
        # all-reduced across the 8 nodes.
        grid_comm = ls_comm + (gradient / 8) * ring(8) / net
        grid_weak = (t1 / 8) / (t1 / 8 + grid_comm)
        print(f"| 2^{exponent} | {P / 1e9:.2f} G | {memory / 1e9:.0f} GB / {memory / 8e9:.1f} GB "
              f"| {gradient / 1e9:.2f} GB | {1e3 * t1:.0f} ms "
              f"| {1e3 * dp_comm:.0f} ms, {dp_strong:.2f} / {dp_weak:.2f} "
              f"| {1e3 * ls_comm:.2f} ms, {ls_strong:.2f} "
              f"| {1e3 * grid_comm:.0f} ms, {grid_weak:.2f} |")
    print("\nweak efficiency = T(B) / (T(B) + communication): each GPU (or node) keeps its B rows; "
          "strong = T1 / (N * T_N) at a fixed global batch.")


if __name__ == "__main__":
    main()
