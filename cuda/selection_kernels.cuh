#pragma once
// The kernels of BackendOps::select. TopK and BatchTopK find their threshold by a radix select
// over the scores' bits (three passes of 11, 11 and 10 bits: a histogram of the digit among
// the entries that match the digits chosen so far, then the digit holding the wanted rank),
// per row in one block for TopK and over the whole batch for BatchTopK. The entries above the
// threshold, and the first ties in (row, latent) order, are then written in latent order as
// (rank key, value) pairs, which a segmented sort puts in rank order.

#include <cstdint>

#include "crosscoder/backend_ops.hpp"
#include "device_common.cuh"

namespace crosscoder::CROSSCODER_CUDA_NS {

constexpr int kRadixPasses = 3;
constexpr int kMaxRadixBins = 2048;

__host__ __device__ __forceinline__ int radix_shift(int pass) {
  return pass == 0 ? 21 : (pass == 1 ? 10 : 0);
}
__host__ __device__ __forceinline__ int radix_bins(int pass) { return pass == 2 ? 1024 : 2048; }

struct DigitChoice {
  unsigned digit;
  unsigned long long remaining;  ///< the wanted rank among the chosen digit's entries (1-based)
};

/// Of a histogram of `bins` digits, the digit holding the `remaining`-th largest entry and the
/// rank within it. Every thread of the block must call this; `choice` is shared memory. The
/// callers keep 1 ≤ remaining ≤ the histogram's total; outside that the rank is clamped into it
/// (with an empty histogram, digit 0 and rank 1), so that the choice is always written.
template <typename Count>
__device__ DigitChoice choose_digit(const Count* histogram, int bins, unsigned long long remaining,
                                    unsigned long long* scratch, DigitChoice* choice) {
  const int per_thread = bins / kThreads;
  // Thread t holds the bins [high − per_thread, high), thread 0 the highest.
  const int high = bins - static_cast<int>(threadIdx.x) * per_thread;
  unsigned long long local = 0;
  for (int d = high - 1; d >= high - per_thread; --d) local += histogram[d];
  unsigned long long total = 0;
  unsigned long long above = block_exclusive_scan(local, scratch, total);
  // `total` is the same in every thread, so every thread clamps alike and exactly one thread's
  // bins hold the wanted rank (thread 0 answers for an empty histogram).
  const unsigned long long wanted = remaining < 1 ? 1 : (remaining > total ? total : remaining);
  if (total == 0 && threadIdx.x == 0) *choice = DigitChoice{0u, 1u};
  if (above < wanted && wanted <= above + local) {
    for (int d = high - 1; d >= high - per_thread; --d) {
      const unsigned long long count = histogram[d];
      if (wanted <= above + count) {
        *choice = DigitChoice{static_cast<unsigned>(d), wanted - above};
        break;
      }
      above += count;
    }
  }
  __syncthreads();
  const DigitChoice chosen = *choice;
  __syncthreads();
  return chosen;
}

/// One entry as a selection sees it.
struct ScoredEntry {
  bool competes;
  unsigned key;  ///< key_of(score)
  float value;   ///< the activation written for it
};

/// TopK's view of a row: score max(pre, 0), only allowed (and, if asked, positive) latents.
struct RowTopKScores {
  const float* pre;
  std::int64_t latents;
  std::int64_t k;
  const std::uint8_t* allowed;
  bool positive_only;

  __device__ ScoredEntry operator()(std::int64_t row, std::int64_t f) const {
    const float p = pre[row * latents + f];
    const bool competes = (allowed == nullptr || allowed[f] != 0) && (!positive_only || p > 0.0f);
    const float value = positive_part(p);
    return ScoredEntry{competes, key_of(value), value};
  }
};

/// BatchTopK's view: score max(pre, 0)·weight[f], every latent competes.
struct BatchTopKScores {
  const float* pre;
  std::int64_t latents;
  const float* weight;

