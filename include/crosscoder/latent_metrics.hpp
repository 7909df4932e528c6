#pragma once
/// @file latent_metrics.hpp
/// Per-latent model-diffing metrics computed from the weights alone: decoder norms per source,
/// relative norms, the normalised norm difference, cross-source decoder and encoder cosines,
/// and a shared / exclusive class per latent.

#include <cstdint>
#include <span>
#include <string_view>
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

/// Which thresholds make the shared / exclusive / mixed classes.
enum class ClassRule {
  /// classify_by_norms with the exclusive threshold τ (our rule, any number of sources).
  relative_norm,
  /// Minder et al. (2025)'s thresholds on the normalised difference (two sources only):
  /// classify_minder.
  minder,
};
/// "relative_norm" or "minder".
std::string_view to_string(ClassRule rule) noexcept;
/// Inverse of to_string. @throws Error listing the names.
ClassRule parse_class_rule(std::string_view text);

/// Classifies one latent of a two-source crosscoder by Minder et al. (2025)'s thresholds on
/// the normalised difference n = ((‖d_0‖ − ‖d_1‖)/max(‖d_0‖, ‖d_1‖) + 1)/2 (the paper's
/// Δnorm is 1 − n, oriented to the fine-tuned source 1): exclusive to source 1 when n < 0.1
/// (Δnorm > 0.9), exclusive to source 0 when n > 0.9, shared when 0.4 < n < 0.6, kMixedLatent
/// otherwise and when both norms are zero. The thresholds and their strict inequalities are
/// the diffing-toolkit's (src/diffing/utils/dictionary/analysis.py: `norm_diffs < 0.1`,
/// `> 1 − 0.1`, `|norm_diffs − 0.5| < 0.1`). @throws Error unless there are two norms.
int classify_minder(std::span<const double> norms);

/// Weight-only metrics of every latent. Norms are in the model's normalised units, where each
/// source has mean squared norm d, so sources of different raw scale compare fairly.
struct WeightMetrics {
  int sources = 0;
  std::int64_t latents = 0;
  double exclusive_threshold = 0.9;
  ClassRule class_rule = ClassRule::relative_norm;  ///< which rule made latent_class
  std::vector<float> decoder_norm;                  ///< [F, M] ‖d_{f,m}‖
  std::vector<float> relative_norm;  ///< [F, M] ‖d_{f,m}‖ / Σ_m' ‖d_{f,m'}‖ (0 for a zero latent)
  /// [F] two sources only: ((‖d_0‖ − ‖d_1‖)/max(‖d_0‖, ‖d_1‖) + 1)/2, the diffing-toolkit's
  /// normalised difference (1: only in source 0, 0: only in source 1; 0.5 when both are zero).
  std::vector<float> normalised_difference;
  /// [F, P] cosine between the decoder vectors of each source pair (m, m'), m < m', pairs in
  /// lexicographic order (P = M(M − 1)/2; one column for two sources); 0 when either is zero.
  std::vector<float> decoder_cosine;
  std::vector<float> encoder_cosine;  ///< [F, P] the same for the encoder's per-source rows
  std::vector<int> latent_class;      ///< [F] class of the decoder norms by class_rule

  /// Only for a crosscoder whose sources are grouped into models (CrosscoderConfig::
  /// source_models, e.g. a crosscoder across layers); empty otherwise.
  int models = 0;
  std::vector<int> source_models;  ///< [M] the model of each source
  /// [F, models] √(Σ over the model's sources of ‖d_{f,s}‖²): the latent's decoder norm in the
  /// model, all its blocks together.
  std::vector<float> model_norm;
  std::vector<float> model_relative_norm;  ///< [F, models] model_norm / Σ model_norm
  /// [F] classify_by_norms over the model norms with the same threshold: exclusive to a model
  /// (a model index), shared, or mixed.
  std::vector<int> model_class;
  std::vector<int> peak_source;  ///< [F] the source (block) with the largest decoder norm
};

/// Computes WeightMetrics for `model`, classes by `rule` (ClassRule::minder ignores the
/// threshold). @throws Error when exclusive_threshold ∉ (0.5, 1], or for ClassRule::minder when
/// the model does not have exactly two sources.
WeightMetrics weight_metrics(const Crosscoder& model, double exclusive_threshold = 0.9,
                             ClassRule rule = ClassRule::relative_norm);

}  // namespace crosscoder
