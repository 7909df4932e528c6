#include "backends/cpu/cpu_selection.hpp"

#include "backends/backend_contract.hpp"
#include "backends/cpu/cpu_backend.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "crosscoder/error.hpp"
#include "crosscoder/sparse_codes.hpp"

namespace crosscoder::detail {
namespace {

// max(p, 0) that never yields −0.0f, whose bit pattern would sort above every positive score.
float positive_part(float p) { return p > 0.0f ? p : 0.0f; }

struct Candidate {
  float score;
  std::int32_t latent;
  float value;
};

// Strict "ranks higher" order: larger score first, lower latent index on ties, so every
// selection is deterministic.
bool ranks_higher(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.latent < b.latent);
}

bool allowed(const SelectionRequest& request, std::int64_t latent) {
  return request.allowed == nullptr || request.allowed[latent] != 0;
}

float score_of(const SelectionRequest& request, float pre, std::int64_t latent) {
  const float positive = positive_part(pre);
  return request.weight ? positive * request.weight[latent] : positive;
}

// Non-negative floats order like their bit patterns as unsigned integers.
std::uint32_t key_of(float non_negative) { return std::bit_cast<std::uint32_t>(non_negative); }

// A threshold that at least `wanted` of `population` scores reach, read off a sample of them:
// the sampled score ranked 25% and five binomial standard deviations beyond the expected
// count of sampled entries above the true threshold, so that it is rarely too high. 0 when the
// sample is too small to place it. Reorders `sample`.
float threshold_from_sample(std::vector<float>& sample, std::int64_t wanted,
                            std::int64_t population) {
  const double expected = static_cast<double>(wanted) / static_cast<double>(population) *
                          static_cast<double>(sample.size());
  const auto position = static_cast<std::int64_t>(1.25 * expected + 5.0 * std::sqrt(expected) + 8);
  if (position >= static_cast<std::int64_t>(sample.size())) return 0.0f;
  std::nth_element(sample.begin(), sample.begin() + position, sample.end(), std::greater<>());
  return sample[static_cast<std::size_t>(position)];
}

// A BatchTopK candidate's score: row[f]·weight[f], or row[f] when there are no weights.
float weighted_score(const float* row, const float* weight, std::int64_t f) {
  return weight ? row[f] * weight[f] : row[f];
}

// Bit j set where weighted_score(row, weight, j), j < 16, is at least `threshold`: one vector
// comparison where the CPU has AVX-512.
std::uint32_t at_least_mask16(const float* row, const float* weight, float threshold) {
#if defined(__AVX512F__)
  __m512 scores = _mm512_loadu_ps(row);
  if (weight) scores = _mm512_mul_ps(scores, _mm512_loadu_ps(weight));
  return _mm512_cmp_ps_mask(scores, _mm512_set1_ps(threshold), _CMP_GE_OQ);
#else
  std::uint32_t mask = 0;
  for (int j = 0; j < 16; ++j)
    mask |= static_cast<std::uint32_t>(weighted_score(row, weight, j) >= threshold) << j;
  return mask;
#endif
}

// Calls visit(f), f ascending, for every f < n whose weighted_score is at least threshold. Most
// blocks of 16 have no such score and cost one comparison.
template <typename Visit>
void for_each_at_least(const float* row, const float* weight, std::int64_t n, float threshold,
                       Visit visit) {
  constexpr std::int64_t kBlock = 16;
  std::int64_t f = 0;
  for (; f + kBlock <= n; f += kBlock) {
    for (std::uint32_t mask = at_least_mask16(row + f, weight ? weight + f : nullptr, threshold);
         mask != 0; mask &= mask - 1)
      visit(f + std::countr_zero(mask));
  }
  for (; f < n; ++f) {
    if (weighted_score(row, weight, f) >= threshold) visit(f);
  }
}

SparseCodes allocate_codes(const std::shared_ptr<Backend>& backend, std::int64_t rows,
                           const std::vector<std::int64_t>& counts) {
  SparseCodes codes;
  codes.rows = rows;
  codes.row_ptr = DeviceArray<std::int64_t>(backend, static_cast<std::size_t>(rows + 1));
  std::int64_t* row_ptr = codes.row_ptr.data();
  row_ptr[0] = 0;
  for (std::int64_t b = 0; b < rows; ++b) row_ptr[b + 1] = row_ptr[b] + counts[b];
  codes.nnz = row_ptr[rows];
  codes.latent = DeviceArray<std::int32_t>(backend, static_cast<std::size_t>(codes.nnz));
  codes.value = DeviceArray<float>(backend, static_cast<std::size_t>(codes.nnz));
  return codes;
}

// Selections decided latent by latent (ReLU, JumpReLU, thresholds): count, then fill.
template <typename Keep>
SparseCodes select_elementwise(const std::shared_ptr<Backend>& backend, const float* pre,
                               std::int64_t rows, std::int64_t latents, Keep keep) {
  std::vector<std::int64_t> counts(static_cast<std::size_t>(rows), 0);
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    const float* row = pre + b * latents;
    std::int64_t count = 0;
    for (std::int64_t f = 0; f < latents; ++f) count += keep(row[f], f) ? 1 : 0;
    counts[b] = count;
  }
  SparseCodes codes = allocate_codes(backend, rows, counts);
  const std::int64_t* row_ptr = codes.row_ptr.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    const float* row = pre + b * latents;
    std::int64_t out = row_ptr[b];
    for (std::int64_t f = 0; f < latents; ++f) {
      if (keep(row[f], f)) {
        codes.latent.data()[out] = static_cast<std::int32_t>(f);
        codes.value.data()[out] = row[f];
        ++out;
      }
    }
  }
  return codes;
}

