#!/usr/bin/env bash
# Builds what the GPU checks need into build-gpu/bundle, a folder small enough to carry to an
# offline GPU host that lacks Debian's libraries: the test and benchmark programs, the library,
# and the shared libraries they load from the system (fmt, OpenMP, Benchmark, libstdc++), and
# the library's side of the PyTorch comparison (benchmarks/peer; the GPU host's python3 has torch). The
# CUDA runtime and cuBLAS are left out: the GPU host has its own CUDA 13 toolkit (and cuBLASLt
# alone is 540 MB, far over what the device tool carries). The CPU code is built for the
# baseline x86-64 (the GPU host's CPU may lack AVX-512) with Eigen's GEMM (OpenBLAS would add
# 40 MB), which is what the CPU side of the parity tests needs.
# Then, on the GPU host, from the repository root: scripts/gpu_check.sh build-gpu/bundle OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCROSSCODER_CUDA=ON -DCROSSCODER_NATIVE_ARCH=OFF \
  -DCROSSCODER_BLAS=Eigen \
  -DCROSSCODER_BUILD_EXAMPLES=ON -DCROSSCODER_BUILD_TESTS=ON -DCROSSCODER_BUILD_BENCHMARKS=ON
cmake --build "$build" --parallel "${JOBS:-$(nproc)}" \
  --target crosscoder_tests crosscoder_cuda_emulation_tests bench_cuda bench_training crosscoder_cli \
  peer_crosscoder_step
bundle="$build/bundle"
rm -rf "$bundle"
mkdir -p "$bundle/lib"
programs=("$build/tests/crosscoder_tests" "$build/tests/crosscoder_cuda_emulation_tests"
          "$build/benchmarks/bench_cuda" "$build/benchmarks/bench_training"
          "$build/examples/crosscoder" "$build/benchmarks/peer/peer_crosscoder_step")
cp "${programs[@]}" "$bundle/"
# Every shared library the programs load, except the C library's own, the CUDA driver (the GPU
# host's own, matched to its kernel module) and the CUDA toolkit's (there too).
for program in "${programs[@]}"; do
  ldd "$program" | awk '/=> \// { print $3 }'
done | sort -u | while read -r library; do
  case "$(basename "$library")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*) ;;
    libcudart.so*|libcublas.so*|libcublasLt.so*) ;;
    *) cp -L "$library" "$bundle/lib/" ;;
  esac
done
du -sh "$bundle"
