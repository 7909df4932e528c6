#include "crosscoder/contrast.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "crosscoder/error.hpp"
#include "enum_names.hpp"

namespace crosscoder {
namespace {

constexpr detail::EnumName<CohensD> kCohensDNames[] = {{CohensD::pooled, "pooled"},
                                                       {CohensD::average, "average"}};

// AUROC = U₁ / (n₁n₀), U₁ = R₁ − n₁(n₁+1)/2 with R₁ the sum of the positives' mid-ranks.
// Rows without an entry are zeros: one tie group, placed where 0 sorts among the values.
double exact_auroc(const std::vector<float>& positive, const std::vector<float>& negative,
                   std::int64_t positives, std::int64_t negatives) {
  std::vector<std::pair<float, int>> values;  // (value, group)
  values.reserve(positive.size() + negative.size());
  for (float v : positive) values.push_back({v, 1});
  for (float v : negative) values.push_back({v, 0});
  const auto zeros_positive = static_cast<double>(positives) - static_cast<double>(positive.size());
  const auto zeros_negative = static_cast<double>(negatives) - static_cast<double>(negative.size());
  std::sort(values.begin(), values.end());
  double rank_sum = 0.0;  // R₁
  double below = 0.0;     // how many values rank below the current group
  bool zeros_placed = false;
  const auto place_zeros = [&] {
    const double count = zeros_positive + zeros_negative;
    rank_sum += zeros_positive * (below + (count + 1.0) / 2.0);
    below += count;
    zeros_placed = true;
  };
  for (std::size_t i = 0; i < values.size();) {
    if (!zeros_placed && values[i].first > 0.0f) place_zeros();
    std::size_t j = i;
    double in_group = 0.0;
    while (j < values.size() && values[j].first == values[i].first) {
      in_group += values[j].second;
      ++j;
    }
    const auto count = static_cast<double>(j - i);
    rank_sum += in_group * (below + (count + 1.0) / 2.0);
    below += count;
    i = j;
  }
  if (!zeros_placed) place_zeros();
  const auto n1 = static_cast<double>(positives), n0 = static_cast<double>(negatives);
  return (rank_sum - n1 * (n1 + 1.0) / 2.0) / (n1 * n0);
}

}  // namespace

std::string_view to_string(CohensD kind) noexcept { return detail::enum_name(kCohensDNames, kind); }

CohensD parse_cohens_d(std::string_view text) {
  return detail::parse_enum(kCohensDNames, text, "Cohen's d standardiser");
}

ContrastAccumulator::ContrastAccumulator(std::int64_t latents) : latents_(latents) {
  if (latents < 1) throw Error(fmt::format("contrast: latents must be positive, got {}", latents));
  for (int group = 0; group < 2; ++group) {
    sum_[group].assign(static_cast<std::size_t>(latents), 0.0);
    sum_squares_[group].assign(static_cast<std::size_t>(latents), 0.0);
    fired_[group].assign(static_cast<std::size_t>(latents), 0.0);
    nonzero_[group].assign(static_cast<std::size_t>(latents), {});
  }
}

void ContrastAccumulator::add(const HostSparseCodes& codes, std::span<const std::int8_t> labels) {
  if (static_cast<std::int64_t>(labels.size()) != codes.rows) {
    throw Error(fmt::format("contrast: {} labels for {} rows of codes", labels.size(), codes.rows));
  }
  for (std::int64_t b = 0; b < codes.rows; ++b) {
    const int group = labels[b];
    if (group != 0 && group != 1) continue;
    ++count_[group];
    for (std::int64_t e = codes.row_ptr[b]; e < codes.row_ptr[b + 1]; ++e) {
      const std::int32_t f = codes.latent[e];
      if (f < 0 || f >= latents_)
        throw Error(fmt::format("contrast: latent {} out of range [0, {})", f, latents_));
      const double value = codes.value[e];
      sum_[group][f] += value;
      sum_squares_[group][f] += value * value;
      fired_[group][f] += value > 0.0 ? 1.0 : 0.0;
      if (value != 0.0) nonzero_[group][f].push_back(codes.value[e]);
    }
  }
}

LatentContrast ContrastAccumulator::result(CohensD kind) const {
  if (count_[0] < 2 || count_[1] < 2) {
    throw Error(
        fmt::format("contrast: needs at least two rows per group, got {} positive and {} negative",
                    count_[1], count_[0]));
  }
  LatentContrast out;
  out.positives = count_[1];
  out.negatives = count_[0];
  out.cohens_d_kind = kind;
  const auto F = static_cast<std::size_t>(latents_);
  out.mean_positive.resize(F);
  out.mean_negative.resize(F);
  out.firing_positive.resize(F);
  out.firing_negative.resize(F);
  out.cohens_d.resize(F);
  out.auroc.resize(F);
  const auto n1 = static_cast<double>(count_[1]), n0 = static_cast<double>(count_[0]);
  for (std::size_t f = 0; f < F; ++f) {
    const double mean1 = sum_[1][f] / n1, mean0 = sum_[0][f] / n0;
    // Unbiased variances from the sums; clamp the tiny negatives that rounding can produce.
    const double var1 = std::max(0.0, (sum_squares_[1][f] - n1 * mean1 * mean1) / (n1 - 1.0));
    const double var0 = std::max(0.0, (sum_squares_[0][f] - n0 * mean0 * mean0) / (n0 - 1.0));
    const double standardiser =
        kind == CohensD::average
            ? std::sqrt((var1 + var0) / 2.0)
            : std::sqrt(((n1 - 1.0) * var1 + (n0 - 1.0) * var0) / (n1 + n0 - 2.0));
    out.mean_positive[f] = mean1;
    out.mean_negative[f] = mean0;
    out.firing_positive[f] = fired_[1][f] / n1;
    out.firing_negative[f] = fired_[0][f] / n0;
    out.cohens_d[f] = standardiser > 0.0 ? (mean1 - mean0) / standardiser : 0.0;
    out.auroc[f] = exact_auroc(nonzero_[1][f], nonzero_[0][f], count_[1], count_[0]);
  }
  return out;
}

std::vector<std::int32_t> LatentContrast::ranking(const std::vector<bool>* keep) const {
  std::vector<std::int32_t> order;
  for (std::size_t f = 0; f < cohens_d.size(); ++f) {
    if (!keep || (*keep)[f]) order.push_back(static_cast<std::int32_t>(f));
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return cohens_d[a] > cohens_d[b]; });
  return order;
}

}  // namespace crosscoder
