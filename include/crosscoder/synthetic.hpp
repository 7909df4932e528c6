#pragma once
/// @file synthetic.hpp
/// A synthetic "model pair" with a known answer: M sources of width d whose activations are
/// sparse sums of planted feature directions (some shared by all sources, some exclusive to
/// one), and the evaluation of a trained crosscoder's decoder against that ground truth.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/batch_source.hpp"

namespace crosscoder {

/// How the planted features' firing probabilities are spread between `max_frequency` and
/// `min_frequency`. Either way features get their rank or value in a seeded random order, so
/// frequency is unrelated to a feature's group.
enum class FrequencyProfile {
  zipf,         ///< p = max·(rank+1)^−α, α chosen so that the rarest feature gets min
  log_uniform,  ///< log p uniform in [log min, log max]
};

/// Everything that defines a synthetic pair. The same config (seed included) always produces
/// the same directions, frequencies and samples.
struct SyntheticConfig {
  int sources = 2;                                 ///< M
  int width = 64;                                  ///< d, the width of each source
  int shared_features = 96;                        ///< features present in every source
  std::vector<int> exclusive_features = {24, 24};  ///< [M] features present only in source m
  /// Shared features take a common random unit direction u plus, per source, a perturbation
  /// orthogonal to u of exactly this norm, then are renormalised. The two sources'
  /// directions then have cosine (1 + j²·g₀·g₁)/(1 + j²) ≈ 1/(1 + j²) (0.9975 for j = 0.05).
  double shared_direction_jitter = 0.05;
  /// [M] source m's feature sum is multiplied by this (exercises normalisation); empty = all 1.
  std::vector<double> source_scale = {1.0, 3.0};
  /// Each source gets its own random constant offset of this norm (added after scaling).
  double mean_offset_norm = 0.5;
  FrequencyProfile frequency_profile = FrequencyProfile::zipf;
  double max_frequency = 0.08;   ///< firing probability of the commonest feature, in (0, 1]
  double min_frequency = 0.003;  ///< firing probability of the rarest feature, in (0, max]
  /// Each feature's mean magnitude is drawn uniformly from [min, max]; one firing has magnitude
  /// mean·exp(σz − σ²/2), z standard normal (lognormal, positive, with that mean).
  double magnitude_mean_min = 1.0;
  double magnitude_mean_max = 2.0;
  double magnitude_log_std = 0.5;  ///< σ above
  double noise_std = 0.02;         ///< additive Gaussian noise per coordinate (not scaled)
  /// Plant the label-dependent "tool" feature: the first feature exclusive to source M − 1
  /// (the fine-tuned model of a base/fine-tuned pair), see SyntheticPair::tool_feature().
  /// Needs exclusive_features[M − 1] ≥ 1.
  bool plant_tool_feature = true;
  double label_fraction = 0.2;        ///< P(label = 1) for each row; other rows get label 0
  double tool_rate_positive = 0.5;    ///< P(tool fires | label 1)
  double tool_rate_negative = 0.002;  ///< P(tool fires | label 0)
  std::uint64_t seed = 0;
};

/// The generator. Features are indexed shared first, then source 0's exclusive block, then
/// source 1's, and so on (the crosscoder's own latent layout). Row b, source m:
///   x[b, m, :] = scale_m · Σ_{f active} a_f · dir_{f,m} + mean_m + noise,
/// every feature firing independently (the tool feature through the row's label only).
class SyntheticPair : public BatchSource {
 public:
  /// Draws directions, frequencies, magnitudes and offsets from `config.seed`.
  /// @throws Error naming the config field when `config` is invalid.
  explicit SyntheticPair(SyntheticConfig config);

  const SyntheticConfig& config() const noexcept { return config_; }
  int sources() const override { return config_.sources; }
  int width() const override { return config_.width; }
  /// N, the number of planted features.
  std::int64_t features() const noexcept { return features_; }
  /// -1 for a shared feature, else the source it is exclusive to (as CrosscoderConfig does).
  int feature_group(std::int64_t feature) const;
  /// Marginal firing probability (for the tool feature: averaged over labels).
  double frequency(std::int64_t feature) const;
  /// Mean magnitude of one firing.
  double magnitude_mean(std::int64_t feature) const;
  /// Unit direction [d] of `feature` in `source`; all zeros when the feature is exclusive to
  /// another source.
  std::span<const float> direction(std::int64_t feature, int source) const;
  /// The direction [M·d] the feature takes in raw concatenated activation space: each source's
  /// block is scale_m · dir_{f,m} (not renormalised).
  std::vector<double> raw_direction(std::int64_t feature) const;
  /// The tool feature's index, or -1 when none is planted.
  std::int64_t tool_feature() const noexcept { return tool_feature_; }
  double label_fraction() const noexcept { return config_.label_fraction; }
  /// scale_m (1 when config.source_scale is empty).
  double source_scale(int source) const;
  /// mean_m [d], the constant offset of source m.
  std::span<const float> source_mean(int source) const;
  /// E‖x[·, m, :]‖² under the generator, exact (offset, noise and feature co-occurrence included):
  /// what a scalar normaliser estimates.
  double expected_square_norm(int source) const;

