#pragma once
// The sparse decoder and the sparse backward passes. The backward passes work on the entries
// regrouped by latent (a stable sort by latent, so each latent's entries stay in row order):
// one block per active latent reads its decoder or encoder row once and writes its gradient
// row once, without atomics, so the results are the same run to run and sum in the same order
// as the CPU backend.

#include <cstdint>

#include "device_common.cuh"

namespace crosscoder::CROSSCODER_CUDA_NS {

/// Column j of bias + Σ value[e]·decoder[latent[e], :] over the entries [begin, end) of a row.
__device__ __forceinline__ float decoded_element(const std::int32_t* latent, const float* value,
                                                 std::int64_t begin, std::int64_t end,
                                                 const float* decoder, const float* bias,
                                                 std::int64_t width, std::int64_t j) {
  float total = bias ? bias[j] : 0.0f;
  for (std::int64_t e = begin; e < end; ++e)
    total += value[e] * decoder[static_cast<std::int64_t>(latent[e]) * width + j];
  return total;
}

/// out[row, :] = bias + Σ value[e]·decoder[latent[e], :]; one block per row, the columns
/// spread over the threads (coalesced reads of each active decoder row).
__global__ void sparse_decode(const std::int64_t* row_ptr, const std::int32_t* latent,
                              const float* value, const float* decoder, const float* bias,
                              std::int64_t width, float* out) {
  const std::int64_t row = blockIdx.x;
  const std::int64_t begin = row_ptr[row], end = row_ptr[row + 1];
  for (std::int64_t j = threadIdx.x; j < width; j += kThreads)
    out[row * width + j] = decoded_element(latent, value, begin, end, decoder, bias, width, j);
}

/// What sparse_reconstruct reads and writes (device pointers).
struct ReconstructArgs {
  const std::int64_t* row_ptr;
  const std::int32_t* latent;
  const float* value;
  const float* decoder;  ///< [F, M·width]
  const float* bias;     ///< [M·width] or null
  const float* target;   ///< [rows, M·width]
  int sources, width;
  float gradient_scale;
  float* recon;
  float* grad;             ///< or null
  double* partial_sse;     ///< [rows·M]
  double* partial_energy;  ///< [rows·M] or null
};

/// The sparse decoder fused with the squared error: each element of a row is decoded, written,
/// compared with the target and differentiated in one visit; per-source sums per row. One block
/// per row, the columns spread over the threads.
__global__ void sparse_reconstruct(ReconstructArgs a) {
  __shared__ double scratch[kThreads];
  const std::int64_t row = blockIdx.x;
  const std::int64_t D = static_cast<std::int64_t>(a.sources) * a.width;
  const std::int64_t begin = a.row_ptr[row], end = a.row_ptr[row + 1];
  for (int m = 0; m < a.sources; ++m) {
    double squared_error = 0.0, energy = 0.0;
    for (int i = threadIdx.x; i < a.width; i += kThreads) {
      const std::int64_t j = static_cast<std::int64_t>(m) * a.width + i;
      const float total = decoded_element(a.latent, a.value, begin, end, a.decoder, a.bias, D, j);
      a.recon[row * D + j] = total;
      const float target = a.target[row * D + j];
      const float difference = total - target;
      squared_error += static_cast<double>(difference) * difference;
      if (a.grad) a.grad[row * D + j] = a.gradient_scale * difference;
      energy += static_cast<double>(target) * target;
    }
    squared_error = block_sum(squared_error, scratch);
    if (a.partial_energy) energy = block_sum(energy, scratch);
    if (threadIdx.x == 0) {
      a.partial_sse[row * a.sources + m] = squared_error;
      if (a.partial_energy) a.partial_energy[row * a.sources + m] = energy;
    }
  }
}

/// entry_row[e] = the row of entry e and entry_index[e] = e; one block per row.
__global__ void label_entries(const std::int64_t* row_ptr, std::int64_t* entry_row,
                              std::int64_t* entry_index) {
  const std::int64_t row = blockIdx.x;
  for (std::int64_t e = row_ptr[row] + threadIdx.x; e < row_ptr[row + 1]; e += kThreads) {
    entry_row[e] = row;
    entry_index[e] = e;
  }
}

/// Entries grouped by latent: group g is latent group_latent[g], its entries
/// entry[group_begin[g] .. group_begin[g + 1]) in ascending order.
struct LatentGroupsView {
  const std::int32_t* group_latent;
  const std::int64_t* group_begin;
  const std::int64_t* entry;      ///< index into the CSR arrays
  const std::int64_t* entry_row;  ///< indexed by CSR entry
};

/// d_value[e] = decoder[f]·grad_out[row(e)] for every entry, and, if d_decoder is set,
/// d_decoder[f] += Σ value[e]·grad_out[row(e)]; one block per latent group.
__global__ void sparse_decoder_backward(LatentGroupsView groups, const float* value,
                                        const float* grad_out, const float* decoder,
                                        std::int64_t width, float* d_value, float* d_decoder) {
  __shared__ float scratch[kThreads];
  const std::int64_t g = blockIdx.x;
  const std::int64_t f = groups.group_latent[g];
  const std::int64_t begin = groups.group_begin[g], end = groups.group_begin[g + 1];
  const float* decoder_row = decoder + f * width;
  for (std::int64_t s = begin; s < end; ++s) {
    const std::int64_t e = groups.entry[s];
    const float* upstream = grad_out + groups.entry_row[e] * width;
    float partial = 0.0f;
    for (std::int64_t j = threadIdx.x; j < width; j += kThreads)
      partial += decoder_row[j] * upstream[j];
    const float dot = block_sum(partial, scratch);
    if (threadIdx.x == 0) d_value[e] = dot;
  }
  if (!d_decoder) return;
  for (std::int64_t j = threadIdx.x; j < width; j += kThreads) {
    float total = d_decoder[f * width + j];
    for (std::int64_t s = begin; s < end; ++s) {
      const std::int64_t e = groups.entry[s];
      total += value[e] * grad_out[groups.entry_row[e] * width + j];
    }
    d_decoder[f * width + j] = total;
  }
}

/// group_of_latent[group_latent[g]] = g (the other latents keep the −1 they were set to).
__global__ void scatter_group_index(const std::int32_t* group_latent, std::int64_t groups,
                                    std::int64_t* group_of_latent) {
  CROSSCODER_FOR_EACH_INDEX(g, groups) { group_of_latent[group_latent[g]] = g; }
}

/// What sparse_backward_kernel reads and writes (device pointers).
struct SparseBackwardArgs {
  LatentGroupsView groups;
  /// [F]: block b serves latent b through its group (−1: none, rows set to zero); null: block b
  /// serves group b (the accumulating pass, which leaves other latents alone).
  const std::int64_t* group_of_latent;
  const float* value;
  const float* grad_out;  ///< [rows, width]
  const float* decoder;   ///< [F, width]
  const float* xn;        ///< [rows, width]
  std::int64_t width;
  const float* value_gradient_offset;  ///< [F] or null
  bool accumulate;
  float* d_decoder;  ///< or null
  float* d_encoder;
  float* d_bias;
  float* d_value;          ///< [nnz] or null
  float* d_pre;            ///< [nnz] scratch: ∂L/∂pre per entry
  double* row_statistics;  ///< [F·statistics_blocks·4] or null (SparseBackwardRequest)
  int statistics_blocks;
};

/// The SparseBackwardRequest::row_statistics of latent f, from the gradient rows the block has
/// written (every thread of the block calls this: it synchronises).
__device__ void write_row_statistics(const SparseBackwardArgs& a, std::int64_t f) {
  __shared__ double partial[4][kThreads];
  const unsigned t = threadIdx.x;
  const std::int64_t W = a.width;
  const std::int64_t block_width = W / a.statistics_blocks;
  __syncthreads();  // the rows' elements were written by other threads of the block
  for (int m = 0; m < a.statistics_blocks; ++m) {
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    for (std::int64_t j = m * block_width + t; j < (m + 1) * block_width; j += kThreads) {
      const double e = a.d_encoder[f * W + j];
      sums[0] += e * e;
      if (a.d_decoder) {
        const double g = a.d_decoder[f * W + j], d = a.decoder[f * W + j];
        sums[1] += g * g;
        sums[2] += g * d;
        sums[3] += d * d;
      }
    }
    CROSSCODER_UNROLL
    for (int i = 0; i < 4; ++i) partial[i][t] = sums[i];
    __syncthreads();
    for (unsigned half = kThreads / 2; half > 0; half /= 2) {
      if (t < half) {
        CROSSCODER_UNROLL
        for (int i = 0; i < 4; ++i) partial[i][t] += partial[i][t + half];
      }
      __syncthreads();
    }
    if (t < 4) a.row_statistics[(f * a.statistics_blocks + m) * 4 + t] = partial[t][0];
    __syncthreads();  // partial free for the next block
  }
}

/// Entries whose decoder-row dot products one block reduces together (one tree of barriers for
/// this many entries rather than one per entry).
constexpr int kDotsPerReduction = 8;

/// The training step's backward pass for one latent per block: ∂L/∂a and ∂L/∂pre of each of its
/// entries (the decoder row read once for up to kDotsPerReduction entries), then the decoder and
/// encoder gradient rows, each written once, adding entries in row order like the CPU backend.
__global__ void sparse_backward_kernel(SparseBackwardArgs a) {
  __shared__ float partial[kDotsPerReduction][kThreads];
  const unsigned t = threadIdx.x;
  std::int64_t f, g;
  if (a.group_of_latent) {
    f = blockIdx.x;
    g = a.group_of_latent[f];
  } else {
    g = blockIdx.x;
    f = a.groups.group_latent[g];
  }
  const std::int64_t W = a.width;
  if (g < 0) {  // a latent without entries, in the overwriting pass
    for (std::int64_t j = t; j < W; j += kThreads) {
      a.d_encoder[f * W + j] = 0.0f;
      if (a.d_decoder) a.d_decoder[f * W + j] = 0.0f;
    }
    if (t == 0) a.d_bias[f] = 0.0f;
    if (a.row_statistics) {
      for (std::int64_t i = t; i < 4 * a.statistics_blocks; i += kThreads)
        a.row_statistics[f * a.statistics_blocks * 4 + i] = 0.0;
    }
    return;
  }
  const std::int64_t begin = a.groups.group_begin[g], end = a.groups.group_begin[g + 1];
  const float* decoder_row = a.decoder + f * W;
  const float offset = a.value_gradient_offset ? a.value_gradient_offset[f] : 0.0f;

  for (std::int64_t chunk = begin; chunk < end; chunk += kDotsPerReduction) {
    const int count =
        end - chunk < kDotsPerReduction ? static_cast<int>(end - chunk) : kDotsPerReduction;
    std::int64_t upstream_offset[kDotsPerReduction];
    float local[kDotsPerReduction];
    CROSSCODER_UNROLL
    for (int c = 0; c < kDotsPerReduction; ++c) {
      upstream_offset[c] = c < count ? a.groups.entry_row[a.groups.entry[chunk + c]] * W : 0;
      local[c] = 0.0f;
    }
    for (std::int64_t j = t; j < W; j += kThreads) {
      const float d = decoder_row[j];
      CROSSCODER_UNROLL
      for (int c = 0; c < kDotsPerReduction; ++c)
        if (c < count) local[c] += d * a.grad_out[upstream_offset[c] + j];
    }
    CROSSCODER_UNROLL
    for (int c = 0; c < kDotsPerReduction; ++c) partial[c][t] = local[c];
    __syncthreads();
    for (unsigned half = kThreads / 2; half > 0; half /= 2) {
      if (t < half) {
        CROSSCODER_UNROLL
        for (int c = 0; c < kDotsPerReduction; ++c) partial[c][t] += partial[c][t + half];
      }
      __syncthreads();
    }
    if (t < static_cast<unsigned>(count)) {
      const std::int64_t e = a.groups.entry[chunk + t];
      const float d_value = partial[t][0];
      if (a.d_value) a.d_value[e] = d_value;
      a.d_pre[e] = a.value[e] > 0.0f ? d_value + offset : 0.0f;
    }
    __syncthreads();  // d_pre visible to the block; partial free for the next chunk
  }

  for (std::int64_t j = t; j < W; j += kThreads) {
    float decoder_total = a.accumulate && a.d_decoder ? a.d_decoder[f * W + j] : 0.0f;
    float encoder_total = a.accumulate ? a.d_encoder[f * W + j] : 0.0f;
    for (std::int64_t s = begin; s < end; ++s) {
      const std::int64_t e = a.groups.entry[s];
      const std::int64_t row_offset = a.groups.entry_row[e] * W;
      decoder_total += a.value[e] * a.grad_out[row_offset + j];
      const float d_pre = a.d_pre[e];
      if (d_pre != 0.0f) encoder_total += d_pre * a.xn[row_offset + j];
    }
    if (a.d_decoder) a.d_decoder[f * W + j] = decoder_total;
    a.d_encoder[f * W + j] = encoder_total;
  }
  if (t == 0) {
    float bias_gradient = 0.0f;
    for (std::int64_t s = begin; s < end; ++s) {
      const float d_pre = a.d_pre[a.groups.entry[s]];
      if (d_pre != 0.0f) bias_gradient += d_pre;
    }
    a.d_bias[f] = (a.accumulate ? a.d_bias[f] : 0.0f) + bias_gradient;
  }
  if (a.row_statistics) write_row_statistics(a, f);
}

/// sums[f] and counts[f] of each latent group (other latents left as they are); one thread
/// per group, adding in entry order like the CPU backend.
__global__ void group_totals(LatentGroupsView groups, std::int64_t group_count, const float* value,
                             float* sums, std::int64_t* counts) {
  CROSSCODER_FOR_EACH_INDEX(g, group_count) {
    const std::int64_t begin = groups.group_begin[g], end = groups.group_begin[g + 1];
    float total = 0.0f;
    for (std::int64_t s = begin; s < end; ++s) total += value[groups.entry[s]];
    sums[groups.group_latent[g]] = total;
    counts[groups.group_latent[g]] = end - begin;
  }
}

}  // namespace crosscoder::CROSSCODER_CUDA_NS
