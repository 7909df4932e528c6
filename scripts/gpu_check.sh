#!/usr/bin/env bash
# The CUDA backend's checks on a GPU host (docs/performance-cuda.md): the whole test suite with
# the CUDA backend, compute-sanitizer memcheck and racecheck on the parity tests, the CUDA
# benchmarks, and the PyTorch comparison with CUDA on both sides. Usage: scripts/gpu_check.sh BUNDLE OUT_DIR, with BUNDLE from scripts/gpu_bundle.sh.
# Each step's output goes to OUT_DIR; the script goes on after a failing step and exits non-zero
# if any failed. (On this workplace's gVisor GPU machines compute-sanitizer has refused the
# device, "Device not supported"; on its Firecracker ones it ran: device/KINDS.md.)
set -uo pipefail
bundle=${1:?usage: gpu_check.sh BUNDLE OUT_DIR}
out=${2:?usage: gpu_check.sh BUNDLE OUT_DIR}
mkdir -p "$out"
# The bundle's libraries, then the host's CUDA toolkit for libcudart and cuBLAS.
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CROSSCODER_MALFORMED_DIR="$PWD/tests/data/malformed"
failed=0
step() {
  local name=$1
  shift
  echo "== $name: $*"
  if "$@" > "$out/$name.log" 2>&1; then
    echo "   ok ($(tail -1 "$out/$name.log"))"
  else
    echo "   FAILED (rc $?), last lines:"
    tail -20 "$out/$name.log"
    failed=1
  fi
}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
step backends "$bundle/crosscoder" backends
# The whole C++ suite: every backend-parameterised test runs on CPU and CUDA.
step tests "$bundle/crosscoder_tests" --gtest_brief=1
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
parity='*BackendOps*cuda*:*Selections*cuda*:*BackendTrainingParity*:*CrosscoderNumerics*cuda*'
step memcheck "$sanitizer" --tool memcheck --leak-check full --error-exitcode 1 \
  "$bundle/crosscoder_tests" --gtest_brief=1 "--gtest_filter=$parity"
step racecheck "$sanitizer" --tool racecheck --error-exitcode 1 \
  "$bundle/crosscoder_tests" --gtest_brief=1 '--gtest_filter=*BackendOps*cuda*:*Selections*cuda*'
step synccheck "$sanitizer" --tool synccheck --error-exitcode 1 \
  "$bundle/crosscoder_tests" --gtest_brief=1 '--gtest_filter=*BackendOps*cuda*:*Selections*cuda*'
step bench_cuda "$bundle/bench_cuda" --benchmark_min_time=0.2 --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_format=json "--benchmark_out=$out/bench_cuda.json"
# The PyTorch comparison on the GPU (benchmarks/peer/README.md): loss equivalence, then the
# reference shape and the grid's largest point that fits one GPU with every implementation alive.
peer=(python3 benchmarks/peer/run_peer_benchmark.py --device cuda --peers all
      --binary "$bundle/peer_crosscoder_step")
step peer_check "${peer[@]}" --check
step peer_timing "${peer[@]}" --reps 10 --warmup 3 \
  --shapes 512x16384x64x1024,2304x65536x64x4096 --json "$out/peer-cuda.json"
exit $failed
