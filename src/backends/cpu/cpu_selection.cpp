#include "backends/cpu/cpu_selection.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "crosscoder/error.hpp"

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

SparseCodes select_per_row_top_k(const std::shared_ptr<Backend>& backend, const float* pre,
                                 std::int64_t rows, std::int64_t latents,
                                 const SelectionRequest& request) {
  std::int64_t competitors = latents;
  if (request.allowed) {
    competitors = 0;
    for (std::int64_t f = 0; f < latents; ++f) competitors += request.allowed[f] ? 1 : 0;
  }
  const std::int64_t k = std::min(request.k, competitors);
  std::vector<std::int64_t> counts(static_cast<std::size_t>(rows), k);
  SparseCodes codes = allocate_codes(backend, rows, counts);
  if (k == 0) return codes;

#pragma omp parallel
  {
    // A min-heap of the k best so far (the worst on top): most latents lose one comparison.
    std::vector<Candidate> heap;
    heap.reserve(static_cast<std::size_t>(k));
    const auto worse_on_top = [](const Candidate& a, const Candidate& b) {
      return ranks_higher(a, b);
    };
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < rows; ++b) {
      heap.clear();
      const float* row = pre + b * latents;
      for (std::int64_t f = 0; f < latents; ++f) {
        if (!allowed(request, f)) continue;
        const float value = positive_part(row[f]);
        const Candidate candidate{value, static_cast<std::int32_t>(f), value};
        if (static_cast<std::int64_t>(heap.size()) < k) {
          heap.push_back(candidate);
          std::push_heap(heap.begin(), heap.end(), worse_on_top);
        } else if (ranks_higher(candidate, heap.front())) {
          std::pop_heap(heap.begin(), heap.end(), worse_on_top);
          heap.back() = candidate;
          std::push_heap(heap.begin(), heap.end(), worse_on_top);
        }
      }
      write_sorted_row(heap, codes.row_ptr.data()[b], codes);
    }
  }
  return codes;
}

// BatchTopK: the exact rows·k-th largest score of the whole batch by a two-pass radix
// select on the scores' bit patterns (16 high bits, then 16 low bits), then compaction.
SparseCodes select_per_batch_top_k(const std::shared_ptr<Backend>& backend, const float* pre,
                                   std::int64_t rows, std::int64_t latents,
                                   const SelectionRequest& request, float* min_selected_score) {
  const std::int64_t total = rows * latents;
  const std::int64_t wanted = std::min(request.k * rows, total);
  const auto score = [&](std::int64_t index) {
    return score_of(request, pre[index], index % latents);
  };

  constexpr std::size_t kBuckets = 1 << 16;
  std::vector<std::int64_t> histogram(kBuckets, 0);
  const auto build_histogram = [&](auto bucket_of_key, auto key_matches) {
    std::fill(histogram.begin(), histogram.end(), 0);
#pragma omp parallel
    {
      std::vector<std::int64_t> local(kBuckets, 0);
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < total; ++i) {
        const std::uint32_t key = key_of(score(i));
        if (key_matches(key)) ++local[bucket_of_key(key)];
      }
#pragma omp critical
      for (std::size_t j = 0; j < kBuckets; ++j) histogram[j] += local[j];
    }
  };
  // Returns the bucket holding the `rank`-th largest (1-based), and the rank left inside it.
  const auto find_bucket = [&](std::int64_t rank) {
    for (std::size_t j = kBuckets; j-- > 0;) {
      if (histogram[j] >= rank) return std::pair{static_cast<std::uint32_t>(j), rank};
      rank -= histogram[j];
    }
    return std::pair{std::uint32_t{0}, rank};
  };

  build_histogram([](std::uint32_t key) { return key >> 16; }, [](std::uint32_t) { return true; });
  const auto [high, rank_in_high] = find_bucket(wanted);
  build_histogram([](std::uint32_t key) { return key & 0xFFFFu; },
                  [high = high](std::uint32_t key) { return (key >> 16) == high; });
  const auto [low, rank_in_low] = find_bucket(rank_in_high);
  const std::uint32_t threshold_key = (high << 16) | low;
  // Entries equal to the threshold: the first `ties_taken` in row-major order are kept.
  const std::int64_t ties_taken = rank_in_low;

  std::vector<std::int64_t> above(static_cast<std::size_t>(rows), 0);
  std::vector<std::int64_t> equal(static_cast<std::size_t>(rows), 0);
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    for (std::int64_t f = 0; f < latents; ++f) {
      const std::uint32_t key = key_of(score(b * latents + f));
      above[b] += key > threshold_key ? 1 : 0;
      equal[b] += key == threshold_key ? 1 : 0;
    }
  }
  std::vector<std::int64_t> counts(static_cast<std::size_t>(rows));
  std::vector<std::int64_t> ties_in_row(static_cast<std::size_t>(rows));
  std::int64_t ties_left = ties_taken;
  for (std::int64_t b = 0; b < rows; ++b) {
    ties_in_row[b] = std::min(equal[b], ties_left);
    ties_left -= ties_in_row[b];
    counts[b] = above[b] + ties_in_row[b];
  }
  SparseCodes codes = allocate_codes(backend, rows, counts);

  float smallest = std::numeric_limits<float>::infinity();
#pragma omp parallel reduction(min : smallest)
  {
    std::vector<Candidate> picked;
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < rows; ++b) {
      picked.clear();
      std::int64_t ties = ties_in_row[b];
      for (std::int64_t f = 0; f < latents; ++f) {
        const float s = score(b * latents + f);
        const std::uint32_t key = key_of(s);
        if (key > threshold_key || (key == threshold_key && ties-- > 0)) {
          picked.push_back({s, static_cast<std::int32_t>(f), positive_part(pre[b * latents + f])});
          if (s > 0.0f) smallest = std::min(smallest, s);
        }
      }
      write_sorted_row(picked, codes.row_ptr.data()[b], codes);
    }
  }
  if (min_selected_score) {
    *min_selected_score = std::isinf(smallest) ? -1.0f : smallest;
  }
  return codes;
}

}  // namespace

SparseCodes cpu_select(const std::shared_ptr<Backend>& backend, const float* pre, std::int64_t rows,
                       std::int64_t latents, const SelectionRequest& request,
                       float* min_selected_score) {
  if (min_selected_score) *min_selected_score = -1.0f;
  switch (request.selection) {
    case Selection::positive:
      return select_elementwise(backend, pre, rows, latents, [&](float p, std::int64_t f) {
        return p > 0.0f && allowed(request, f);
      });
    case Selection::per_row_top_k:
      if (request.k <= 0)
        throw Error(fmt::format("TopK selection: k must be positive, got {}", request.k));
      return select_per_row_top_k(backend, pre, rows, latents, request);
    case Selection::per_batch_top_k:
      if (request.k <= 0)
        throw Error(fmt::format("BatchTopK selection: k must be positive, got {}", request.k));
      if (request.allowed) throw Error("BatchTopK selection does not take a latent mask");
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

}  // namespace crosscoder::detail
