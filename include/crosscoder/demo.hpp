#pragma once
/// @file demo.hpp
/// The end-to-end demonstration on data with a known answer: generate a synthetic model pair,
/// train a crosscoder on it, and check what it found against the planted features.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "crosscoder/backend.hpp"
#include "crosscoder/config.hpp"
#include "crosscoder/synthetic.hpp"
#include "crosscoder/trainer.hpp"

namespace crosscoder {

/// What `crosscoder demo` generates, trains and evaluates (default_demo_options() gives its
/// defaults).
struct DemoOptions {
  SyntheticConfig data;                  ///< the synthetic pair (defaults: 2 sources of width 64)
  CrosscoderConfig model;                ///< sources and width are taken from `data`
  TrainConfig train;                     ///< optimisation settings
  std::int64_t evaluation_rows = 65536;  ///< held-out rows for FVE, L0 and the contrast ranking
  std::filesystem::path checkpoint;      ///< where to save the trained model; empty = nowhere
  bool show_progress = true;             ///< a progress bar (terminal) or log lines while training
};

/// The defaults `crosscoder demo` uses: a BatchTopK crosscoder, F = 384, k = 2, trained for
/// 3000 steps of 1024 rows on the default SyntheticConfig.
DemoOptions default_demo_options();

/// What the demo measured: held-out fit, recovery of the planted features, and where the planted
/// tool feature ranks.
struct DemoResult {
  std::vector<double> fve;     ///< [M] on held-out rows, raw units
  double l0 = 0.0;             ///< mean active latents per held-out row (inference mode)
  double dead_fraction = 0.0;  ///< latents that never fired on the held-out rows
  RecoveryReport recovery;     ///< planted features against the decoder
  /// The planted tool feature's best-matching latent, its Cohen's d between label-1 and
  /// label-0 rows, and its rank (1 = first) by Cohen's d among latents classified exclusive to
  /// the last source (0 when that latent is not classified exclusive to it).
  std::int64_t tool_latent = -1;
  double tool_cohens_d = 0.0;
  double tool_auroc = 0.0;  ///< AUROC of the tool latent's activation for label 1 vs 0
  std::int64_t tool_rank = 0;
  std::int64_t tool_overall_rank = 0;  ///< its rank by Cohen's d among all latents (1 = first)
  std::int64_t exclusive_latents = 0;  ///< latents classified exclusive to the last source
  double training_seconds = 0.0;
  double tokens_per_second = 0.0;
};

/// Runs the demonstration on `backend`. @throws Error on invalid options.
DemoResult run_demo(const DemoOptions& options, const std::shared_ptr<Backend>& backend);

/// A readable multi-line summary of a demo result.
std::string format_demo_result(const DemoResult& result, const DemoOptions& options);

}  // namespace crosscoder
