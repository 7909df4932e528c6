// The CPU backend's dense passes (cuda/dense_kernels.cuh on the GPU): normalisation, the encoder
// GEMM with its bias, the squared error, norms, column sums and the small elementwise passes.
// Every reduction has a fixed order independent of the threads' scheduling, so a run is
// deterministic for a given seed and thread count.
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

// Calls apply(index, column) for every element of a [rows, M·d] batch, rows in parallel.
template <typename Apply>
void for_each_element(std::int64_t rows, int sources, int width, Apply apply) {
  const std::int64_t input_width = static_cast<std::int64_t>(sources) * width;
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    for (std::int64_t column = 0; column < input_width; ++column) {
      apply(b * input_width + column, column);
    }
  }
}

}  // namespace

void CpuBackend::normalise(const float* x, std::int64_t rows, int sources, int width,
                           const float* scale, const float* mean, float* xn) {
  for_each_element(rows, sources, width, [&](std::int64_t index, std::int64_t column) {
    xn[index] = (x[index] - (mean ? mean[column] : 0.0f)) * scale[column];
  });
}

void CpuBackend::denormalise(const float* xn, std::int64_t rows, int sources, int width,
                             const float* scale, const float* mean, float* x) {
  for_each_element(rows, sources, width, [&](std::int64_t index, std::int64_t column) {
    x[index] = xn[index] / scale[column] + (mean ? mean[column] : 0.0f);
  });
}

void CpuBackend::encode(const float* xn, std::int64_t rows, std::int64_t input_width,
                        const float* encoder, const float* bias, std::int64_t latents, bool rectify,
                        float* pre) {
  RowMap out(pre, rows, latents);
#if CROSSCODER_WITH_OPENBLAS
  constexpr auto kLargest = static_cast<std::int64_t>(std::numeric_limits<blasint>::max());
  if (rows <= kLargest && latents <= kLargest && input_width <= kLargest) {
    const auto r = static_cast<blasint>(rows), f = static_cast<blasint>(latents),
               w = static_cast<blasint>(input_width);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, f, w, 1.0f, xn, w, encoder, w, 0.0f,
                pre, f);
  } else
#endif
  {
    out.noalias() =
        ConstRowMap(xn, rows, input_width) * ConstRowMap(encoder, latents, input_width).transpose();
  }
  const Eigen::Map<const Eigen::RowVectorXf> b(bias, latents);
  if (rectify) {
#pragma omp parallel for schedule(static)
    for (std::int64_t row = 0; row < rows; ++row) out.row(row) = (out.row(row) + b).cwiseMax(0.0f);
  } else {
    out.rowwise() += b;
  }
}

void CpuBackend::squared_error(const float* recon, const float* target, std::int64_t rows,
                               int sources, int width, float gradient_scale, float* grad,
                               double* sse) {
  const std::int64_t input_width = static_cast<std::int64_t>(sources) * width;
  std::vector<double> per_row(static_cast<std::size_t>(rows * sources));
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    for (int m = 0; m < sources; ++m) {
      const std::int64_t offset = b * input_width + static_cast<std::int64_t>(m) * width;
      double total = 0.0;
      for (int i = 0; i < width; ++i) {
        const float difference = recon[offset + i] - target[offset + i];
        total += static_cast<double>(difference) * difference;
        if (grad) grad[offset + i] = gradient_scale * difference;
      }
      per_row[b * sources + m] = total;
    }
  }
  for (int m = 0; m < sources; ++m) sse[m] = 0.0;
  for (std::int64_t b = 0; b < rows; ++b) {
    for (int m = 0; m < sources; ++m) sse[m] += per_row[b * sources + m];
  }
}

void CpuBackend::decoder_norms(const float* decoder, std::int64_t latents, int sources, int width,
                               float* norms) {
  const std::int64_t input_width = static_cast<std::int64_t>(sources) * width;
#pragma omp parallel for schedule(static)
  for (std::int64_t f = 0; f < latents; ++f) {
    for (int m = 0; m < sources; ++m) {
      norms[f * sources + m] =
          ConstVectorMap(decoder + f * input_width + static_cast<std::int64_t>(m) * width, width)
              .norm();
    }
  }
}

void CpuBackend::add_scaled_blocks(const float* source, const float* factor, std::int64_t latents,
                                   int sources, int width, float* target) {
  const std::int64_t input_width = static_cast<std::int64_t>(sources) * width;
#pragma omp parallel for schedule(static)
  for (std::int64_t f = 0; f < latents; ++f) {
    for (int m = 0; m < sources; ++m) {
      const float scale = factor[f * sources + m];
      if (scale == 0.0f) continue;
      const std::int64_t offset = f * input_width + static_cast<std::int64_t>(m) * width;
      VectorMap(target + offset, width).noalias() += scale * ConstVectorMap(source + offset, width);
    }
  }
}

void CpuBackend::column_sums(const float* x, std::int64_t rows, std::int64_t width, double* sums) {
  // Partial sums over fixed blocks of rows (vectorised along the row), added in block order:
  // the result does not depend on the thread count.
  constexpr std::int64_t kRowsPerBlock = 64;
  const std::int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  std::vector<double> partial(static_cast<std::size_t>(blocks * width), 0.0);
#pragma omp parallel for schedule(static)
  for (std::int64_t block = 0; block < blocks; ++block) {
    double* total = partial.data() + block * width;
    const std::int64_t end = std::min(rows, (block + 1) * kRowsPerBlock);
    for (std::int64_t b = block * kRowsPerBlock; b < end; ++b) {
      const float* row = x + b * width;
#pragma omp simd
      for (std::int64_t j = 0; j < width; ++j) total[j] += row[j];
    }
  }
  std::fill(sums, sums + width, 0.0);
  for (std::int64_t block = 0; block < blocks; ++block) {
    const double* total = partial.data() + block * width;
#pragma omp simd
    for (std::int64_t j = 0; j < width; ++j) sums[j] += total[j];
  }
}

void CpuBackend::clamp_min(float* x, std::int64_t n, float lower) {
#pragma omp parallel for simd schedule(static)
  for (std::int64_t i = 0; i < n; ++i) x[i] = std::max(x[i], lower);
}

double CpuBackend::sum_of_squares(const float* x, std::int64_t n) {
  // Fixed-size chunks, each summed in kLanes interleaved partial sums (so that the loop
  // vectorises), then lanes and chunks added in order: the result does not depend on the
  // thread count.
  constexpr std::int64_t kChunk = 1 << 15;
  constexpr std::int64_t kLanes = 16;
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    double lanes[kLanes] = {};
    const std::int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
    std::int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
#pragma omp simd
      for (std::int64_t j = 0; j < kLanes; ++j) {
        const auto value = static_cast<double>(x[i + j]);
        lanes[j] += value * value;
      }
    }
    double total = 0.0;
    for (double lane : lanes) total += lane;
    for (; i < end; ++i) total += static_cast<double>(x[i]) * x[i];
    partial[c] = total;
  }
  double total = 0.0;
  for (double value : partial) total += value;
  return total;
}

}  // namespace crosscoder::detail
