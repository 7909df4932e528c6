// The CPU backend's optimiser passes (adam_kernel, adam_rows_kernel and constrained_squares_rows
// in cuda/dense_kernels.cuh on the GPU): Adam under a RowConstraint and the gradient norm for
// clipping as Adam will use the gradient.
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#if CROSSCODER_WITH_OPENBLAS
#include <cblas.h>
#endif

#include "backends/backend_contract.hpp"
#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_eigen.hpp"
#include "backends/cpu/cpu_selection.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/sparse_codes.hpp"

namespace crosscoder::detail {

namespace {
constexpr float kFlushBelow = 1e-30f;
}  // namespace

namespace {

// Adam over parameter[begin, end): the moments of parameters that stop receiving gradient
// decay geometrically into subnormal floats, which are ~100× slower on x86, so they are
// flushed to zero first (far below any step).
struct AdamKernel {
  const AdamStep& step;
  float step_size, root_correction2;

  explicit AdamKernel(const AdamStep& s)
      : step(s),
        step_size(adam_corrections(s).step_size),
        root_correction2(adam_corrections(s).root_correction2) {}

  void operator()(float* parameter, const float* gradient, float* m, float* v, std::int64_t begin,
                  std::int64_t end) const {
    const float beta1 = step.beta1, beta2 = step.beta2, epsilon = step.epsilon;
    const float scale = step.gradient_scale, size = step_size, root = root_correction2;
#pragma omp simd
    for (std::int64_t i = begin; i < end; ++i) {
      const float g = gradient[i] * scale;
      const float m_next = beta1 * m[i] + (1.0f - beta1) * g;
      const float v_next = beta2 * v[i] + (1.0f - beta2) * g * g;
      m[i] = std::abs(m_next) < kFlushBelow ? 0.0f : m_next;
      v[i] = v_next < kFlushBelow ? 0.0f : v_next;
      parameter[i] -= size * m[i] / (std::sqrt(v[i]) / root + epsilon);
    }
  }
};

}  // namespace

namespace {

// Calls visit(begin, end) for each trainable block [begin, end) of a row, in order.
template <typename Visit>
void for_each_trainable_block(const RowConstraint& c, std::int64_t row, Visit visit) {
  const std::int64_t block_width = c.row_width / c.blocks;
  for (int block = 0; block < c.blocks; ++block) {
    if (c.trainable && c.trainable[row * c.blocks + block] == 0) continue;
    visit(row * c.row_width + block * block_width, row * c.row_width + (block + 1) * block_width);
  }
}

// The gradient of one row as the constraint has it: the trainable blocks, less their component
// along the parameter row when remove_parallel is set. Writes it to `out`, indexed by the
// position within the row (frozen blocks left unwritten).
void constrained_row(const RowConstraint& c, std::int64_t row, const float* gradient,
                     const float* parameter, float* out) {
  float along = 0.0f;
  if (c.remove_parallel) {
    float dot = 0.0f, squared_norm = 0.0f;
    for_each_trainable_block(c, row, [&](std::int64_t begin, std::int64_t end) {
      // Local sums: reductions into the captured references would not vectorise.
      float block_dot = 0.0f, block_squares = 0.0f;
#pragma omp simd reduction(+ : block_dot, block_squares)
      for (std::int64_t i = begin; i < end; ++i) {
        block_dot += gradient[i] * parameter[i];
        block_squares += parameter[i] * parameter[i];
      }
      dot += block_dot;
      squared_norm += block_squares;
    });
    if (squared_norm != 0.0f) along = dot / squared_norm;
  }
  const std::int64_t first = row * c.row_width;
  for_each_trainable_block(c, row, [&](std::int64_t begin, std::int64_t end) {
#pragma omp simd
    for (std::int64_t i = begin; i < end; ++i) out[i - first] = gradient[i] - along * parameter[i];
  });
}

}  // namespace

double CpuBackend::constrained_sum_of_squares(const float* gradient, const float* parameter,
                                              std::int64_t n, const RowConstraint& constraint) {
  const std::int64_t rows = check_row_constraint(constraint, n, "constrained_sum_of_squares");
  if (rows == 0) return sum_of_squares(gradient, n);
  std::vector<double> per_row(static_cast<std::size_t>(rows), 0.0);
#pragma omp parallel
  {
    std::vector<float> buffer(static_cast<std::size_t>(constraint.row_width));
#pragma omp for schedule(static)
    for (std::int64_t row = 0; row < rows; ++row) {
      constrained_row(constraint, row, gradient, parameter, buffer.data());
      double total = 0.0;
      const std::int64_t first = row * constraint.row_width;
      for_each_trainable_block(constraint, row, [&](std::int64_t begin, std::int64_t end) {
        double block_total = 0.0;
#pragma omp simd reduction(+ : block_total)
        for (std::int64_t i = begin - first; i < end - first; ++i)
          block_total += static_cast<double>(buffer[i]) * buffer[i];
        total += block_total;
      });
      per_row[row] = total;
    }
  }
  double total = 0.0;
  for (double value : per_row) total += value;
  return total;
}

void CpuBackend::adam_update(float* parameter, const float* gradient, float* m, float* v,
                             std::int64_t n, const AdamStep& step) {
  const AdamKernel adam(step);
  const RowConstraint& c = step.rows;
  const std::int64_t rows = check_row_constraint(c, n, "adam_update");
  if (rows == 0) {
    constexpr std::int64_t kChunk = 1 << 14;
#pragma omp parallel for schedule(static)
    for (std::int64_t begin = 0; begin < n; begin += kChunk) {
      adam(parameter, gradient, m, v, begin, std::min(n, begin + kChunk));
    }
    return;
  }
  // Each row is projected, updated and renormalised while it is in cache.
#pragma omp parallel
  {
    std::vector<float> buffer(c.remove_parallel ? static_cast<std::size_t>(c.row_width) : 0);
#pragma omp for schedule(static)
    for (std::int64_t row = 0; row < rows; ++row) {
      const std::int64_t first = row * c.row_width;
      if (c.remove_parallel) constrained_row(c, row, gradient, parameter, buffer.data());
      float squared_norm = 0.0f;
      for_each_trainable_block(c, row, [&](std::int64_t begin, std::int64_t end) {
        if (c.remove_parallel) {
          const std::int64_t within = begin - first;
          adam(parameter + begin, buffer.data() + within, m + begin, v + begin, 0, end - begin);
        } else {
          adam(parameter, gradient, m, v, begin, end);
        }
        if (!c.unit_norm) return;
        float block_squares = 0.0f;
#pragma omp simd reduction(+ : block_squares)
        for (std::int64_t i = begin; i < end; ++i) block_squares += parameter[i] * parameter[i];
        squared_norm += block_squares;
      });
      if (!c.unit_norm || squared_norm == 0.0f) continue;
      const float norm = std::sqrt(squared_norm);
      for_each_trainable_block(c, row, [&](std::int64_t begin, std::int64_t end) {
#pragma omp simd
        for (std::int64_t i = begin; i < end; ++i) parameter[i] /= norm;
      });
    }
  }
}

}  // namespace crosscoder::detail
