#pragma once
// The device-wide primitives the CUDA backend takes from NVIDIA's libraries: CUB's scan, sorts
// and run-length encoding, and the encoder GEMM by cuBLASLt. device_primitives.cu implements
// them on the GPU, emulation/device_primitives_emulated.cpp on the host for the emulator.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "crosscoder/backend.hpp"
#include "portable.hpp"

namespace crosscoder::CROSSCODER_CUDA_NS {

/// Device memory for temporary storage that grows on demand and is kept between calls.
class Workspace {
 public:
  explicit Workspace(cudaStream_t stream) : stream_(stream) {}
  ~Workspace() { release(); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  /// At least `bytes` of device memory, valid until the next call.
  void* get(std::size_t bytes);

 private:
  void release() noexcept;
  cudaStream_t stream_;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// offsets[0] = 0 and offsets[i + 1] = counts[0] + … + counts[i], for i < n.
void counts_to_offsets(const std::int64_t* counts, std::int64_t n, std::int64_t* offsets,
                       Workspace& workspace, cudaStream_t stream);

/// Sorts (key, value) pairs by key, keeping equal keys in their order; keys are in
/// [0, 2^key_bits).
void stable_sort_by_key(const std::int32_t* keys_in, std::int32_t* keys_out,
                        const std::int64_t* values_in, std::int64_t* values_out, std::int64_t n,
                        int key_bits, Workspace& workspace, cudaStream_t stream);

/// The runs of equal keys of a sorted array: the key and length of each run. Returns the number
/// of runs (and so waits for the stream).
std::int64_t run_lengths(const std::int32_t* sorted_keys, std::int64_t n, std::int32_t* run_key,
                         std::int64_t* run_length, Workspace& workspace, cudaStream_t stream);

/// Sorts each segment [offsets[s], offsets[s + 1]) of (key, value) pairs by descending key.
void sort_segments_descending(const unsigned long long* keys_in, unsigned long long* keys_out,
                              const float* values_in, float* values_out, std::int64_t n,
                              std::int64_t segments, const std::int64_t* offsets,
                              Workspace& workspace, cudaStream_t stream);

/// The alignment cuBLASLt may assume of an operand at `pointer`: the largest power of two up to
/// 256 bytes (its default assumption) that divides the address. The trainer's row tiles pass
/// operands at `first · D` floats into a batch, which need not be 256-byte aligned.
inline std::uint32_t operand_alignment(const void* pointer) noexcept {
  const auto address = reinterpret_cast<std::uintptr_t>(pointer);
  std::uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

/// The encoder's dense product with its bias, pre[b, f] = Σ_j xn[b, j]·encoder[f, j] + bias[f],
/// in float32, TF32, or bfloat16 operands with float32 accumulation.
class EncoderGemm {
 public:
  explicit EncoderGemm(cudaStream_t stream);
  ~EncoderGemm();
  EncoderGemm(const EncoderGemm&) = delete;
  EncoderGemm& operator=(const EncoderGemm&) = delete;

  /// `rectify`: max(pre, 0) in the epilogue too.
  void run(const float* xn, std::int64_t rows, std::int64_t input_width, const float* encoder,
           const float* bias, std::int64_t latents, bool rectify, float* pre,
           MatmulPrecision precision);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace crosscoder::CROSSCODER_CUDA_NS
