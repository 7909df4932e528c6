#pragma once
/// @file data_metrics.hpp
/// Per-latent and per-source metrics measured on data (held-out rows): activation frequency,
/// mean and maximum activation, dead latents, MSE and FVE per source, L0.

#include <cstdint>
#include <span>
#include <vector>

#include "crosscoder/model.hpp"

namespace crosscoder {

struct DataMetrics {
  std::int64_t rows = 0;
  std::vector<double> frequency;        ///< [F] fraction of rows in which the latent is active
  std::vector<double> mean_activation;  ///< [F] mean activation over the rows where it is active
  std::vector<double> max_activation;   ///< [F] largest activation (0 if never active)
  std::int64_t dead_latents = 0;        ///< latents never active in these rows
  std::vector<double> mse;  ///< [M] mean over rows of ‖x̂_m − x_m‖², raw activation units
  std::vector<double> fve;  ///< [M] 1 − Σ‖x̂_m − x_m‖² / Σ‖x_m − x̄_m‖² (x̄: mean over these rows)
  double l0 = 0.0;  ///< mean number of active latents per row
};

/// Runs the model in inference mode over batches of raw rows and accumulates DataMetrics in
/// float64. Activations are the model's (BatchTopK: with the learnt threshold).
class DataMetricsAccumulator {
 public:
  explicit DataMetricsAccumulator(const Crosscoder& model);
  /// Adds raw rows x[rows, M, d]. @throws Error on a shape mismatch or NaN/Inf input.
  void add(std::span<const float> x, std::int64_t rows);
  /// Adds raw rows whose inference pass (model.infer(x, rows)) is already done.
  void add(std::span<const float> x, const Crosscoder::Inference& inference);
  /// The metrics so far. @throws Error when no row was added.
  DataMetrics result() const;

 private:
  const Crosscoder& model_;
  std::int64_t rows_ = 0, active_entries_ = 0;
  std::vector<double> fired_, activation_sum_, activation_max_;
  std::vector<double> squared_error_;               // [M]
  std::vector<double> column_sum_, column_square_;  // [M·d]
};

}  // namespace crosscoder