void write_sorted_row(std::vector<Candidate>& picked, std::int64_t begin, SparseCodes& codes) {
  std::sort(picked.begin(), picked.end(), ranks_higher);
  for (std::size_t i = 0; i < picked.size(); ++i) {
    codes.latent.data()[begin + static_cast<std::int64_t>(i)] = picked[i].latent;
    codes.value.data()[begin + static_cast<std::int64_t>(i)] = picked[i].value;
  }
}

// Writes the selected candidates of each row as CSR codes, each row sorted by rank, and the
// smallest positive selected score when asked.
SparseCodes write_selection(const std::shared_ptr<Backend>& backend, std::int64_t rows,
                            std::vector<std::vector<Candidate>>& picked,
                            float* min_selected_score) {
  std::vector<std::int64_t> counts(static_cast<std::size_t>(rows));
  for (std::int64_t b = 0; b < rows; ++b) counts[b] = static_cast<std::int64_t>(picked[b].size());
  SparseCodes codes = allocate_codes(backend, rows, counts);
  float smallest = std::numeric_limits<float>::infinity();
#pragma omp parallel for schedule(static) reduction(min : smallest)
  for (std::int64_t b = 0; b < rows; ++b) {
    for (const Candidate& c : picked[b]) {
      if (c.score > 0.0f) smallest = std::min(smallest, c.score);
    }
    write_sorted_row(picked[b], codes.row_ptr.data()[b], codes);
  }
  if (min_selected_score) *min_selected_score = std::isinf(smallest) ? -1.0f : smallest;
  return codes;
}

// The k best of one row (values max(pre, 0), ties to the lower latent) from the candidates at
// or above a threshold estimated on a strided sample of the row: one vectorised pass and a
// select over a few hundred candidates instead of a heap over the whole row. Returns false,
// leaving the row to the heap, when the sample cannot place a positive threshold or fewer than
// k values reach it.
bool row_top_k_by_threshold(const float* row, std::int64_t latents, std::int64_t k,
                            std::vector<float>& sample, std::vector<Candidate>& candidates) {
  constexpr std::int64_t kSample = 1024;
  if (latents < 4 * kSample || 16 * k > latents) return false;
  const std::int64_t stride = latents / kSample;
  sample.clear();
  for (std::int64_t f = 0; f < latents; f += stride) sample.push_back(positive_part(row[f]));
  const float threshold = threshold_from_sample(sample, k, latents);
  if (!(threshold > 0.0f)) return false;
  candidates.clear();
  for_each_at_least(row, nullptr, latents, threshold, [&](std::int64_t f) {
    candidates.push_back({row[f], static_cast<std::int32_t>(f), row[f]});
  });
  if (static_cast<std::int64_t>(candidates.size()) < k) return false;
  std::nth_element(candidates.begin(), candidates.begin() + (k - 1), candidates.end(),
                   ranks_higher);
  candidates.resize(static_cast<std::size_t>(k));
  return true;
}

