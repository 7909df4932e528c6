#pragma once
// The dense, memory-bound operations of the CUDA backend: normalisation, the squared error,
// reductions, the decoder-norm constraint and Adam. Reductions add in a fixed order (a tree per
// block, blocks in index order), so their results are the same run to run.

#include <cstdint>

#include "crosscoder/backend.hpp"
#include "device_common.cuh"

namespace crosscoder::CROSSCODER_CUDA_NS {

__global__ void normalise_kernel(const float* x, std::int64_t n, int sources, int width,
                                 const float* scale, const float* mean, float* xn) {
  const std::int64_t input_width = static_cast<std::int64_t>(sources) * width;
  CROSSCODER_FOR_EACH_INDEX(i, n) {
    const std::int64_t column = i % input_width;
    xn[i] = (x[i] - (mean ? mean[column] : 0.0f)) * scale[column];
  }
}

__global__ void denormalise_kernel(const float* xn, std::int64_t n, int sources, int width,
                                   const float* scale, const float* mean, float* x) {
  const std::int64_t input_width = static_cast<std::int64_t>(sources) * width;
  CROSSCODER_FOR_EACH_INDEX(i, n) {
    const std::int64_t column = i % input_width;
    x[i] = xn[i] / scale[column] + (mean ? mean[column] : 0.0f);
  }
}

__global__ void clamp_min_kernel(float* x, std::int64_t n, float lower) {
  CROSSCODER_FOR_EACH_INDEX(i, n) { x[i] = x[i] > lower ? x[i] : lower; }
}

/// partial[row·M + m] = Σ_i (recon − target)² over source m of the row, and the gradient;
/// one block per row.
__global__ void squared_error_rows(const float* recon, const float* target, int sources, int width,
                                   float gradient_scale, float* grad, double* partial) {
  __shared__ double scratch[kThreads];
  const std::int64_t row = blockIdx.x;
  for (int m = 0; m < sources; ++m) {
    const std::int64_t offset = (row * sources + m) * static_cast<std::int64_t>(width);
    double local = 0.0;
    for (int i = threadIdx.x; i < width; i += kThreads) {
      const float difference = recon[offset + i] - target[offset + i];
      local += static_cast<double>(difference) * difference;
      if (grad) grad[offset + i] = gradient_scale * difference;
    }
    const double total = block_sum(local, scratch);
    if (threadIdx.x == 0) partial[row * sources + m] = total;
  }
}

/// out[c] = Σ_r in[r·columns + c] for a [rows, columns] array of doubles, rows split over the
/// threads in a fixed pattern; one block per column.
__global__ void sum_rows_of_columns(const double* in, std::int64_t rows, std::int64_t columns,
                                    double* out) {
  __shared__ double scratch[kThreads];
  const std::int64_t c = blockIdx.x;
  double local = 0.0;
  for (std::int64_t r = threadIdx.x; r < rows; r += kThreads) local += in[r * columns + c];
  const double total = block_sum(local, scratch);
  if (threadIdx.x == 0) out[c] = total;
}

constexpr std::int64_t kColumnSumRows = 64;

/// partial[block, j] = Σ of rows [64·block, 64·block + 64) of column j, in row order (the CPU
/// backend's blocking); grid (row blocks, column tiles).
__global__ void column_sums_by_block(const float* x, std::int64_t rows, std::int64_t width,
                                     double* partial) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  const std::int64_t block = blockIdx.x;
  if (j >= width) return;
  const std::int64_t begin = block * kColumnSumRows;
  const std::int64_t end = begin + kColumnSumRows < rows ? begin + kColumnSumRows : rows;
  double total = 0.0;
  for (std::int64_t b = begin; b < end; ++b) total += x[b * width + j];
  partial[block * width + j] = total;
}

/// sums[j] = Σ_block partial[block, j], blocks in order.
__global__ void add_column_blocks(const double* partial, std::int64_t blocks, std::int64_t width,
                                  double* sums) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= width) return;
  double total = 0.0;
  for (std::int64_t block = 0; block < blocks; ++block) total += partial[block * width + j];
  sums[j] = total;
}

constexpr std::int64_t kSquaresPerBlock = 16 * kThreads;

