#pragma once
/// @file diff.hpp
/// The diff stage as library calls: a crosscoder's weight metrics and, over a dataset, one
/// streaming inference pass that feeds the data metrics, the contrast between labelled rows and
/// Latent Scaling, giving the same DiffReport (and JSON) as `crosscoder diff`.
///
///   auto dataset = crosscoder::ActivationDataset::open({"base.npy", "finetuned.npy"});
///   dataset.attach_labels("labels.npy");                     // optional
///   crosscoder::DiffReport report = crosscoder::diff(model, dataset, {});
///   crosscoder::write_diff_report_json("diff.json", report);

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/dataset.hpp"
#include "crosscoder/diff_report.hpp"
#include "crosscoder/latent_examples.hpp"
#include "crosscoder/model.hpp"
#include "crosscoder/progress.hpp"

namespace crosscoder {

/// Which latents Latent Scaling measures.
enum class ScalingLatents {
  exclusive_to_last,  ///< those exclusive to the last source (the fine-tuned model by convention),
                      ///< at most DiffOptions::max_scaling_latents, largest relative norm first
  none,               ///< no Latent Scaling
  listed,             ///< DiffOptions::scaling_latents
};

/// What diff() computes.
struct DiffOptions {
  /// Relative decoder norm from which a latent counts as exclusive to a source.
  double exclusive_threshold = 0.9;
  /// Which thresholds make the classes: ours (relative norm ≥ exclusive_threshold) or
  /// Minder et al.'s on the normalised difference (two sources; latent_metrics.hpp).
  ClassRule class_rule = ClassRule::relative_norm;
  /// Use only the dataset's first `rows` rows; 0 = all.
  std::int64_t rows = 0;
  /// Labels for the contrast (1 positive, 0 negative, anything else ignored), one per row used;
  /// unset = the dataset's own labels, if it has any.
  std::optional<std::vector<std::int8_t>> labels;
  /// The contrast's Cohen's d standardiser (contrast.hpp): the n-weighted pooled SD, or the
  /// study's √((s₁² + s₀²)/2).
  CohensD cohens_d = CohensD::pooled;
  ScalingLatents scaling = ScalingLatents::exclusive_to_last;
  std::vector<std::int32_t> scaling_latents;  ///< for ScalingLatents::listed
  std::size_t max_scaling_latents = 1000;     ///< for ScalingLatents::exclusive_to_last
  /// Collect examples per latent (latent_examples.hpp) in the same pass; unset: none. diff()
  /// over a dataset with token ids attaches their token windows.
  std::optional<ExampleOptions> examples;
  PassControl pass;
};

/// The weight-only report: decoder norms, relative norms, cosines and classes.
DiffReport diff(const Crosscoder& model, const DiffOptions& options = {});

/// The full report over `dataset` (raw activations, sources and width as the model's): weight
/// metrics, data metrics, Latent Scaling, and the contrast when labels exist. When the labels
/// hold too few positives or negatives for a contrast, it logs a warning and leaves
/// report.contrast empty.
/// @throws Error naming the shapes when the dataset does not fit the model, a latent listed for
///         Latent Scaling is out of range, or the labels do not cover the rows;
///         Cancelled when options.pass.should_stop asks.
DiffReport diff(const Crosscoder& model, const ActivationDataset& dataset,
                const DiffOptions& options = {});

/// @throws Error naming both shapes unless `dataset` has the model's sources and width: the check
///         diff() and measure_data() make first, for callers that want it before other work.
void check_fits(const Crosscoder& model, const ActivationDataset& dataset);

/// The latents ScalingLatents::exclusive_to_last picks from weight metrics, in index order.
std::vector<std::int32_t> latents_exclusive_to_last(const WeightMetrics& weights,
                                                    std::size_t maximum);

/// Data metrics (FVE, L0, dead latents, per-latent frequency) of rows [first, first + count) of
/// `dataset`, e.g. the rows held out from training.
/// @throws Error when the range or the shapes do not fit; Cancelled as diff().
DataMetrics measure_data(const Crosscoder& model, const ActivationDataset& dataset,
                         std::int64_t first, std::int64_t count, const PassControl& pass = {});

/// The per-batch core of diff(), for rows that are not in an ActivationDataset (a synthetic
/// stream, rows from an engine): one inference pass per batch feeds every accumulator.
class DiffAccumulator {
 public:
  /// `with_labels`: batches come with labels and the report gets a contrast.
  /// @throws Error as diff() for the Latent Scaling latents.
  DiffAccumulator(const Crosscoder& model, const DiffOptions& options, bool with_labels);
  ~DiffAccumulator();
  DiffAccumulator(const DiffAccumulator&) = delete;
  DiffAccumulator& operator=(const DiffAccumulator&) = delete;

  /// Adds raw rows x[rows, M, d] and, when constructed with labels, one label per row. Rows
  /// are numbered in the order they are added (examples refer to them by that number).
  /// @throws Error on a shape mismatch, NaN/Inf input, or missing labels.
  void add(std::span<const float> x, std::int64_t rows, std::span<const std::int8_t> labels = {});
  /// The report so far. @throws Error when no row was added.
  DiffReport result() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace crosscoder