SparseCodes select_per_row_top_k(const std::shared_ptr<Backend>& backend, const float* pre,
                                 std::int64_t rows, std::int64_t latents,
                                 const SelectionRequest& request) {
  std::int64_t competitors = latents;
  if (request.allowed) {
    competitors = 0;
    for (std::int64_t f = 0; f < latents; ++f) competitors += request.allowed[f] ? 1 : 0;
  }
  const std::int64_t k = std::min(request.k, competitors);
  std::vector<std::vector<Candidate>> picked(static_cast<std::size_t>(rows));
  if (k == 0) return write_selection(backend, rows, picked, nullptr);
  // A mask that admits few latents (AuxK's dead ones: typically a few percent) is read as a list,
  // so each row costs a cache line per admitted latent instead of a pass over all F scores.
  std::vector<std::int32_t> admitted;
  if (request.allowed && competitors * 8 <= latents) {
    admitted.reserve(static_cast<std::size_t>(competitors));
    for (std::int64_t f = 0; f < latents; ++f)
      if (request.allowed[f]) admitted.push_back(static_cast<std::int32_t>(f));
  }

#pragma omp parallel
  {
    // A min-heap of the k best so far (the worst on top): most latents lose one comparison.
    std::vector<Candidate> heap;
    heap.reserve(static_cast<std::size_t>(k));
    const auto worse_on_top = [](const Candidate& a, const Candidate& b) {
      return ranks_higher(a, b);
    };
    std::vector<float> sample;
    std::vector<Candidate> candidates;
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < rows; ++b) {
      const float* row = pre + b * latents;
      if (!request.allowed && !request.positive_only &&
          row_top_k_by_threshold(row, latents, k, sample, candidates)) {
        picked[b] = candidates;
        continue;
      }
      heap.clear();
      const auto consider = [&](std::int64_t f) {
        if (!allowed(request, f)) return;
        const float value = positive_part(row[f]);
        if (request.positive_only && !(value > 0.0f)) return;
        const Candidate candidate{value, static_cast<std::int32_t>(f), value};
        if (static_cast<std::int64_t>(heap.size()) < k) {
          heap.push_back(candidate);
          std::push_heap(heap.begin(), heap.end(), worse_on_top);
        } else if (ranks_higher(candidate, heap.front())) {
          std::pop_heap(heap.begin(), heap.end(), worse_on_top);
          heap.back() = candidate;
          std::push_heap(heap.begin(), heap.end(), worse_on_top);
        }
      };
      if (!admitted.empty()) {
        // The admitted scores are gathered first: independent loads, whose cache misses overlap,
        // where the heap's updates between them had serialised them. Then the k best, or all
        // when no more compete.
        candidates.clear();
        for (const std::int32_t latent : admitted) {
          const float value = positive_part(row[latent]);
          candidates.push_back({value, latent, value});
        }
        if (request.positive_only) {
          std::erase_if(candidates, [](const Candidate& c) { return !(c.score > 0.0f); });
        }
        if (static_cast<std::int64_t>(candidates.size()) > k) {
          std::nth_element(candidates.begin(), candidates.begin() + (k - 1), candidates.end(),
                           ranks_higher);
          candidates.resize(static_cast<std::size_t>(k));
        }
        picked[b] = candidates;
        continue;
      }
      // Once the heap is full, a block of 16 none of whose values beats the worst kept score
      // cannot enter (later latents lose ties), nor, for positive_only, a block with no positive
      // value: one vectorised comparison skips such a block.
      constexpr std::int64_t kBlock = 16;
      std::int64_t f = 0;
      for (; f + kBlock <= latents; f += kBlock) {
        const bool full = static_cast<std::int64_t>(heap.size()) == k;
        if (full || request.positive_only) {
          // Masked-out latents only make the test looser, never wrong.
          const float worst = full ? heap.front().score : 0.0f;
          bool any = false;
          for (std::int64_t j = 0; j < kBlock; ++j) any |= row[f + j] > worst;
          if (!any) continue;
        }
        for (std::int64_t j = 0; j < kBlock; ++j) consider(f + j);
      }
      for (; f < latents; ++f) consider(f);
      picked[b] = heap;
    }
  }
  return write_selection(backend, rows, picked, nullptr);
}

