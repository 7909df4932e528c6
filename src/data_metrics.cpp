#include "crosscoder/data_metrics.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "crosscoder/error.hpp"

namespace crosscoder {

DataMetricsAccumulator::DataMetricsAccumulator(const Crosscoder& model) : model_(model) {
  const auto F = static_cast<std::size_t>(model.config().latents);
  const auto M = static_cast<std::size_t>(model.config().sources);
  const auto D = static_cast<std::size_t>(model.config().input_width());
  fired_.assign(F, 0.0);
  activation_sum_.assign(F, 0.0);
  activation_max_.assign(F, 0.0);
  squared_error_.assign(M, 0.0);
  column_sum_.assign(D, 0.0);
  column_square_.assign(D, 0.0);
}

void DataMetricsAccumulator::add(std::span<const float> x, std::int64_t rows) {
  add(x, model_.infer(x, rows));  // infer validates shape and values
}

void DataMetricsAccumulator::add(std::span<const float> x, const Crosscoder::Inference& inference) {
  const HostSparseCodes& codes = inference.codes;
  const std::int64_t rows = inference.rows;
  const int M = model_.config().sources, d = model_.config().width;
  const std::int64_t D = model_.config().input_width();
  if (static_cast<std::int64_t>(x.size()) != rows * D ||
      static_cast<std::int64_t>(inference.normalised_input.size()) != rows * D) {
    throw Error(
        fmt::format("data metrics: {} values and an inference of {} rows do not match "
                    "rows × {}",
                    x.size(), rows, D));
  }
  const std::vector<float> scale = model_.normaliser().column_scales(M, d);
  for (std::size_t e = 0; e < codes.latent.size(); ++e) {
    const std::int32_t f = codes.latent[e];
    const double value = codes.value[e];
    if (!(value > 0.0)) continue;
    fired_[f] += 1.0;
    activation_sum_[f] += value;
    activation_max_[f] = std::max(activation_max_[f], value);
    ++active_entries_;
  }
  for (std::int64_t b = 0; b < rows; ++b) {
    for (int m = 0; m < M; ++m) {
      for (int i = 0; i < d; ++i) {
        const std::int64_t j = static_cast<std::int64_t>(m) * d + i;
        const double value = x[b * D + j];
        // x = x̃/s + μ and x̂ = x̂̃/s + μ, so the raw error is (x̂̃ − x̃)/s.
        const double error = (static_cast<double>(inference.normalised_reconstruction[b * D + j]) -
                              inference.normalised_input[b * D + j]) /
                             scale[j];
        squared_error_[m] += error * error;
        column_sum_[j] += value;
        column_square_[j] += value * value;
      }
    }
  }
  rows_ += rows;
}

DataMetrics DataMetricsAccumulator::result() const {
  if (rows_ == 0) throw Error("data metrics: no rows were added");
  const int M = model_.config().sources, d = model_.config().width;
  const auto n = static_cast<double>(rows_);
  DataMetrics out;
  out.rows = rows_;
  out.frequency.resize(fired_.size());
  out.mean_activation.resize(fired_.size());
  out.max_activation = activation_max_;
  for (std::size_t f = 0; f < fired_.size(); ++f) {
    out.frequency[f] = fired_[f] / n;
    out.mean_activation[f] = fired_[f] > 0.0 ? activation_sum_[f] / fired_[f] : 0.0;
    out.dead_latents += fired_[f] > 0.0 ? 0 : 1;
  }
  out.l0 = static_cast<double>(active_entries_) / n;
  out.mse.resize(static_cast<std::size_t>(M));
  out.fve.resize(static_cast<std::size_t>(M));
  for (int m = 0; m < M; ++m) {
    double variance = 0.0;  // Σ_b ‖x_bm − x̄_m‖² = Σ x² − n·x̄², per column
    for (int i = 0; i < d; ++i) {
      const std::size_t j = static_cast<std::size_t>(m) * d + i;
      variance += column_square_[j] - column_sum_[j] * column_sum_[j] / n;
    }
    out.mse[m] = squared_error_[m] / n;
    out.fve[m] = variance > 0.0 ? 1.0 - squared_error_[m] / variance : 0.0;
  }
  return out;
}

}  // namespace crosscoder
