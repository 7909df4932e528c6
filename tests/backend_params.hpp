#pragma once
// Parameterises a GoogleTest suite over every backend usable on this machine, so one suite
// checks the CPU and CUDA backends alike. CUDA cases simply do not exist without a GPU; the
// CudaAvailability test says why once.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "crosscoder/backend.hpp"

namespace crosscoder::testing {

inline std::vector<BackendKind> usable_backend_kinds() {
  std::vector<BackendKind> kinds;
  for (const BackendInfo& info : available_backends()) {
    if (info.usable) kinds.push_back(info.kind);
  }
  return kinds;
}

inline std::string backend_param_name(const ::testing::TestParamInfo<BackendKind>& info) {
  return std::string(to_string(info.param));
}

}  // namespace crosscoder::testing

/// Instantiates a TEST_P suite over every usable backend.
#define CROSSCODER_INSTANTIATE_FOR_BACKENDS(suite)                                             \
  INSTANTIATE_TEST_SUITE_P(Backends, suite,                                                    \
                           ::testing::ValuesIn(::crosscoder::testing::usable_backend_kinds()), \
                           ::crosscoder::testing::backend_param_name)
