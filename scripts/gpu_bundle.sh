#!/usr/bin/env bash
# Builds what the GPU checks (scripts/gpu_check.sh) run into build-gpu/bundle, a folder small
# enough to carry to an offline GPU host that lacks Debian's libraries: the tests, bench_cuda,
# the crosscoder tool, the library's side of the PyTorch comparison (benchmarks/peer; the GPU
# host's python3 has torch), and the shared libraries they load from the system (fmt, OpenMP,
# Benchmark, libstdc++). The CUDA runtime, cuBLAS and cuRAND (bench_cuda draws its inputs with
# it) are left out: the GPU host has its own CUDA 13 toolkit (and cuBLASLt alone is 540 MB, far
# over what the device tool carries); gpu_check.sh's ldd step checks that they are found there.
# The CPU code is built for the baseline x86-64 (the GPU host's CPU may lack AVX-512) with Eigen's GEMM (OpenBLAS would add
# 40 MB), which is what the CPU side of the parity tests needs.
# Then, on the GPU host, from the repository root: scripts/gpu_check.sh build-gpu/bundle OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
# -lineinfo: compute-sanitizer's reports (scripts/gpu_check.sh) name the kernels' source lines;
# it adds line tables only (the kernels stay optimised, unlike -G). MPI off: the GPU check runs
# one process, and the bundle then carries no MPI libraries.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCROSSCODER_CUDA=ON -DCROSSCODER_NATIVE_ARCH=OFF \
  -DCROSSCODER_BLAS=Eigen -DCROSSCODER_MPI=OFF -DCMAKE_CUDA_FLAGS=-lineinfo \
  -DCROSSCODER_BUILD_TOOLS=ON -DCROSSCODER_BUILD_EXAMPLES=ON -DCROSSCODER_BUILD_TESTS=ON \
  -DCROSSCODER_BUILD_BENCHMARKS=ON
cmake --build "$build" --parallel "${JOBS:-$(nproc)}" \
  --target crosscoder_tests bench_cuda crosscoder_cli peer_crosscoder_step
bundle="$build/bundle"
rm -rf "$bundle"
mkdir -p "$bundle/lib"
# Only what gpu_check.sh runs (each program holds the whole library, 4-8 MB): the emulator's
# tests and bench_training, which need no GPU, stay here.
programs=("$build/tests/crosscoder_tests" "$build/benchmarks/bench_cuda"
          "$build/bin/crosscoder" "$build/benchmarks/peer/peer_crosscoder_step")
cp "${programs[@]}" "$bundle/"
# Every shared library the programs load, except the C library's own, the CUDA driver (the GPU
# host's own, matched to its kernel module) and the CUDA toolkit's (there too).
for program in "${programs[@]}"; do
  ldd "$program" | awk '/=> \// { print $3 }'
done | sort -u | while read -r library; do
  case "$(basename "$library")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*) ;;
    libcudart.so*|libcublas.so*|libcublasLt.so*|libcurand.so*) ;;
    *) cp -L "$library" "$bundle/lib/" ;;
  esac
done
du -sh "$bundle"
du -h "$bundle"/* "$bundle"/lib/* | sort -h
