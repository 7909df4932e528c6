#pragma once
// What every backend checks and computes the same way before it runs an operation: the
// validity of a selection request or a row constraint, and Adam's bias corrections. One copy,
// so that the CPU and CUDA backends cannot drift apart in what they accept or in their scalars.

#include <cstdint>

#include "crosscoder/backend.hpp"
#include "crosscoder/backend_ops.hpp"

namespace crosscoder::detail {

/// Throws Error when `request` cannot be served (k not positive for the top-k selections, a
/// latent mask on BatchTopK, weights or thresholds missing).
void check_selection_request(const SelectionRequest& request);

/// Throws Error, naming `operation`, when `constraint` does not describe n parameters: the row
/// width must divide n and the blocks the row width, and no option may be set without a row
/// width. Returns the number of rows (0 without a constraint).
std::int64_t check_row_constraint(const RowConstraint& constraint, std::int64_t n,
                                  const char* operation);

/// Throws Error when a sparse backward request asks for row statistics over blocks that do not
/// divide its row width.
void check_row_statistics(const SparseBackwardRequest& request);

/// Adam's bias-corrected step size lr / (1 − β1^t) and √(1 − β2^t), from double-precision
/// powers; the update is then p −= step_size · m / (√v / root_correction2 + ε).
struct AdamCorrections {
  float step_size = 0.0f;
  float root_correction2 = 0.0f;
};
AdamCorrections adam_corrections(const AdamStep& step);

}  // namespace crosscoder::detail
