#pragma once
// The CUDA backend's sources run on the host emulator (emulator.hpp): a test harness for the
// kernels on machines without a GPU. Not part of the library.

#include <memory>

#include "crosscoder/backend.hpp"

namespace crosscoder::cuda_emulated {

/// A CudaBackend whose kernels, scans and sorts run on the host emulator.
std::shared_ptr<Backend> make_emulated_cuda_backend();

}  // namespace crosscoder::cuda_emulated