// Keeps, of the candidates (every entry whose score could rank among the `wanted` best, in
// row-major order), exactly the `wanted` best: the wanted-th largest key is found by
// nth_element, and its ties are taken in row-major order.
void keep_best(std::vector<std::vector<Candidate>>& candidates, std::int64_t wanted) {
  std::vector<std::uint32_t> keys;
  for (const auto& row : candidates) {
    for (const Candidate& c : row) keys.push_back(key_of(c.score));
  }
  std::nth_element(keys.begin(), keys.begin() + (wanted - 1), keys.end(), std::greater<>());
  const std::uint32_t threshold_key = keys[static_cast<std::size_t>(wanted - 1)];
  std::int64_t ties_left = wanted;
  for (std::uint32_t key : keys) ties_left -= key > threshold_key ? 1 : 0;
  for (auto& row : candidates) {
    std::size_t kept = 0;
    for (const Candidate& c : row) {
      const std::uint32_t key = key_of(c.score);
      if (key > threshold_key || (key == threshold_key && ties_left-- > 0)) row[kept++] = c;
    }
    row.resize(kept);
  }
}

// Visits (latent, score, value) of every entry of row b with score = max(pre, 0)·weight[f].
template <typename Visit>
void visit_row_scores(const float* pre, const float* weight, std::int64_t latents, std::int64_t b,
                      Visit&& visit) {
  const float* row = pre + b * latents;
  for (std::int64_t f = 0; f < latents; ++f) {
    const float positive = positive_part(row[f]);
    visit(f, weight ? positive * weight[f] : positive, positive);
  }
}

// The exact path for any input: pass one builds a histogram of the scores' top 16 bits; pass
// two keeps every entry above the threshold bucket and the few inside it, among which the
// exact threshold is resolved.
std::vector<std::vector<Candidate>> batch_candidates_by_histogram(const float* pre,
                                                                  const float* weight,
                                                                  std::int64_t rows,
                                                                  std::int64_t latents,
                                                                  std::int64_t wanted) {
  constexpr std::size_t kBuckets = 1 << 16;
  std::vector<std::int64_t> histogram(kBuckets, 0);
#pragma omp parallel
  {
    std::vector<std::int64_t> local(kBuckets, 0);
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < rows; ++b) {
      visit_row_scores(pre, weight, latents, b,
                       [&](std::int64_t, float score, float) { ++local[key_of(score) >> 16]; });
    }
#pragma omp critical
    for (std::size_t j = 0; j < kBuckets; ++j) histogram[j] += local[j];
  }
  std::uint32_t bucket = 0;
  std::int64_t rank = wanted;
  for (std::size_t j = kBuckets; j-- > 0;) {
    if (histogram[j] >= rank) {
      bucket = static_cast<std::uint32_t>(j);
      break;
    }
    rank -= histogram[j];
  }
  std::vector<std::vector<Candidate>> candidates(static_cast<std::size_t>(rows));
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    visit_row_scores(pre, weight, latents, b, [&](std::int64_t f, float score, float value) {
      if ((key_of(score) >> 16) >= bucket)
        candidates[b].push_back({score, static_cast<std::int32_t>(f), value});
    });
  }
  return candidates;
}

