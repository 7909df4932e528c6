// The device-wide primitives for the emulator, on host memory with the standard library. They
// give the results the CUB and cuBLASLt calls of device_primitives.cu are documented to give
// (stable radix sort, inclusive scan, run-length encoding, segmented descending sort, a GEMM
// whose operands are rounded to TF32 or bfloat16 when asked).
#define CROSSCODER_CUDA_EMULATION 1
#include "device_primitives.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <numeric>
#include <vector>

namespace crosscoder::CROSSCODER_CUDA_NS {

void* Workspace::get(std::size_t bytes) {
  if (bytes <= bytes_ && data_) return data_;
  release();
  CROSSCODER_CUDA_CHECK(cudaMallocAsync(&data_, bytes + 256, stream_));
  bytes_ = bytes + 256;
  return data_;
}

void Workspace::release() noexcept {
  if (data_) cudaFreeAsync(data_, stream_);
  data_ = nullptr;
  bytes_ = 0;
}

void counts_to_offsets(const std::int64_t* counts, std::int64_t n, std::int64_t* offsets,
                       Workspace&, cudaStream_t) {
  offsets[0] = 0;
  std::inclusive_scan(counts, counts + n, offsets + 1);
}

void stable_sort_by_key(const std::int32_t* keys_in, std::int32_t* keys_out,
                        const std::int64_t* values_in, std::int64_t* values_out, std::int64_t n,
                        int, Workspace&, cudaStream_t) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int64_t a, std::int64_t b) { return keys_in[a] < keys_in[b]; });
  for (std::int64_t i = 0; i < n; ++i) {
    keys_out[i] = keys_in[order[i]];
    values_out[i] = values_in[order[i]];
  }
}

std::int64_t run_lengths(const std::int32_t* sorted_keys, std::int64_t n, std::int32_t* run_key,
                         std::int64_t* run_length, Workspace&, cudaStream_t) {
  std::int64_t runs = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (i == 0 || sorted_keys[i] != sorted_keys[i - 1]) {
      run_key[runs] = sorted_keys[i];
      run_length[runs] = 0;
      ++runs;
    }
    ++run_length[runs - 1];
  }
  return runs;
}

void sort_segments_descending(const unsigned long long* keys_in, unsigned long long* keys_out,
                              const float* values_in, float* values_out, std::int64_t,
                              std::int64_t segments, const std::int64_t* offsets, Workspace&,
                              cudaStream_t) {
  for (std::int64_t s = 0; s < segments; ++s) {
    const std::int64_t begin = offsets[s], end = offsets[s + 1];
    std::vector<std::int64_t> order(static_cast<std::size_t>(end - begin));
    std::iota(order.begin(), order.end(), begin);
    std::stable_sort(order.begin(), order.end(),
                     [&](std::int64_t a, std::int64_t b) { return keys_in[a] > keys_in[b]; });
    for (std::int64_t i = begin; i < end; ++i) {
      keys_out[i] = keys_in[order[static_cast<std::size_t>(i - begin)]];
      values_out[i] = values_in[order[static_cast<std::size_t>(i - begin)]];
    }
  }
}

namespace {

// Rounds to the nearest float with `kept` mantissa bits (ties to even), as TF32 (10) and
// bfloat16 (7) operands are.
float round_mantissa(float x, int kept) {
  const auto bits = std::bit_cast<std::uint32_t>(x);
  const int dropped = 23 - kept;
  const std::uint32_t half = 1u << (dropped - 1);
  const std::uint32_t odd = (bits >> dropped) & 1u;
  const std::uint32_t rounded = (bits + half - 1 + odd) & ~((1u << dropped) - 1);
  return std::bit_cast<float>(rounded);
}

}  // namespace

struct EncoderGemm::State {};

EncoderGemm::EncoderGemm(cudaStream_t) : state_(std::make_unique<State>()) {}
EncoderGemm::~EncoderGemm() = default;

void EncoderGemm::run(const float* xn, std::int64_t rows, std::int64_t input_width,
                      const float* encoder, const float* bias, std::int64_t latents, bool rectify,
                      float* pre, MatmulPrecision precision) {
  const int kept = precision == MatmulPrecision::tf32       ? 10
                   : precision == MatmulPrecision::bfloat16 ? 7
                                                            : 23;
  const auto operand = [kept](float x) { return kept == 23 ? x : round_mantissa(x, kept); };
  for (std::int64_t b = 0; b < rows; ++b) {
    for (std::int64_t f = 0; f < latents; ++f) {
      float total = 0.0f;
      for (std::int64_t j = 0; j < input_width; ++j)
        total += operand(xn[b * input_width + j]) * operand(encoder[f * input_width + j]);
      const float biased = total + bias[f];
      pre[b * latents + f] = rectify && !(biased > 0.0f) ? 0.0f : biased;
    }
  }
}

}  // namespace crosscoder::CROSSCODER_CUDA_NS
