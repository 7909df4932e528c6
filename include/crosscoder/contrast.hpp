#pragma once
/// @file contrast.hpp
/// Contrast ranking between two labelled groups of rows (arXiv 2606.26474): which latents
/// separate positive rows (label 1, e.g. tool-use prompts) from negative rows (label 0).

#include <cstdint>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "crosscoder/sparse_codes.hpp"

namespace crosscoder {

/// The standardiser s of Cohen's d = (mean₁ − mean₀)/s, both from unbiased group variances s₁²,
/// s₀². They agree when n₁ = n₀.
enum class CohensD {
  /// s² = ((n₁−1)s₁² + (n₀−1)s₀²)/(n₁+n₀−2), the n-weighted pooled variance (the textbook
  /// Cohen's d; our default).
  pooled,
  /// s² = (s₁² + s₀²)/2, the unweighted average of the two variances, as the study
  /// (arXiv 2606.26474; Antebe/model_diffing_crosscoders rank_features.py, `cohens_d`) computes it.
  average,
};
/// "pooled" or "average".
std::string_view to_string(CohensD kind) noexcept;
/// Inverse of to_string. @throws Error listing the names.
CohensD parse_cohens_d(std::string_view text);

/// Per-latent statistics of the two groups, each vector [F]. A latent that is not active in
/// a row counts as activation 0 there.
struct LatentContrast {
  std::int64_t positives = 0, negatives = 0;  ///< rows with label 1 and 0
  std::vector<double> mean_positive, mean_negative;
  std::vector<double> firing_positive, firing_negative;  ///< fraction of rows with f > 0
  /// Cohen's d = (mean₁ − mean₀) / s with s as `cohens_d_kind` says; 0 where s is 0.
  std::vector<double> cohens_d;
  CohensD cohens_d_kind = CohensD::pooled;  ///< which standardiser cohens_d used
  /// AUROC of the activation as a score for label 1 against label 0: P(f₊ > f₋) + ½P(f₊ = f₋),
  /// computed exactly from the Mann–Whitney U statistic with mid-ranks for ties (the many
  /// rows where a latent is inactive form one tie group at 0). 0.5 = no separation.
  std::vector<double> auroc;

  /// Latent indices sorted by descending Cohen's d (ties: lower index first), optionally only
  /// those for which `keep[f]` is true.
  std::vector<std::int32_t> ranking(const std::vector<bool>* keep = nullptr) const;
};

/// Accumulates contrast statistics over batches of sparse codes, in float64. Keeps every
/// non-zero activation of labelled rows (for the exact AUROC): memory grows with the number of
/// active entries added, 8 bytes each.
class ContrastAccumulator {
 public:
  explicit ContrastAccumulator(std::int64_t latents);
  /// Adds a batch: `labels[b]` is 1 (positive), 0 (negative) or anything else (ignored).
  /// @throws Error when labels and codes disagree in rows or a latent is out of range.
  void add(const HostSparseCodes& codes, std::span<const std::int8_t> labels);
  /// The statistics so far, Cohen's d standardised as `kind` says.
  /// @throws Error unless each group has at least two rows.
  LatentContrast result(CohensD kind = CohensD::pooled) const;

 private:
  std::int64_t latents_;
  std::int64_t count_[2] = {0, 0};
  std::vector<double> sum_[2], sum_squares_[2], fired_[2];
  std::vector<std::vector<float>> nonzero_[2];  // [group][F]: the non-zero activations
};

}  // namespace crosscoder