  __device__ ScoredEntry operator()(std::int64_t row, std::int64_t f) const {
    const float value = positive_part(pre[row * latents + f]);
    return ScoredEntry{true, key_of(weight ? value * weight[f] : value), value};
  }
};

/// Writes row `row`'s competing entries whose key exceeds `threshold` and `ties` of those whose
/// key equals it (the lowest latents), as (rank key, value) pairs from `keys_out`/`values_out`,
/// in an order the segmented sort then fixes. `ties_in_row` is how many keys equal it. If
/// `min_positive_key` is set, it is lowered to the smallest key of a positive selected score.
template <typename Scores>
__device__ void write_row_selection(const Scores& scores, std::int64_t row, std::int64_t latents,
                                    unsigned threshold, unsigned long long ties,
                                    unsigned long long ties_in_row, unsigned long long* keys_out,
                                    float* values_out, unsigned long long* scratch,
                                    unsigned* min_positive_key) {
  const auto emit = [&](unsigned long long slot, const ScoredEntry& entry, std::int64_t f) {
    keys_out[slot] = rank_key(entry.key, f);
    values_out[slot] = entry.value;
    // Positive floats have keys in (0, 0x80000000).
    if (min_positive_key && entry.key > 0u && entry.key < 0x80000000u)
      atomicMin(min_positive_key, entry.key);
  };
  if (ties == ties_in_row) {
    // Every key ≥ threshold is taken, so which thread takes which does not matter: count the
    // thread's own entries (coalesced reads), one scan for the offsets, then write.
    unsigned long long mine = 0;
    for (std::int64_t f = threadIdx.x; f < latents; f += kThreads) {
      const ScoredEntry entry = scores(row, f);
      mine += entry.competes && entry.key >= threshold ? 1 : 0;
    }
    unsigned long long total = 0;
    unsigned long long slot = block_exclusive_scan(mine, scratch, total);
    for (std::int64_t f = threadIdx.x; f < latents && mine > 0; f += kThreads) {
      const ScoredEntry entry = scores(row, f);
      if (entry.competes && entry.key >= threshold) {
        emit(slot++, entry, f);
        --mine;
      }
    }
    return;
  }
  // Only some ties are taken, the lowest latents: each thread takes a contiguous strip of the
  // row, so that strips in thread order are latent order and two scans rank the ties.
  const std::int64_t strip = ceil_div(latents, kThreads);
  const std::int64_t first = static_cast<std::int64_t>(threadIdx.x) * strip;
  const std::int64_t last = first + strip < latents ? first + strip : latents;
  unsigned long long above = 0, equal = 0;
  for (std::int64_t f = first; f < last; ++f) {
    const ScoredEntry entry = scores(row, f);
    above += entry.competes && entry.key > threshold ? 1 : 0;
    equal += entry.competes && entry.key == threshold ? 1 : 0;
  }
  unsigned long long total = 0;
  const unsigned long long ties_before = block_exclusive_scan(equal, scratch, total);
  unsigned long long take = ties > ties_before ? ties - ties_before : 0;
  take = take < equal ? take : equal;
  unsigned long long slot = block_exclusive_scan(above + take, scratch, total);
  for (std::int64_t f = first; f < last; ++f) {
    const ScoredEntry entry = scores(row, f);
    if (!entry.competes) continue;
    if (entry.key > threshold) {
      emit(slot++, entry, f);
    } else if (entry.key == threshold && take > 0) {
      emit(slot++, entry, f);
      --take;
    }
  }
}

// ---- Selections decided latent by latent (ReLU, thresholds, JumpReLU) --------------------

struct ElementwiseRule {
  Selection selection;
  const float* weight;
  const float* threshold;
  float scalar_threshold;
  float bandwidth;
  const std::uint8_t* allowed;

