#pragma once
// The CUDA backend: device memory on one GPU, one stream, one cuBLAS handle.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "crosscoder/backend.hpp"

namespace crosscoder::detail {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  BackendKind kind() const noexcept override { return BackendKind::cuda; }
  std::string describe() const override { return description_; }

  void* allocate(std::size_t bytes) override;
  void deallocate(void* pointer) noexcept override;
  void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) override;
  void copy_on_device(void* device_dst, const void* device_src, std::size_t bytes) override;
  void fill_zero(void* device_dst, std::size_t bytes) override;
  void synchronize() override;

  cudaStream_t stream() const noexcept { return stream_; }
  cublasHandle_t blas() const noexcept { return blas_; }

 private:
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::string description_;
};

}  // namespace crosscoder::detail
