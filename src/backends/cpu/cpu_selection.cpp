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

// BatchTopK: the exact rows·k-th largest score of the whole batch. Pass one builds a histogram
// of the scores' top 16 bits; pass two keeps every entry above the threshold bucket and
// collects the few inside it, among which the exact threshold (and its ties, taken in
// row-major order) is resolved.
SparseCodes select_per_batch_top_k(const std::shared_ptr<Backend>& backend, const float* pre,
                                   std::int64_t rows, std::int64_t latents,
                                   const SelectionRequest& request, float* min_selected_score) {
  const std::int64_t wanted = std::min(request.k * rows, rows * latents);
  const float* weight = request.weight;
  const auto row_scores = [&](std::int64_t b, auto&& visit) {
    const float* row = pre + b * latents;
    for (std::int64_t f = 0; f < latents; ++f) {
      const float positive = positive_part(row[f]);
      visit(f, weight ? positive * weight[f] : positive, positive);
    }
  };

  constexpr std::size_t kBuckets = 1 << 16;
  std::vector<std::int64_t> histogram(kBuckets, 0);
#pragma omp parallel
  {
    std::vector<std::int64_t> local(kBuckets, 0);
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < rows; ++b) {
      row_scores(b, [&](std::int64_t, float score, float) { ++local[key_of(score) >> 16]; });
    }
#pragma omp critical
    for (std::size_t j = 0; j < kBuckets; ++j) histogram[j] += local[j];
  }
  std::uint32_t bucket = 0;
  std::int64_t rank = wanted;  // rank of the threshold inside `bucket`, 1-based
  for (std::size_t j = kBuckets; j-- > 0;) {
    if (histogram[j] >= rank) {
      bucket = static_cast<std::uint32_t>(j);
      break;
    }
    rank -= histogram[j];
  }

  std::vector<std::vector<Candidate>> picked(static_cast<std::size_t>(rows));
  std::vector<std::vector<Candidate>> borderline(static_cast<std::size_t>(rows));
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    row_scores(b, [&](std::int64_t f, float score, float value) {
      const std::uint32_t high = key_of(score) >> 16;
      if (high > bucket) {
        picked[b].push_back({score, static_cast<std::int32_t>(f), value});
      } else if (high == bucket) {
        borderline[b].push_back({score, static_cast<std::int32_t>(f), value});
      }
    });
  }
  std::vector<std::uint32_t> keys;
  for (const auto& row : borderline) {
    for (const Candidate& c : row) keys.push_back(key_of(c.score));
  }
  std::nth_element(keys.begin(), keys.begin() + (rank - 1), keys.end(), std::greater<>());
  const std::uint32_t threshold_key = keys[static_cast<std::size_t>(rank - 1)];
  std::int64_t ties_left = rank;
  for (std::uint32_t key : keys) ties_left -= key > threshold_key ? 1 : 0;

  std::vector<std::int64_t> counts(static_cast<std::size_t>(rows));
  for (std::int64_t b = 0; b < rows; ++b) {
    for (const Candidate& c : borderline[b]) {
      const std::uint32_t key = key_of(c.score);
      if (key > threshold_key || (key == threshold_key && ties_left-- > 0)) picked[b].push_back(c);
    }
    counts[b] = static_cast<std::int64_t>(picked[b].size());
  }
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