// A score that at least `wanted` entries reach, estimated from a sample, with a margin so that
// it is rarely too high; 0 when the sample cannot tell (then use the exact path). The sample is
// 4,096 runs of 16 neighbouring scores, one cache line each, where single scores at a stride
// cost a cache miss apiece.
float sampled_candidate_threshold(const float* pre, const float* weight, std::int64_t rows,
                                  std::int64_t latents, std::int64_t wanted) {
  constexpr std::int64_t kRuns = 1 << 12, kRun = 16;
  const std::int64_t n = rows * latents;
  if (n < 8 * kRuns * kRun) return 0.0f;
  // An odd number of runs apart: when F is a power of two, the runs still visit every latent.
  const std::int64_t stride = kRun * ((n / (kRuns * kRun)) | 1);
  std::vector<float> sample;
  sample.reserve(static_cast<std::size_t>((n / stride + 1) * kRun));
  for (std::int64_t start = 0; start + kRun <= n; start += stride) {
    for (std::int64_t i = start; i < start + kRun; ++i) {
      const float positive = positive_part(pre[i]);
      sample.push_back(weight ? positive * weight[i % latents] : positive);
    }
  }
  return threshold_from_sample(sample, wanted, n);
}

// Every entry whose score is at least `threshold` (> 0, so only positive pre-activations
// qualify, the weights being non-negative), by rows in parallel.
std::vector<std::vector<Candidate>> batch_candidates_above(const float* pre, const float* weight,
                                                           std::int64_t rows, std::int64_t latents,
                                                           float threshold) {
  std::vector<std::vector<Candidate>> candidates(static_cast<std::size_t>(rows));
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    const float* row = pre + b * latents;
    for_each_at_least(row, weight, latents, threshold, [&](std::int64_t f) {
      candidates[b].push_back(
          {weighted_score(row, weight, f), static_cast<std::int32_t>(f), row[f]});
    });
  }
  return candidates;
}

// BatchTopK: the exact rows·k largest scores of the whole batch, ties in row-major order.
// Candidates come from a threshold estimated on a sample when that is possible (one
// vectorised pass), else, or when the estimate proves too high, from the histogram path.
SparseCodes select_per_batch_top_k(const std::shared_ptr<Backend>& backend, const float* pre,
                                   std::int64_t rows, std::int64_t latents,
                                   const SelectionRequest& request, float* min_selected_score) {
  const std::int64_t wanted = std::min(request.k * rows, rows * latents);
  const float* weight = request.weight;
  std::vector<std::vector<Candidate>> candidates;
  // Negative weights would break "score ≥ threshold > 0 only if pre > 0" in the block test.
  const bool weights_non_negative =
      !weight || std::all_of(weight, weight + latents, [](float w) { return w >= 0.0f; });
  const float threshold =
      weights_non_negative ? sampled_candidate_threshold(pre, weight, rows, latents, wanted) : 0.0f;
  if (threshold > 0.0f) {
    candidates = batch_candidates_above(pre, weight, rows, latents, threshold);
    std::int64_t found = 0;
    for (const auto& row : candidates) found += static_cast<std::int64_t>(row.size());
    if (found < wanted) candidates.clear();
  }
  if (candidates.empty()) {
    candidates = batch_candidates_by_histogram(pre, weight, rows, latents, wanted);
  }
  keep_best(candidates, wanted);
  return write_selection(backend, rows, candidates, min_selected_score);
}

}  // namespace

SparseCodes cpu_select(const std::shared_ptr<Backend>& backend, const float* pre, std::int64_t rows,
                       std::int64_t latents, const SelectionRequest& request,
                       float* min_selected_score) {
  if (min_selected_score) *min_selected_score = -1.0f;
  check_selection_request(request);
  switch (request.selection) {
    case Selection::positive:
      return select_elementwise(backend, pre, rows, latents, [&](float p, std::int64_t f) {
        return p > 0.0f && allowed(request, f);
      });
    case Selection::per_row_top_k:
      return select_per_row_top_k(backend, pre, rows, latents, request);
    case Selection::per_batch_top_k:
      return select_per_batch_top_k(backend, pre, rows, latents, request, min_selected_score);
    case Selection::batch_threshold:
      return select_elementwise(backend, pre, rows, latents, [&](float p, std::int64_t f) {
        return score_of(request, p, f) > request.scalar_threshold && allowed(request, f);
      });
    case Selection::jump_threshold:
      return select_elementwise(backend, pre, rows, latents, [&](float p, std::int64_t f) {
        return p > request.threshold[f] && allowed(request, f);
      });
    case Selection::near_threshold:
      return select_elementwise(backend, pre, rows, latents, [&](float p, std::int64_t f) {
        return std::abs(p - request.threshold[f]) < 0.5f * request.bandwidth && allowed(request, f);
      });
  }
  throw Error("select: unknown selection");
}

