#pragma once
// The sparse decoder and the sparse backward passes. The backward passes work on the entries
// regrouped by latent (a stable sort by latent, so each latent's entries stay in row order):
// one block per active latent reads its decoder or encoder row once and writes its gradient
// row once, without atomics, so the results are the same run to run and sum in the same order
// as the CPU backend.

#include <cstdint>

#include "device_common.cuh"

namespace crosscoder::CROSSCODER_CUDA_NS {

/// out[row, :] = bias + Σ value[e]·decoder[latent[e], :]; one block per row, the columns
/// spread over the threads (coalesced reads of each active decoder row).
__global__ void sparse_decode(const std::int64_t* row_ptr, const std::int32_t* latent,
                              const float* value, const float* decoder, const float* bias,
                              std::int64_t width, float* out) {
  const std::int64_t row = blockIdx.x;
  const std::int64_t begin = row_ptr[row], end = row_ptr[row + 1];
  for (std::int64_t j = threadIdx.x; j < width; j += kThreads) {
    float total = bias ? bias[j] : 0.0f;
    for (std::int64_t e = begin; e < end; ++e)
      total += value[e] * decoder[static_cast<std::int64_t>(latent[e]) * width + j];
    out[row * width + j] = total;
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

/// d_encoder[f] += Σ d_pre[e]·xn[row(e)], d_bias[f] += Σ d_pre[e] (entries with d_pre = 0
/// skipped, as on the CPU); one block per latent group.
__global__ void sparse_encoder_backward(LatentGroupsView groups, const float* d_pre,
                                        const float* xn, std::int64_t width, float* d_encoder,
                                        float* d_bias) {
  const std::int64_t g = blockIdx.x;
  const std::int64_t f = groups.group_latent[g];
  const std::int64_t begin = groups.group_begin[g], end = groups.group_begin[g + 1];
  for (std::int64_t j = threadIdx.x; j < width; j += kThreads) {
    float total = d_encoder[f * width + j];
    for (std::int64_t s = begin; s < end; ++s) {
      const std::int64_t e = groups.entry[s];
      const float upstream = d_pre[e];
      if (upstream != 0.0f) total += upstream * xn[groups.entry_row[e] * width + j];
    }
    d_encoder[f * width + j] = total;
  }
  if (threadIdx.x == 0) {
    float bias_gradient = 0.0f;
    for (std::int64_t s = begin; s < end; ++s) {
      const float upstream = d_pre[groups.entry[s]];
      if (upstream != 0.0f) bias_gradient += upstream;
    }
    d_bias[f] += bias_gradient;
  }
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
