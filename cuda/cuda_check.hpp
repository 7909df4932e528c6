#pragma once
// Turns CUDA runtime and cuBLAS status codes into crosscoder::Error with the call site.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "crosscoder/error.hpp"

namespace crosscoder::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* call, const char* file,
                                          int line) {
  throw Error(std::string("CUDA error ") + cudaGetErrorName(status) + " (" +
              cudaGetErrorString(status) + ") in " + call + " at " + file + ":" +
              std::to_string(line));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* call,
                                            const char* file, int line) {
  throw Error(std::string("cuBLAS error ") + cublasGetStatusName(status) + " (" +
              cublasGetStatusString(status) + ") in " + call + " at " + file + ":" +
              std::to_string(line));
}

}  // namespace crosscoder::detail

#define CROSSCODER_CUDA_CHECK(call)                                                          \
  do {                                                                                       \
    const cudaError_t crosscoder_status_ = (call);                                           \
    if (crosscoder_status_ != cudaSuccess)                                                   \
      ::crosscoder::detail::throw_cuda_error(crosscoder_status_, #call, __FILE__, __LINE__); \
  } while (0)

#define CROSSCODER_CUBLAS_CHECK(call)                                                          \
  do {                                                                                         \
    const cublasStatus_t crosscoder_status_ = (call);                                          \
    if (crosscoder_status_ != CUBLAS_STATUS_SUCCESS)                                           \
      ::crosscoder::detail::throw_cublas_error(crosscoder_status_, #call, __FILE__, __LINE__); \
  } while (0)

/// Checks the last kernel launch (bad configuration, missing image for this GPU).
#define CROSSCODER_CUDA_CHECK_LAUNCH() CROSSCODER_CUDA_CHECK(cudaGetLastError())
