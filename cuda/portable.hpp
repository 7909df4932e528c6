#pragma once
// What lets the CUDA backend's sources compile two ways: by nvcc for a GPU, or, with
// CROSSCODER_CUDA_EMULATION defined, by the host compiler against the emulator in
// emulation/emulator.hpp (tests on machines without a GPU). Each build lives in its own
// namespace, so a test program can hold both.

#if defined(CROSSCODER_CUDA_EMULATION)

#include "emulation/emulator.hpp"
#define CROSSCODER_CUDA_NS cuda_emulated
// Few threads per block keep the emulator quick and make every multi-chunk loop run.
#define CROSSCODER_CUDA_BLOCK 32
#define CROSSCODER_UNROLL _Pragma("GCC unroll 8")

#else

#include <cuda_runtime.h>

#include "cuda_check.hpp"
#define CROSSCODER_CUDA_NS cuda_device
#define CROSSCODER_CUDA_BLOCK 256
#define CROSSCODER_UNROLL _Pragma("unroll")

/// Launches a kernel on a stream and checks the launch.
#define CROSSCODER_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  do {                                                                    \
    kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__);   \
    CROSSCODER_CUDA_CHECK_LAUNCH();                                       \
  } while (0)

#endif
