#pragma once
// Building blocks the CUDA backend's kernels share: block-wide sums and scans in shared
// memory (fixed trees, so every result is the same run to run) and the order-preserving keys
// of the selections.

#include <cstdint>

#include "portable.hpp"

namespace crosscoder::CROSSCODER_CUDA_NS {

/// Threads per block of every kernel (a power of two).
constexpr int kThreads = CROSSCODER_CUDA_BLOCK;

/// A grid-stride index over n elements (any grid size covers them all).
#define CROSSCODER_FOR_EACH_INDEX(i, n)                                                          \
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < (n); \
       i += static_cast<std::int64_t>(gridDim.x) * kThreads)

/// The sum of `value` over the block, returned to every thread. `scratch` holds kThreads
/// numbers of shared memory; every thread of the block must call this.
template <typename T>
__device__ T block_sum(T value, T* scratch) {
  const unsigned t = threadIdx.x;
  scratch[t] = value;
  __syncthreads();
  for (unsigned half = kThreads / 2; half > 0; half /= 2) {
    if (t < half) scratch[t] += scratch[t + half];
    __syncthreads();
  }
  const T total = scratch[0];
  __syncthreads();
  return total;
}

/// The exclusive prefix sum of `value` over the block's threads in thread order; `total`
/// receives the sum over the block. Every thread of the block must call this.
template <typename T>
__device__ T block_exclusive_scan(T value, T* scratch, T& total) {
  const unsigned t = threadIdx.x;
  scratch[t] = value;
  __syncthreads();
  for (unsigned offset = 1; offset < kThreads; offset *= 2) {
    const T add = t >= offset ? scratch[t - offset] : T(0);
    __syncthreads();
    scratch[t] += add;
    __syncthreads();
  }
  const T inclusive = scratch[t];
  total = scratch[kThreads - 1];
  __syncthreads();
  return inclusive - value;
}

/// max(p, 0) that never yields −0.0f, whose bits would sort above every positive number.
__device__ __forceinline__ float positive_part(float p) { return p > 0.0f ? p : 0.0f; }

/// Non-negative floats order like their bit patterns.
__device__ __forceinline__ unsigned key_of(float non_negative) {
  return __float_as_uint(non_negative);
}

/// A selected entry's sort key: its score's key above the latent's complement, so that a
/// descending sort puts larger scores first and, among equal scores, the lower latent first.
__device__ __forceinline__ unsigned long long rank_key(unsigned score_key, std::int64_t latent) {
  return (static_cast<unsigned long long>(score_key) << 32) |
         (0xFFFFFFFFull - static_cast<unsigned long long>(latent));
}

__device__ __forceinline__ std::int32_t latent_of_rank_key(unsigned long long key) {
  return static_cast<std::int32_t>(0xFFFFFFFFull - (key & 0xFFFFFFFFull));
}

/// Ceiling of a / b for positive b.
__host__ __device__ __forceinline__ std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace crosscoder::CROSSCODER_CUDA_NS