  __device__ bool keeps(float p, std::int64_t f) const {
    if (allowed && allowed[f] == 0) return false;
    switch (selection) {
      case Selection::positive:
        return p > 0.0f;
      case Selection::batch_threshold: {
        const float positive = positive_part(p);
        return (weight ? positive * weight[f] : positive) > scalar_threshold;
      }
      case Selection::jump_threshold:
        return p > threshold[f];
      case Selection::near_threshold:
        return fabsf(p - threshold[f]) < 0.5f * bandwidth;
      default:
        return false;
    }
  }
};

/// counts[row] = the number of latents the rule keeps; one block per row.
__global__ void count_elementwise(const float* pre, std::int64_t latents, ElementwiseRule rule,
                                  std::int64_t* counts) {
  __shared__ std::int64_t scratch[kThreads];
  const std::int64_t row = blockIdx.x;
  const float* p = pre + row * latents;
  std::int64_t local = 0;
  for (std::int64_t f = threadIdx.x; f < latents; f += kThreads)
    local += rule.keeps(p[f], f) ? 1 : 0;
  const std::int64_t total = block_sum(local, scratch);
  if (threadIdx.x == 0) counts[row] = total;
}

/// Writes the kept latents of each row in ascending order at row_ptr[row]; one block per row.
__global__ void write_elementwise(const float* pre, std::int64_t latents, ElementwiseRule rule,
                                  const std::int64_t* row_ptr, std::int32_t* latent_out,
                                  float* value_out) {
  __shared__ std::int64_t scratch[kThreads];
  const std::int64_t row = blockIdx.x;
  const float* p = pre + row * latents;
  std::int64_t written = row_ptr[row];
  for (std::int64_t base = 0; base < latents; base += kThreads) {
    const std::int64_t f = base + threadIdx.x;
    const bool keep = f < latents && rule.keeps(p[f], f);
    std::int64_t total = 0;
    const std::int64_t slot =
        written + block_exclusive_scan<std::int64_t>(keep ? 1 : 0, scratch, total);
    if (keep) {
      latent_out[slot] = static_cast<std::int32_t>(f);
      value_out[slot] = p[f];
    }
    written += total;
  }
}

// ---- TopK ---------------------------------------------------------------------------------

/// counts[row] = min(k, the number of latents that compete in the row); one block per row.
__global__ void count_row_top_k(RowTopKScores scores, std::int64_t* counts) {
  __shared__ std::int64_t scratch[kThreads];
  const std::int64_t row = blockIdx.x;
  std::int64_t local = 0;
  for (std::int64_t f = threadIdx.x; f < scores.latents; f += kThreads)
    local += scores(row, f).competes ? 1 : 0;
  const std::int64_t total = block_sum(local, scratch);
  if (threadIdx.x == 0) counts[row] = total < scores.k ? total : scores.k;
}

/// row_ptr[row] = row·k for every row of a plain TopK (every latent competes).
__global__ void fill_uniform_row_ptr(std::int64_t rows, std::int64_t per_row,
                                     std::int64_t* row_ptr) {
  CROSSCODER_FOR_EACH_INDEX(i, rows + 1) { row_ptr[i] = i * per_row; }
}

/// Each row's row_ptr[row + 1] − row_ptr[row] best entries, unsorted; one block per row.
__global__ void select_row_top_k(RowTopKScores scores, const std::int64_t* row_ptr,
                                 unsigned long long* keys_out, float* values_out) {
  __shared__ unsigned histogram[kMaxRadixBins];
  __shared__ unsigned long long scratch[kThreads];
  __shared__ DigitChoice choice;
  const std::int64_t row = blockIdx.x;
  const std::int64_t begin = row_ptr[row];
  const auto wanted = static_cast<unsigned long long>(row_ptr[row + 1] - begin);
  if (wanted == 0) return;  // the whole block leaves together
  unsigned prefix = 0, mask = 0;
  unsigned long long remaining = wanted;
  unsigned last_digit = 0;
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    const int shift = radix_shift(pass), bins = radix_bins(pass);
    for (int d = threadIdx.x; d < bins; d += kThreads) histogram[d] = 0;
    __syncthreads();
    for (std::int64_t f = threadIdx.x; f < scores.latents; f += kThreads) {
      const ScoredEntry entry = scores(row, f);
      if (entry.competes && (entry.key & mask) == prefix)
        atomicAdd(&histogram[(entry.key >> shift) & static_cast<unsigned>(bins - 1)], 1u);
    }
    __syncthreads();
    const DigitChoice chosen = choose_digit(histogram, bins, remaining, scratch, &choice);
    prefix |= chosen.digit << shift;
    mask |= static_cast<unsigned>(bins - 1) << shift;
    remaining = chosen.remaining;
    last_digit = chosen.digit;
  }
  // The last pass's bin counts the keys equal to the threshold (no pass zeroes it again).
  const unsigned long long ties_in_row = histogram[last_digit];
  write_row_selection(scores, row, scores.latents, prefix, remaining, ties_in_row, keys_out + begin,
                      values_out + begin, scratch, nullptr);
}

