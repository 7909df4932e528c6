#pragma once
/// @file latent_metrics.hpp
/// Per-latent model-diffing metrics computed from the weights alone: decoder norms per source,
/// relative norms, the normalised norm difference, cross-source decoder and encoder cosines,
/// and a shared / exclusive class per latent.

#include <cstdint>
#include <span>
#include <vector>

#include "crosscoder/model.hpp"

namespace crosscoder {

/// Class codes of classify_by_norms: a source index for "exclusive to that source", or these.
inline constexpr int kSharedLatent = -1;
inline constexpr int kMixedLatent = -2;

/// Classifies one latent by its per-source decoder norms n_m with r_m = n_m / Σ n:
/// exclusive to s when r_s ≥ τ; shared when every r_m > (1 − τ)/(M − 1) (for two sources and
/// τ = 0.9: 0.1 < r_1 < 0.9); kMixedLatent otherwise, or when every norm is zero. With one
/// source every non-zero latent is shared. τ must lie in (0.5, 1].
int classify_by_norms(std::span<const double> norms, double exclusive_threshold);

/// Weight-only metrics of every latent. Norms are in the model's normalised units, where each
/// source has mean squared norm d, so sources of different raw scale compare fairly.
struct WeightMetrics {
  int sources = 0;
  std::int64_t latents = 0;
  double exclusive_threshold = 0.9;
  std::vector<float> decoder_norm;  ///< [F, M] ‖d_{f,m}‖
  std::vector<float> relative_norm;  ///< [F, M] ‖d_{f,m}‖ / Σ_m' ‖d_{f,m'}‖ (0 for a zero latent)
  /// [F] two sources only: ((‖d_0‖ − ‖d_1‖)/max(‖d_0‖, ‖d_1‖) + 1)/2, the diffing-toolkit's
  /// normalised difference (1: only in source 0, 0: only in source 1; 0.5 when both are zero).
  std::vector<float> normalised_difference;
  /// [F, P] cosine between the decoder vectors of each source pair (m, m'), m < m', pairs in
  /// lexicographic order (P = M(M − 1)/2; one column for two sources); 0 when either is zero.
  std::vector<float> decoder_cosine;
  std::vector<float> encoder_cosine;  ///< [F, P] the same for the encoder's per-source rows
  std::vector<int> latent_class;      ///< [F] classify_by_norms of the decoder norms
};

/// Computes WeightMetrics for `model`. @throws Error when exclusive_threshold ∉ (0.5, 1].
WeightMetrics weight_metrics(const Crosscoder& model, double exclusive_threshold = 0.9);

}  // namespace crosscoder
