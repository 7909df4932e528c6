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

  // The crosscoder operations: kernels arrive with the CUDA backend issue; until then each
  // throws an Error saying so, and probe_cuda_backend() reports the backend as not usable.
  void normalise(const float*, std::int64_t, int, int, const float*, const float*, float*) override;
  void denormalise(const float*, std::int64_t, int, int, const float*, const float*,
                   float*) override;
  void encode(const float*, std::int64_t, std::int64_t, const float*, const float*, std::int64_t,
              float*) override;
  SparseCodes select(const float*, std::int64_t, std::int64_t, const SelectionRequest&,
                     float*) override;
  void decode(const SparseCodes&, const float*, const float*, std::int64_t, float*) override;
  void squared_error(const float*, const float*, std::int64_t, int, int, float, float*,
                     double*) override;
  void decoder_backward(const SparseCodes&, const float*, const float*, std::int64_t, float*,
                        float*) override;
  void encoder_backward(const SparseCodes&, const float*, const float*, std::int64_t, float*,
                        float*) override;
  void latent_totals(const SparseCodes&, std::int64_t, float*, std::int64_t*) override;
  void decoder_norms(const float*, std::int64_t, int, int, float*) override;
  void constrain_decoder(float*, float*, std::int64_t, std::int64_t) override;
  void column_sums(const float*, std::int64_t, std::int64_t, double*) override;
  void clamp_min(float*, std::int64_t, float) override;
  double sum_of_squares(const float*, std::int64_t) override;
  void adam_update(float*, const float*, float*, float*, std::int64_t, const AdamStep&) override;

  cudaStream_t stream() const noexcept { return stream_; }
  cublasHandle_t blas() const noexcept { return blas_; }

 private:
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::string description_;
};

}  // namespace crosscoder::detail