// ---- The backend's entry points -------------------------------------------------------

SparseCodes CpuBackend::select(const float* pre, std::int64_t rows, std::int64_t latents,
                               const SelectionRequest& request, float* min_selected_score) {
  return cpu_select(shared_from_this(), pre, rows, latents, request, min_selected_score);
}

SparseCodes CpuBackend::select_top_entries(const SparseCodes& codes, std::int64_t count,
                                           const float* weight, float* min_selected_score) {
  if (min_selected_score) *min_selected_score = -1.0f;
  const std::int64_t nnz = codes.nnz;
  const std::int32_t* latent = codes.latent.data();
  const float* value = codes.value.data();
  // Non-negative floats order like their bits; the count-th largest key is the threshold, and
  // its ties are taken in entry order.
  std::vector<std::uint32_t> keys(static_cast<std::size_t>(nnz));
  for (std::int64_t e = 0; e < nnz; ++e) {
    const float positive = value[e] > 0.0f ? value[e] : 0.0f;
    keys[e] = std::bit_cast<std::uint32_t>(weight ? positive * weight[latent[e]] : positive);
  }
  const std::int64_t wanted = std::clamp<std::int64_t>(count, 0, nnz);
  std::uint32_t threshold = 0xFFFFFFFFu;  // with nothing wanted, above every key
  std::int64_t ties_left = 0;
  if (wanted > 0) {
    std::vector<std::uint32_t> sorted = keys;
    std::nth_element(sorted.begin(), sorted.begin() + (wanted - 1), sorted.end(), std::greater<>());
    threshold = sorted[static_cast<std::size_t>(wanted - 1)];
    ties_left = wanted;
    for (std::uint32_t key : keys) ties_left -= key > threshold ? 1 : 0;
  }
  std::vector<std::int64_t> row_ptr(static_cast<std::size_t>(codes.rows + 1), 0);
  std::vector<std::int32_t> kept_latent;
  std::vector<float> kept_value;
  kept_latent.reserve(static_cast<std::size_t>(wanted));
  kept_value.reserve(static_cast<std::size_t>(wanted));
  std::uint32_t smallest_positive = 0xFFFFFFFFu;
  for (std::int64_t b = 0; b < codes.rows; ++b) {
    for (std::int64_t e = codes.row_ptr.data()[b]; e < codes.row_ptr.data()[b + 1]; ++e) {
      if (!(keys[e] > threshold || (keys[e] == threshold && ties_left-- > 0))) continue;
      kept_latent.push_back(latent[e]);
      kept_value.push_back(value[e]);
      if (keys[e] > 0) smallest_positive = std::min(smallest_positive, keys[e]);
    }
    row_ptr[b + 1] = static_cast<std::int64_t>(kept_latent.size());
  }
  if (min_selected_score && smallest_positive != 0xFFFFFFFFu)
    *min_selected_score = std::bit_cast<float>(smallest_positive);
  SparseCodes out;
  out.rows = codes.rows;
  out.nnz = static_cast<std::int64_t>(kept_latent.size());
  out.row_ptr =
      DeviceArray<std::int64_t>(shared_from_this(), std::span<const std::int64_t>(row_ptr));
  out.latent =
      DeviceArray<std::int32_t>(shared_from_this(), std::span<const std::int32_t>(kept_latent));
  out.value = DeviceArray<float>(shared_from_this(), std::span<const float>(kept_value));
  return out;
}

}  // namespace crosscoder::detail