  /// Draws `rows` rows into out[rows, M, d]. The result is a pure function of the config and
  /// `stream`, so distinct streams give independent, reproducible batches.
  /// @param labels when not null, receives each row's label (0 or 1) [rows]
  /// @param codes when not null, receives the planted code [rows, N]: a_f when feature f fired
  ///        in that row, else 0
  /// @throws Error when rows < 0 or `out` is null while rows > 0.
  void sample(std::int64_t rows, std::uint64_t stream, float* out, std::int8_t* labels = nullptr,
              float* codes = nullptr) const;

  /// BatchSource: batch `step` is sample(rows, step, out, labels).
  void fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) override;
  /// BatchSource: every config field, so different data never share an identity.
  std::string identity() const override;

 private:
  SyntheticConfig config_;
  std::int64_t features_ = 0;
  std::int64_t tool_feature_ = -1;
  std::vector<int> group_;              // [N]
  std::vector<double> frequency_;       // [N]
  std::vector<double> magnitude_mean_;  // [N]
  std::vector<float> directions_;       // [N, M, d]
  std::vector<double> scale_;           // [M]
  std::vector<float> mean_;             // [M, d]
};

/// Settings of evaluate_recovery.
struct RecoveryOptions {
  double cosine_threshold = 0.9;  ///< a feature is recovered when its best cosine reaches this
  double min_frequency = 1e-3;    ///< rarer features are not expected to be learnt (ineligible)
  /// A latent counts as exclusive to source s when r_s ≥ this (must be in (0.5, 1]).
  double exclusive_threshold = 0.9;
  /// [M] factors applied to each source's decoder norm before relative norms are formed; empty
  /// means 1 (relative norms of the decoder as passed, i.e. in raw space). Pass the
  /// crosscoder's normaliser scales s_m to classify by normalised-space norms (raw decoder =
  /// normalised decoder / s_m), which is what Crosscoder::relative_decoder_norms() reports.
  std::vector<double> norm_scale;
};

/// Counts for one planted group (shared, or exclusive to one source).
struct GroupRecovery {
  std::int64_t planted = 0;     ///< features planted in the group
  std::int64_t eligible = 0;    ///< of those, with frequency ≥ min_frequency
  std::int64_t recovered = 0;   ///< eligible features whose best cosine ≥ cosine_threshold
  std::int64_t classified = 0;  ///< recovered features whose matched latent's class is the group
};

/// Group of a latent that is neither shared nor exclusive by the classification rule.
inline constexpr int kMixedGroup = -2;  // the same code as kMixedLatent (latent_metrics.hpp)

/// Outcome of evaluate_recovery. Rates are 0 when their denominator is 0.
struct RecoveryReport {
  RecoveryOptions options;
  GroupRecovery shared;
  std::vector<GroupRecovery> exclusive;  ///< [M]
  GroupRecovery total;                   ///< all groups together
  double recovery_rate = 0.0;            ///< total.recovered / total.eligible
  double classification_rate = 0.0;      ///< total.classified / total.recovered
  double mean_best_cosine = 0.0;         ///< over eligible features
  /// Distinct latents that recovered features matched (matching is not one-to-one: a latent
  /// may be the best match of several features).
  std::int64_t matched_latents = 0;

  std::int64_t tool_feature = -1;  ///< -1 when none is planted
  std::int64_t tool_best_latent = -1;
  double tool_best_cosine = 0.0;
  bool tool_recovered = false;
  bool tool_classified = false;

  std::vector<double> best_cosine;        ///< [N] best cosine over latents (0 with no latents)
  std::vector<std::int64_t> best_latent;  ///< [N] its latent (lowest index on ties), or -1
  /// [N] class of the best latent: -1 shared, s exclusive to s, kMixedGroup otherwise.
  std::vector<int> matched_group;
  std::vector<bool> eligible;   ///< [N]
  std::vector<bool> recovered;  ///< [N]
};

/// Compares every planted feature's raw-space direction (SyntheticPair::raw_direction) with
/// every latent's concatenated decoder vector by cosine, and classifies the best-matching
/// latent of each recovered feature by its relative decoder norms r_m = w_m‖d_m‖ / Σ w‖d‖
/// (w = options.norm_scale, default 1):
///   - exclusive to s when r_s ≥ exclusive_threshold τ;
///   - shared when every r_m > (1 − τ)/(M − 1) (for M = 2 and τ = 0.9: 0.1 < r_1 < 0.9, the
///     complement of "exclusive");
///   - kMixedGroup otherwise (e.g. a latent split between two of three sources, or all zero).
/// With M = 1 classification is meaningless and every recovered feature counts as classified.
/// Classification in raw space mixes a source's activation scale into its norm (a shared
/// feature with scales {1, 10} has raw r_1 = 0.91); prefer norm_scale = the normaliser scales.
/// @param decoder [latents, M, d] decoder vectors in raw activation units (e.g.
///        Crosscoder::raw_decoder_vectors()), the direction each latent adds per unit.
/// @throws Error when options are out of range, decoder is null while latents > 0, or it holds
///         a non-finite value.
RecoveryReport evaluate_recovery(const SyntheticPair& pair, const float* decoder,
                                 std::size_t latents, const RecoveryOptions& options);

/// evaluate_recovery with default options except the two thresholds (raw-space classification).
RecoveryReport evaluate_recovery(const SyntheticPair& pair, const float* decoder,
                                 std::size_t latents, double cosine_threshold = 0.9,
                                 double min_frequency = 1e-3);

/// A short multi-line summary: rates, per-group counts and the tool feature.
std::string format_recovery_report(const RecoveryReport& report);

}  // namespace crosscoder
