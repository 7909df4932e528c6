#pragma once
/// @file lm_evaluation.hpp
/// What a model loses when its activations are spliced (splice.hpp): next-token cross-entropy
/// under several conditions (clean, spliced, ablated), the KL divergence of each from reference
/// logits (the clean model's, or the other model's for the diffing patches), and CE loss
/// recovered, with bootstrap 95% intervals over sequences. Engine-agnostic: the caller runs the
/// model and hands over logits. docs/evaluation.md.
///
///   crosscoder::LanguageModelScores scores({"clean", "spliced", "zero"});
///   for each sequence q:                    // logits [T, V] of each run, targets [T]
///     scores.add(q, 0, clean_logits, V, targets);
///     scores.add(q, 1, spliced_logits, V, targets, clean_logits);
///     scores.add(q, 2, zero_logits, V, targets, clean_logits);
///   const crosscoder::LanguageModelReport report = scores.result();
///   report.recovered("spliced");            // (CE_zero − CE_spliced) / (CE_zero − CE_clean)

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace crosscoder {

/// A statistic and its bootstrap interval (percentiles 2.5 and 97.5 over resampled sequences).
struct Interval {
  double value = 0.0;
  double low = 0.0;
  double high = 0.0;
};

struct ConditionScores {
  std::string name;
  std::int64_t sequences = 0;  ///< sequences scored under this condition
  std::int64_t tokens = 0;     ///< tokens with a target
  Interval cross_entropy;      ///< mean next-token cross-entropy per token (nats)
  bool has_kl = false;         ///< whether reference logits were given
  Interval kl;                 ///< mean KL(reference ‖ condition) per token (nats)
};

struct LanguageModelReport {
  std::int64_t sequences = 0;
  int resamples = 0;
  std::vector<ConditionScores> conditions;
  /// CE loss recovered, (CE_zero − CE_spliced) / (CE_zero − CE_clean), with the interval of
  /// the same ratio over the same resamples. @throws Error naming an unknown condition.
  Interval recovered(const std::string& spliced, const std::string& clean = "clean",
                     const std::string& zero = "zero") const;
  /// The scores of a condition. @throws Error naming it when unknown.
  const ConditionScores& condition(const std::string& name) const;

  /// Per condition, its mean CE in each resample (for recovered()).
  std::map<std::string, std::vector<double>> resampled_cross_entropy;
};

/// Accumulates per-sequence sums of cross-entropy and KL per condition.
class LanguageModelScores {
 public:
  /// @throws Error for no conditions, an empty or repeated name.
  explicit LanguageModelScores(std::vector<std::string> conditions);

  /// Scores rows t = 0 … T−1 of `logits` [T, vocab] against `targets` [T] (a target < 0 is
  /// skipped, e.g. padding) for sequence `sequence` under condition `condition`, and, when
  /// `reference` [T, vocab] is given, adds KL(softmax(reference_t) ‖ softmax(logits_t)).
  /// Computed in float64 with log-sum-exp.
  /// @throws Error for a condition out of range, sizes that disagree, a target ≥ vocab, or a
  ///         non-finite logit.
  void add(std::int64_t sequence, int condition, std::span<const float> logits, int vocab,
           std::span<const std::int32_t> targets, std::span<const float> reference = {});

  /// Means per token and their bootstrap intervals: `resamples` draws of the sequences with
  /// replacement (seeded), each condition's mean being Σ over the drawn sequences of its sums
  /// over Σ of its tokens. @throws Error when nothing was added or resamples < 1.
  LanguageModelReport result(int resamples = 1000, std::uint64_t seed = 0) const;

 private:
  struct Sums {
    double cross_entropy = 0.0, kl = 0.0;
    std::int64_t tokens = 0;
    bool seen = false, with_kl = false;
  };
  std::vector<std::string> conditions_;
  std::map<std::int64_t, std::vector<Sums>> sequences_;  // sequence → [conditions]
};

}  // namespace crosscoder