/// partial[block] = Σ x² over the block's kSquaresPerBlock numbers.
__global__ void sum_of_squares_by_block(const float* x, std::int64_t n, double* partial) {
  __shared__ double scratch[kThreads];
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.x) * kSquaresPerBlock;
  const std::int64_t end = begin + kSquaresPerBlock < n ? begin + kSquaresPerBlock : n;
  double local = 0.0;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += kThreads)
    local += static_cast<double>(x[i]) * x[i];
  const double total = block_sum(local, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

/// norms[f, m] = ‖decoder[f, m·d : (m + 1)·d]‖; one block per latent.
__global__ void decoder_norms_kernel(const float* decoder, int sources, int width, float* norms) {
  __shared__ float scratch[kThreads];
  const std::int64_t f = blockIdx.x;
  const float* row = decoder + f * sources * static_cast<std::int64_t>(width);
  for (int m = 0; m < sources; ++m) {
    float local = 0.0f;
    for (int i = threadIdx.x; i < width; i += kThreads) {
      const float value = row[static_cast<std::int64_t>(m) * width + i];
      local += value * value;
    }
    const float total = block_sum(local, scratch);
    if (threadIdx.x == 0) norms[f * sources + m] = sqrtf(total);
  }
}

/// target[f, m·d + i] += factor[f·M + m]·source[f, m·d + i]; one block per latent.
__global__ void add_scaled_blocks_kernel(const float* source, const float* factor, int sources,
                                         int width, float* target) {
  const std::int64_t f = blockIdx.x;
  const std::int64_t input_width = static_cast<std::int64_t>(sources) * width;
  for (std::int64_t j = threadIdx.x; j < input_width; j += kThreads) {
    const float scale = factor[f * sources + j / width];
    if (scale != 0.0f) target[f * input_width + j] += scale * source[f * input_width + j];
  }
}

/// Adam's scalars for one step, computed on the host as the CPU backend does.
struct AdamScalars {
  float beta1, beta2, epsilon, gradient_scale, step_size, root_correction2;
};

// Moments below this are flushed to zero: parameters that stop receiving gradient would
// otherwise decay into subnormal floats.
constexpr float kAdamFlushBelow = 1e-30f;

__device__ __forceinline__ void adam_element(const AdamScalars& a, float* parameter, float gradient,
                                             float* m, float* v, std::int64_t i) {
  const float g = gradient * a.gradient_scale;
  const float m_next = a.beta1 * m[i] + (1.0f - a.beta1) * g;
  const float v_next = a.beta2 * v[i] + (1.0f - a.beta2) * g * g;
  const float m_kept = fabsf(m_next) < kAdamFlushBelow ? 0.0f : m_next;
  const float v_kept = v_next < kAdamFlushBelow ? 0.0f : v_next;
  m[i] = m_kept;
  v[i] = v_kept;
  parameter[i] -= a.step_size * m_kept / (sqrtf(v_kept) / a.root_correction2 + a.epsilon);
}

__global__ void adam_kernel(AdamScalars a, float* parameter, const float* gradient, float* m,
                            float* v, std::int64_t n) {
  CROSSCODER_FOR_EACH_INDEX(i, n) { adam_element(a, parameter, gradient[i], m, v, i); }
}

/// Visits the trainable elements of row `row` that thread threadIdx.x owns, in block order (the
/// same blocks for every thread, so the loop may enclose barriers only outside it).
template <typename Visit>
__device__ __forceinline__ void for_each_trainable(const RowConstraint& c, std::int64_t row,
                                                   Visit visit) {
  const std::int64_t block_width = c.row_width / c.blocks;
  for (int block = 0; block < c.blocks; ++block) {
    if (c.trainable && c.trainable[row * c.blocks + block] == 0) continue;
    const std::int64_t first = row * c.row_width + block * block_width;
    for (std::int64_t i = threadIdx.x; i < block_width; i += kThreads) visit(first + i);
  }
}

/// The factor of the parameter row that remove_parallel takes out of the gradient row:
/// (g·p)/(p·p) over the trainable blocks, 0 for a zero row or without remove_parallel.
__device__ float component_along_row(const RowConstraint& c, std::int64_t row,
                                     const float* gradient, const float* parameter,
                                     float* scratch) {
  if (!c.remove_parallel) return 0.0f;
  float dot = 0.0f, squared_norm = 0.0f;
  for_each_trainable(c, row, [&](std::int64_t j) {
    dot += gradient[j] * parameter[j];
    squared_norm += parameter[j] * parameter[j];
  });
  dot = block_sum(dot, scratch);
  squared_norm = block_sum(squared_norm, scratch);
  return squared_norm != 0.0f ? dot / squared_norm : 0.0f;
}

/// Adam on a [rows, row_width] matrix under a row constraint: frozen blocks skipped, the
/// gradient's component along the row removed, the row renormalised, all in one pass over each
/// parameter; one block per row.
__global__ void adam_rows_kernel(AdamScalars a, RowConstraint c, float* parameter,
                                 const float* gradient, float* m, float* v) {
  __shared__ float scratch[kThreads];
  const std::int64_t row = blockIdx.x;
  const float along = component_along_row(c, row, gradient, parameter, scratch);
  float local = 0.0f;
  for_each_trainable(c, row, [&](std::int64_t j) {
    adam_element(a, parameter, gradient[j] - along * parameter[j], m, v, j);
    local += parameter[j] * parameter[j];
  });
  if (!c.unit_norm) return;
  const float squared_norm = block_sum(local, scratch);
  if (squared_norm == 0.0f) return;
  const float norm = sqrtf(squared_norm);
  for_each_trainable(c, row, [&](std::int64_t j) { parameter[j] /= norm; });
}

/// partial[row] = Σ g² over the row's gradient as adam_rows_kernel uses it; one block per row.
__global__ void constrained_squares_rows(RowConstraint c, const float* gradient,
                                         const float* parameter, double* partial) {
  __shared__ float scratch[kThreads];
  __shared__ double totals[kThreads];
  const std::int64_t row = blockIdx.x;
  const float along = component_along_row(c, row, gradient, parameter, scratch);
  double local = 0.0;
  for_each_trainable(c, row, [&](std::int64_t j) {
    const float g = gradient[j] - along * parameter[j];
    local += static_cast<double>(g) * g;
  });
  const double total = block_sum(local, totals);
  if (threadIdx.x == 0) partial[row] = total;
}

}  // namespace crosscoder::CROSSCODER_CUDA_NS