// ---- BatchTopK ----------------------------------------------------------------------------

/// The radix select's progress over the whole batch, in device memory.
struct BatchSelectState {
  unsigned prefix;
  unsigned mask;
  unsigned long long remaining;
  unsigned min_positive_key;  ///< smallest key of a positive selected score (0xFFFFFFFF: none)
};

/// Adds one row's histogram of the current digit to `histogram`; one block per row.
__global__ void batch_histogram(BatchTopKScores scores, const BatchSelectState* state, int pass,
                                unsigned long long* histogram) {
  __shared__ unsigned local[kMaxRadixBins];
  const int shift = radix_shift(pass), bins = radix_bins(pass);
  const unsigned prefix = state->prefix, mask = state->mask;
  for (int d = threadIdx.x; d < bins; d += kThreads) local[d] = 0;
  __syncthreads();
  const std::int64_t row = blockIdx.x;
  for (std::int64_t f = threadIdx.x; f < scores.latents; f += kThreads) {
    const unsigned key = scores(row, f).key;
    if ((key & mask) == prefix)
      atomicAdd(&local[(key >> shift) & static_cast<unsigned>(bins - 1)], 1u);
  }
  __syncthreads();
  for (int d = threadIdx.x; d < bins; d += kThreads) {
    if (local[d] != 0) atomicAdd(&histogram[d], static_cast<unsigned long long>(local[d]));
  }
}

/// Chooses the current digit from the batch's histogram; one block.
__global__ void batch_choose_digit(const unsigned long long* histogram, int pass,
                                   BatchSelectState* state) {
  __shared__ unsigned long long scratch[kThreads];
  __shared__ DigitChoice choice;
  const int shift = radix_shift(pass), bins = radix_bins(pass);
  const DigitChoice chosen = choose_digit(histogram, bins, state->remaining, scratch, &choice);
  if (threadIdx.x == 0) {
    state->prefix |= chosen.digit << shift;
    state->mask |= static_cast<unsigned>(bins - 1) << shift;
    state->remaining = chosen.remaining;
  }
}

/// Per row: how many keys exceed the threshold and how many equal it; one block per row.
__global__ void batch_row_counts(BatchTopKScores scores, const BatchSelectState* state,
                                 std::int64_t* above, std::int64_t* ties) {
  __shared__ std::int64_t scratch[kThreads];
  const unsigned threshold = state->prefix;
  const std::int64_t row = blockIdx.x;
  std::int64_t local_above = 0, local_ties = 0;
  for (std::int64_t f = threadIdx.x; f < scores.latents; f += kThreads) {
    const unsigned key = scores(row, f).key;
    local_above += key > threshold ? 1 : 0;
    local_ties += key == threshold ? 1 : 0;
  }
  const std::int64_t total_above = block_sum(local_above, scratch);
  const std::int64_t total_ties = block_sum(local_ties, scratch);
  if (threadIdx.x == 0) {
    above[row] = total_above;
    ties[row] = total_ties;
  }
}

/// The ties each row takes (the first `remaining` in row order) and its entry count.
/// `tie_offsets` is the inclusive scan of the tie counts with a leading 0.
__global__ void batch_row_take(std::int64_t rows, const BatchSelectState* state,
                               const std::int64_t* above, const std::int64_t* tie_offsets,
                               std::int64_t* ties_taken, std::int64_t* counts) {
  const auto wanted_ties = static_cast<std::int64_t>(state->remaining);
  CROSSCODER_FOR_EACH_INDEX(row, rows) {
    const std::int64_t before = tie_offsets[row];
    const std::int64_t here = tie_offsets[row + 1] - before;
    std::int64_t take = wanted_ties - before;
    take = take < 0 ? 0 : (take > here ? here : take);
    ties_taken[row] = take;
    counts[row] = above[row] + take;
  }
}

