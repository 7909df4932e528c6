#pragma once
// The CPU backend: host memory, Eigen for dense algebra, OpenMP threads.

#include <memory>
#include <string>

#include "crosscoder/backend.hpp"
#include "crosscoder/backend_ops.hpp"

namespace crosscoder::detail {

class CpuBackend final : public Backend,
                         public BackendOps,
                         public std::enable_shared_from_this<CpuBackend> {
 public:
  BackendOps& ops() noexcept override { return *this; }
  CpuBackend();

  BackendKind kind() const noexcept override { return BackendKind::cpu; }
  std::string describe() const override;

  void* allocate(std::size_t bytes) override;
  void deallocate(void* pointer) noexcept override;
  void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) override;
  void copy_on_device(void* device_dst, const void* device_src, std::size_t bytes) override;
  void fill_zero(void* device_dst, std::size_t bytes) override;
  void synchronize() override {}

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
  std::size_t next_colour_ = 0;  // which offset the next large block starts at (allocate)
};

std::shared_ptr<Backend> make_cpu_backend();

}  // namespace crosscoder::detail
