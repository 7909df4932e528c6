#pragma once
// The CUDA backend: device memory on one GPU, one stream, the encoder GEMM by cuBLASLt and
// hand-written kernels for everything else. The same source also compiles against the host
// emulator (CROSSCODER_CUDA_EMULATION), in its own namespace, for tests without a GPU.

#include <memory>
#include <string>

#include "crosscoder/backend.hpp"
#include "crosscoder/backend_ops.hpp"
#include "crosscoder/device_array.hpp"
#include "device_primitives.hpp"
#include "portable.hpp"

namespace crosscoder::CROSSCODER_CUDA_NS {

class CudaBackend final : public Backend,
                          public BackendOps,
                          public std::enable_shared_from_this<CudaBackend> {
 public:
  BackendOps& ops() noexcept override { return *this; }
  /// Uses CUDA device `device` (ignored by the emulator).
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  BackendKind kind() const noexcept override { return BackendKind::cuda; }
  std::string describe() const override { return description_; }
  void set_matmul_precision(MatmulPrecision precision) override { precision_ = precision; }
  MatmulPrecision matmul_precision() const noexcept override { return precision_; }

  void* allocate(std::size_t bytes) override;
  void deallocate(void* pointer) noexcept override;
  void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) override;
  void copy_on_device(void* device_dst, const void* device_src, std::size_t bytes) override;
  void fill_zero(void* device_dst, std::size_t bytes) override;
  void synchronize() override;

  void normalise(const float* x, std::int64_t rows, int sources, int width, const float* scale,
                 const float* mean, float* xn) override;
  void denormalise(const float* xn, std::int64_t rows, int sources, int width, const float* scale,
                   const float* mean, float* x) override;
  void encode(const float* xn, std::int64_t rows, std::int64_t input_width, const float* encoder,
              const float* bias, std::int64_t latents, bool rectify, float* pre) override;
  SparseCodes select(const float* pre, std::int64_t rows, std::int64_t latents,
                     const SelectionRequest& request, float* min_selected_score) override;
  SparseCodes select_top_entries(const SparseCodes& codes, std::int64_t count, const float* weight,
                                 float* min_selected_score) override;
  void decode(const SparseCodes& codes, const float* decoder, const float* bias,
              std::int64_t output_width, float* out) override;
  void squared_error(const float* recon, const float* target, std::int64_t rows, int sources,
                     int width, float gradient_scale, float* grad, double* sse) override;
  void reconstruct(const SparseCodes& codes, const ReconstructionRequest& request) override;
  void sparse_backward(const SparseCodes& codes, const SparseBackwardRequest& request) override;
  void decoder_backward(const SparseCodes& codes, const float* grad_out, const float* decoder,
                        std::int64_t output_width, float* d_value, float* d_decoder) override;
  void latent_totals(const SparseCodes& codes, std::int64_t latents, float* sums,
                     std::int64_t* counts) override;
  void decoder_norms(const float* decoder, std::int64_t latents, int sources, int width,
                     float* norms) override;
  void add_scaled_blocks(const float* source, const float* factor, std::int64_t latents,
                         int sources, int width, float* target) override;
  void column_sums(const float* x, std::int64_t rows, std::int64_t width, double* sums) override;
  void clamp_min(float* x, std::int64_t n, float lower) override;
  double sum_of_squares(const float* x, std::int64_t n) override;
  double constrained_sum_of_squares(const float* gradient, const float* parameter, std::int64_t n,
                                    const RowConstraint& constraint) override;
  void adam_update(float* parameter, const float* gradient, float* m, float* v, std::int64_t n,
                   const AdamStep& step) override;

 private:
  struct LatentGroups;
  LatentGroups group_by_latent(const SparseCodes& codes);
  SparseCodes select_elementwise(const float* pre, std::int64_t rows, std::int64_t latents,
                                 const SelectionRequest& request);
  SparseCodes select_row_top_k(const float* pre, std::int64_t rows, std::int64_t latents,
                               const SelectionRequest& request);
  SparseCodes select_batch_top_k(const float* pre, std::int64_t rows, std::int64_t latents,
                                 const SelectionRequest& request, float* min_selected_score);
  /// Codes over `rows` rows with these per-row entry counts (device memory), the latents and
  /// values allocated but not written; throws Error naming `what` unless `expected` entries result.
  SparseCodes codes_with_counts(const std::int64_t* counts, std::int64_t rows,
                                std::int64_t expected, const char* what);
  /// Sorts each row's (rank key, value) pairs and writes the codes' latents and values.
  void finish_ranked_rows(SparseCodes& codes, const unsigned long long* keys, const float* values);
  template <typename T>
  DeviceArray<T> scratch(std::int64_t count, const char* what);
  template <typename T>
  T read_one(const T* device);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  std::string description_;
  MatmulPrecision precision_ = MatmulPrecision::float32;
  std::unique_ptr<Workspace> workspace_;
  std::unique_ptr<EncoderGemm> gemm_;
};

}  // namespace crosscoder::CROSSCODER_CUDA_NS