/// Writes each row's selected entries, unsorted; one block per row.
__global__ void write_batch_selection(BatchTopKScores scores, BatchSelectState* state,
                                      const std::int64_t* row_ptr, const std::int64_t* ties,
                                      const std::int64_t* ties_taken, unsigned long long* keys_out,
                                      float* values_out) {
  __shared__ unsigned long long scratch[kThreads];
  const std::int64_t row = blockIdx.x;
  const std::int64_t begin = row_ptr[row];
  write_row_selection(scores, row, scores.latents, state->prefix,
                      static_cast<unsigned long long>(ties_taken[row]),
                      static_cast<unsigned long long>(ties[row]), keys_out + begin,
                      values_out + begin, scratch, &state->min_positive_key);
}

/// latent[i] from the rank keys of sorted entries.
__global__ void unpack_rank_keys(const unsigned long long* keys, std::int64_t n,
                                 std::int32_t* latent) {
  CROSSCODER_FOR_EACH_INDEX(i, n) { latent[i] = latent_of_rank_key(keys[i]); }
}

// ---- The best entries of sparse codes (the last step of a tiled BatchTopK) ----------------

/// key[e] = 2^31 − 1 − the bits of entry e's score, so that an ascending stable sort puts higher
/// scores first and equal scores in entry order; index[e] = e.
__global__ void entry_descending_keys(const float* value, const std::int32_t* latent,
                                      const float* weight, std::int64_t nnz, std::int32_t* key,
                                      std::int64_t* index) {
  CROSSCODER_FOR_EACH_INDEX(e, nnz) {
    const float positive = positive_part(value[e]);
    const float score = weight ? positive * weight[latent[e]] : positive;
    key[e] = static_cast<std::int32_t>(0x7FFFFFFFu - key_of(score));
    index[e] = e;
  }
}

/// Marks the first `count` entries in sorted order and takes the smallest positive score among
/// them into *min_positive_key.
__global__ void mark_first_entries(const std::int64_t* sorted_index, const std::int32_t* sorted_key,
                                   std::int64_t count, std::uint8_t* selected,
                                   unsigned* min_positive_key) {
  CROSSCODER_FOR_EACH_INDEX(i, count) {
    selected[sorted_index[i]] = 1;
    const unsigned key = 0x7FFFFFFFu - static_cast<unsigned>(sorted_key[i]);
    if (key > 0u) atomicMin(min_positive_key, key);
  }
}

/// counts[row] = the number of marked entries of the row; one block per row.
__global__ void count_marked_entries(const std::int64_t* row_ptr, const std::uint8_t* selected,
                                     std::int64_t* counts) {
  __shared__ std::int64_t scratch[kThreads];
  const std::int64_t row = blockIdx.x;
  std::int64_t local = 0;
  for (std::int64_t e = row_ptr[row] + threadIdx.x; e < row_ptr[row + 1]; e += kThreads)
    local += selected[e];
  const std::int64_t total = block_sum(local, scratch);
  if (threadIdx.x == 0) counts[row] = total;
}

/// Copies each row's marked entries, in their order, to the output codes; one block per row.
__global__ void compact_marked_entries(const std::int64_t* row_ptr, const std::uint8_t* selected,
                                       const std::int32_t* latent, const float* value,
                                       const std::int64_t* out_row_ptr, std::int32_t* out_latent,
                                       float* out_value) {
  __shared__ std::int64_t scratch[kThreads];
  const std::int64_t row = blockIdx.x;
  const std::int64_t begin = row_ptr[row], end = row_ptr[row + 1];
  std::int64_t written = out_row_ptr[row];
  for (std::int64_t chunk = begin; chunk < end; chunk += kThreads) {
    const std::int64_t e = chunk + threadIdx.x;
    const std::int64_t flag = e < end ? selected[e] : 0;
    std::int64_t total = 0;
    const std::int64_t position = block_exclusive_scan(flag, scratch, total);
    if (flag) {
      out_latent[written + position] = latent[e];
      out_value[written + position] = value[e];
    }
    written += total;
  }
}

}  // namespace crosscoder::CROSSCODER_CUDA_NS
