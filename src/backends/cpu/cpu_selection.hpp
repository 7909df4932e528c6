#pragma once
// CPU selection of active latents (TopK, BatchTopK, ReLU, JumpReLU) into CSR codes.

#include <cstdint>

#include "crosscoder/backend.hpp"
#include "crosscoder/backend_ops.hpp"
#include "crosscoder/sparse_codes.hpp"

namespace crosscoder::detail {

SparseCodes cpu_select(const std::shared_ptr<Backend>& backend, const float* pre, std::int64_t rows,
                       std::int64_t latents, const SelectionRequest& request,
                       float* min_selected_score);

}  // namespace crosscoder::detail
