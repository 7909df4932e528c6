#pragma once
// The two entry points into the CUDA backend. Defined in cuda/cuda_backend.cu when the
// library is built with CUDA, and by src/backends/no_cuda.cpp otherwise.

#include <memory>

#include "crosscoder/backend.hpp"

namespace crosscoder::detail {

/// Whether a CUDA backend could be created now, and if not, why (driver's own words).
BackendInfo probe_cuda_backend();

/// Creates the CUDA backend; throws Error with probe_cuda_backend()'s reason if unusable.
std::shared_ptr<Backend> make_cuda_backend();

}  // namespace crosscoder::detail
