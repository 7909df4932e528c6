#include "backends/backend_contract.hpp"

#include <fmt/format.h>

#include <cmath>

#include "crosscoder/error.hpp"

namespace crosscoder::detail {

void check_selection_request(const SelectionRequest& request) {
  switch (request.selection) {
    case Selection::per_row_top_k:
      if (request.k <= 0)
        throw Error(fmt::format("TopK selection: k must be positive, got {}", request.k));
      return;
    case Selection::per_batch_top_k:
      if (request.k <= 0)
        throw Error(fmt::format("BatchTopK selection: k must be positive, got {}", request.k));
      if (request.allowed) throw Error("BatchTopK selection does not take a latent mask");
      return;
    case Selection::jump_threshold:
    case Selection::near_threshold:
      if (!request.threshold) throw Error("threshold selection: the thresholds are missing");
      return;
    case Selection::positive:
    case Selection::batch_threshold:  // without weights the score is max(pre, 0)
      return;
  }
  throw Error("select: unknown selection");
}

std::int64_t check_row_constraint(const RowConstraint& constraint, std::int64_t n,
                                  const char* operation) {
  const std::int64_t width = constraint.row_width;
  if (width <= 0) {
    if (constraint.remove_parallel || constraint.unit_norm || constraint.trainable)
      throw Error(
          fmt::format("{}: a row constraint needs a positive row width, got {}", operation, width));
    return 0;
  }
  if (n % width != 0)
    throw Error(fmt::format("{}: row width {} does not divide {} parameters", operation, width, n));
  if (constraint.blocks < 1 || width % constraint.blocks != 0)
    throw Error(fmt::format("{}: {} blocks do not divide the row width {}", operation,
                            constraint.blocks, width));
  return n / width;
}

void check_row_statistics(const SparseBackwardRequest& request) {
  if (!request.row_statistics) return;
  if (request.statistics_blocks < 1 || request.width % request.statistics_blocks != 0)
    throw Error(fmt::format("sparse_backward: {} statistics blocks do not divide the row width {}",
                            request.statistics_blocks, request.width));
}

AdamCorrections adam_corrections(const AdamStep& step) {
  const auto t = static_cast<double>(step.step);
  AdamCorrections corrections;
  corrections.step_size =
      step.learning_rate / static_cast<float>(1.0 - std::pow(static_cast<double>(step.beta1), t));
  corrections.root_correction2 =
      std::sqrt(static_cast<float>(1.0 - std::pow(static_cast<double>(step.beta2), t)));
  return corrections;
}

}  // namespace crosscoder::detail
