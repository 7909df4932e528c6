#pragma once
// Parameterises a GoogleTest suite over every backend usable on this machine, so one suite
// checks the CPU and CUDA backends alike. CUDA cases simply do not exist without a GPU; the
// CudaAvailability test says why once.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "crosscoder/backend.hpp"

#if defined(CROSSCODER_TEST_EMULATED_CUDA)
#include "emulation/emulated_backend.hpp"
#endif

namespace crosscoder::testing {

// In the emulator's test program (CROSSCODER_TEST_EMULATED_CUDA) the suites run over one
// backend: the CUDA backend's kernels on the host emulator.
inline std::vector<BackendKind> usable_backend_kinds() {
#if defined(CROSSCODER_TEST_EMULATED_CUDA)
  return {BackendKind::cuda};
#endif
  std::vector<BackendKind> kinds;
  for (const BackendInfo& info : available_backends()) {
    if (info.usable) kinds.push_back(info.kind);
  }
  return kinds;
}

/// The backend a parameterised test runs on.
inline std::shared_ptr<Backend> make_test_backend(BackendKind kind) {
#if defined(CROSSCODER_TEST_EMULATED_CUDA)
  if (kind == BackendKind::cuda) return cuda_emulated::make_emulated_cuda_backend();
#endif
  return make_backend(kind);
}

inline std::string backend_name(BackendKind kind) {
#if defined(CROSSCODER_TEST_EMULATED_CUDA)
  if (kind == BackendKind::cuda) return "cuda_emulated";
#endif
  return std::string(to_string(kind));
}

inline std::string backend_param_name(const ::testing::TestParamInfo<BackendKind>& info) {
  return backend_name(info.param);
}

}  // namespace crosscoder::testing

/// Instantiates a TEST_P suite over every usable backend.
#define CROSSCODER_INSTANTIATE_FOR_BACKENDS(suite)                                             \
  INSTANTIATE_TEST_SUITE_P(Backends, suite,                                                    \
                           ::testing::ValuesIn(::crosscoder::testing::usable_backend_kinds()), \
                           ::crosscoder::testing::backend_param_name)
