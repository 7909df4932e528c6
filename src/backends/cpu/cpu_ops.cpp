// The CPU backend's crosscoder operations: Eigen for the dense GEMM, OpenMP loops elsewhere.
// Every reduction has a fixed order independent of the thread count's scheduling, so a run
// is deterministic for a given seed and thread count.
#include <fmt/format.h>

#include <Eigen/Core>
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
#include "backends/cpu/cpu_selection.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/sparse_codes.hpp"

namespace crosscoder::detail {
namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMatrix>;
using RowMap = Eigen::Map<RowMatrix>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXf>;
using VectorMap = Eigen::Map<Eigen::VectorXf>;

// Entries of CSR codes regrouped by latent (a stable counting sort), so that backward passes
// can give each latent's gradient row to one thread and read each parameter row once.
struct EntriesByLatent {
  std::vector<std::int64_t> begin;  // [F + 1]
  std::vector<std::int64_t> entry;  // [nnz] index into the CSR arrays, rows ascending
  std::vector<std::int64_t> row;    // [nnz] the entry's row
};

EntriesByLatent group_by_latent(const SparseCodes& codes, std::int64_t latents) {
  EntriesByLatent grouped;
  grouped.begin.assign(static_cast<std::size_t>(latents + 1), 0);
  grouped.entry.resize(static_cast<std::size_t>(codes.nnz));
  grouped.row.resize(static_cast<std::size_t>(codes.nnz));
  const std::int32_t* latent = codes.latent.data();
  for (std::int64_t e = 0; e < codes.nnz; ++e) ++grouped.begin[latent[e] + 1];
  for (std::int64_t f = 0; f < latents; ++f) grouped.begin[f + 1] += grouped.begin[f];
  std::vector<std::int64_t> next(grouped.begin.begin(), grouped.begin.end() - 1);
  const std::int64_t* row_ptr = codes.row_ptr.data();
  for (std::int64_t b = 0; b < codes.rows; ++b) {
    for (std::int64_t e = row_ptr[b]; e < row_ptr[b + 1]; ++e) {
      const std::int64_t slot = next[latent[e]]++;
      grouped.entry[slot] = e;
      grouped.row[slot] = b;
    }
  }
  return grouped;
}

std::int64_t max_latent_plus_one(const SparseCodes& codes) {
  std::int32_t largest = -1;
  for (std::int64_t e = 0; e < codes.nnz; ++e) largest = std::max(largest, codes.latent.data()[e]);
  return largest + 1;
}

// out[:] = bias + Σ value[e]·decoder[latent[e], :] over row b's entries (bias may be null).
void decode_row(const std::int64_t* row_ptr, const std::int32_t* latent, const float* value,
                std::int64_t b, const float* decoder, const float* bias, std::int64_t width,
                float* out) {
  VectorMap row(out, width);
  if (bias) {
    row = ConstVectorMap(bias, width);
  } else {
    row.setZero();
  }
  for (std::int64_t e = row_ptr[b]; e < row_ptr[b + 1]; ++e)
    row.noalias() += value[e] * ConstVectorMap(decoder + latent[e] * width, width);
}

// statistics[m·4 + i], for each of `blocks` equal parts m of a row: Σ encoder_gradient²,
// Σ decoder_gradient², Σ decoder_gradient·decoder and Σ decoder² (SparseBackwardRequest).
void write_row_statistics(const float* encoder_gradient, const float* decoder_gradient,
                          const float* decoder, std::int64_t width, int blocks,
                          double* statistics) {
  const std::int64_t block_width = width / blocks;
  for (int m = 0; m < blocks; ++m) {
    const std::int64_t begin = m * block_width, end = begin + block_width;
    double encoder_squares = 0.0, decoder_squares = 0.0, along = 0.0, row_squares = 0.0;
#pragma omp simd reduction(+ : encoder_squares)
    for (std::int64_t i = begin; i < end; ++i)
      encoder_squares += static_cast<double>(encoder_gradient[i]) * encoder_gradient[i];
    if (decoder_gradient) {
#pragma omp simd reduction(+ : decoder_squares, along, row_squares)
      for (std::int64_t i = begin; i < end; ++i) {
        const auto g = static_cast<double>(decoder_gradient[i]);
        const auto d = static_cast<double>(decoder[i]);
        decoder_squares += g * g;
        along += g * d;
        row_squares += d * d;
      }
    }
    statistics[m * 4 + 0] = encoder_squares;
    statistics[m * 4 + 1] = decoder_squares;
    statistics[m * 4 + 2] = along;
    statistics[m * 4 + 3] = row_squares;
  }
}

// C[m, n] = op(A)·op(B) for row-major matrices, op transposing where asked: OpenBLAS where
// built with it, else Eigen.
void multiply(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
              const float* a, const float* b, float* c) {
#if CROSSCODER_WITH_OPENBLAS
  constexpr auto kLargest = static_cast<std::int64_t>(std::numeric_limits<blasint>::max());
  if (m <= kLargest && n <= kLargest && k <= kLargest) {
    cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans,
                transpose_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
                static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, a,
                static_cast<blasint>(transpose_a ? m : k), b,
                static_cast<blasint>(transpose_b ? k : n), 0.0f, c, static_cast<blasint>(n));
    return;
  }
#endif
  RowMap out(c, m, n);
  const ConstRowMap left(a, transpose_a ? k : m, transpose_a ? m : k);
  const ConstRowMap right(b, transpose_b ? n : k, transpose_b ? k : n);
  if (transpose_a && transpose_b) {
    out.noalias() = left.transpose() * right.transpose();
  } else if (transpose_a) {
    out.noalias() = left.transpose() * right;
  } else if (transpose_b) {
    out.noalias() = left * right.transpose();
  } else {
    out.noalias() = left * right;
  }
}

// Codes whose entries crowd onto few latents, as AuxK's do (a few hundred dead latents with
// hundreds of entries each), laid out as a dense [rows, active] matrix so that the GEMM does
// their decoding and backward: per multiply-add the GEMM is about five times faster than the
// sparse passes' row gathers, so from a quarter filled on it wins (BM_SparsePasses).
struct CrowdedLatents {
  std::vector<std::int64_t> active;  // latents with entries, ascending
  std::vector<float> values;         // [rows, active]; zero where a row has no entry
  std::vector<std::int32_t> column;  // [F] the latent's column, −1 when it has no entry
};

constexpr double kCrowdedFill = 0.25;

bool crowded(const SparseCodes& codes, std::int64_t latents, CrowdedLatents& out) {
  constexpr std::int64_t kFewestLatents = 8;          // below this the GEMM's set-up is not repaid
  constexpr double kLargestBlock = 64.0 * (1 << 20);  // floats: the dense block stays ≤ 256 MiB
  const std::int32_t* latent = codes.latent.data();
  out.column.assign(static_cast<std::size_t>(latents), -1);
  std::int64_t count = 0;
  for (std::int64_t e = 0; e < codes.nnz; ++e) {
    if (out.column[latent[e]] < 0) {
      out.column[latent[e]] = 0;
      ++count;
    }
  }
  const double block = static_cast<double>(codes.rows) * static_cast<double>(count);
  if (count < kFewestLatents || block > kLargestBlock ||
      static_cast<double>(codes.nnz) < kCrowdedFill * block)
    return false;
  out.active.clear();
  for (std::int64_t f = 0; f < latents; ++f) {
    if (out.column[f] < 0) continue;
    out.column[f] = static_cast<std::int32_t>(out.active.size());
    out.active.push_back(f);
  }
  out.values.assign(static_cast<std::size_t>(codes.rows * count), 0.0f);
  const std::int64_t* row_ptr = codes.row_ptr.data();
  for (std::int64_t b = 0; b < codes.rows; ++b) {
    for (std::int64_t e = row_ptr[b]; e < row_ptr[b + 1]; ++e)
      out.values[b * count + out.column[latent[e]]] += codes.value.data()[e];
  }
  return true;
}

// The rows of `matrix` [F, width] named by `latents`, packed.
std::vector<float> gather_rows(const float* matrix, const std::vector<std::int64_t>& latents,
                               std::int64_t width) {
  std::vector<float> packed(latents.size() * static_cast<std::size_t>(width));
  const auto count = static_cast<std::int64_t>(latents.size());
#pragma omp parallel for schedule(static)
  for (std::int64_t j = 0; j < count; ++j)
    std::copy_n(matrix + latents[j] * width, width, packed.data() + j * width);
  return packed;
}

}  // namespace

namespace {

// Calls apply(index, source, column) for every element of a [rows, M·d] batch, rows in parallel.
template <typename Apply>
void for_each_element(std::int64_t rows, int sources, int width, Apply apply) {
  const std::int64_t input_width = static_cast<std::int64_t>(sources) * width;
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    for (int m = 0; m < sources; ++m) {
      for (int i = 0; i < width; ++i) {
        const int column = m * width + i;
        apply(b * input_width + column, m, column);
      }
    }
  }
}

}  // namespace

void CpuBackend::normalise(const float* x, std::int64_t rows, int sources, int width,
                           const float* scale, const float* mean, float* xn) {
  for_each_element(rows, sources, width, [&](std::int64_t index, int m, int column) {
    xn[index] = (x[index] - (mean ? mean[column] : 0.0f)) * scale[m];
  });
}

void CpuBackend::denormalise(const float* xn, std::int64_t rows, int sources, int width,
                             const float* scale, const float* mean, float* x) {
  for_each_element(rows, sources, width, [&](std::int64_t index, int m, int column) {
    x[index] = xn[index] / scale[m] + (mean ? mean[column] : 0.0f);
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

SparseCodes CpuBackend::select(const float* pre, std::int64_t rows, std::int64_t latents,
                               const SelectionRequest& request, float* min_selected_score) {
  return cpu_select(shared_from_this(), pre, rows, latents, request, min_selected_score);
}

SparseCodes CpuBackend::select_top_entries(const SparseCodes& codes, std::int64_t count,
                                           const float* weight, float* min_selected_score) {
  if (min_selected_score) *min_selected_score = -1.0f;
  const std::int64_t nnz = codes.nnz;
  const std::int32_t* latent = codes.latent.data();
  const float* value = codes.value.data();
  // Non-negative floats order like their bits; the count-th largest key is the threshold, and
  // its ties are taken in entry order.
  std::vector<std::uint32_t> keys(static_cast<std::size_t>(nnz));
  for (std::int64_t e = 0; e < nnz; ++e) {
    const float positive = value[e] > 0.0f ? value[e] : 0.0f;
    keys[e] = std::bit_cast<std::uint32_t>(weight ? positive * weight[latent[e]] : positive);
  }
  const std::int64_t wanted = std::clamp<std::int64_t>(count, 0, nnz);
  std::uint32_t threshold = 0xFFFFFFFFu;  // with nothing wanted, above every key
  std::int64_t ties_left = 0;
  if (wanted > 0) {
    std::vector<std::uint32_t> sorted = keys;
    std::nth_element(sorted.begin(), sorted.begin() + (wanted - 1), sorted.end(), std::greater<>());
    threshold = sorted[static_cast<std::size_t>(wanted - 1)];
    ties_left = wanted;
    for (std::uint32_t key : keys) ties_left -= key > threshold ? 1 : 0;
  }
  std::vector<std::int64_t> row_ptr(static_cast<std::size_t>(codes.rows + 1), 0);
  std::vector<std::int32_t> kept_latent;
  std::vector<float> kept_value;
  kept_latent.reserve(static_cast<std::size_t>(wanted));
  kept_value.reserve(static_cast<std::size_t>(wanted));
  std::uint32_t smallest_positive = 0xFFFFFFFFu;
  for (std::int64_t b = 0; b < codes.rows; ++b) {
    for (std::int64_t e = codes.row_ptr.data()[b]; e < codes.row_ptr.data()[b + 1]; ++e) {
      if (!(keys[e] > threshold || (keys[e] == threshold && ties_left-- > 0))) continue;
      kept_latent.push_back(latent[e]);
      kept_value.push_back(value[e]);
      if (keys[e] > 0) smallest_positive = std::min(smallest_positive, keys[e]);
    }
    row_ptr[b + 1] = static_cast<std::int64_t>(kept_latent.size());
  }
  if (min_selected_score && smallest_positive != 0xFFFFFFFFu)
    *min_selected_score = std::bit_cast<float>(smallest_positive);
  SparseCodes out;
  out.rows = codes.rows;
  out.nnz = static_cast<std::int64_t>(kept_latent.size());
  out.row_ptr =
      DeviceArray<std::int64_t>(shared_from_this(), std::span<const std::int64_t>(row_ptr));
  out.latent =
      DeviceArray<std::int32_t>(shared_from_this(), std::span<const std::int32_t>(kept_latent));
  out.value = DeviceArray<float>(shared_from_this(), std::span<const float>(kept_value));
  return out;
}

void CpuBackend::decode(const SparseCodes& codes, const float* decoder, const float* bias,
                        std::int64_t output_width, float* out) {
  const std::int64_t* row_ptr = codes.row_ptr.data();
  const std::int32_t* latent = codes.latent.data();
  const float* value = codes.value.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < codes.rows; ++b)
    decode_row(row_ptr, latent, value, b, decoder, bias, output_width, out + b * output_width);
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

void CpuBackend::reconstruct(const SparseCodes& codes, const ReconstructionRequest& r) {
  // Each row is decoded, compared and differentiated while it is in cache.
  const int M = r.sources;
  const std::int64_t D = static_cast<std::int64_t>(M) * r.width;
  const std::int64_t rows = codes.rows;
  const std::int64_t* row_ptr = codes.row_ptr.data();
  const std::int32_t* latent = codes.latent.data();
  const float* value = codes.value.data();
  std::vector<double> per_row(static_cast<std::size_t>(rows * M));
  std::vector<double> energy_per_row(r.target_energy ? static_cast<std::size_t>(rows * M) : 0);
  CrowdedLatents dense;
  const bool by_gemm = crowded(codes, max_latent_plus_one(codes), dense);
  if (by_gemm) {
    const std::vector<float> rows_used = gather_rows(r.decoder, dense.active, D);
    multiply(false, false, rows, D, static_cast<std::int64_t>(dense.active.size()),
             dense.values.data(), rows_used.data(), r.recon);
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    if (!by_gemm) {
      decode_row(row_ptr, latent, value, b, r.decoder, r.bias, D, r.recon + b * D);
    } else if (r.bias) {
      VectorMap(r.recon + b * D, D) += ConstVectorMap(r.bias, D);
    }
    for (int m = 0; m < M; ++m) {
      const std::int64_t offset = b * D + static_cast<std::int64_t>(m) * r.width;
      const float* target = r.target + offset;
      const float* recon = r.recon + offset;
      double total = 0.0;
      for (int i = 0; i < r.width; ++i) {
        const float difference = recon[i] - target[i];
        total += static_cast<double>(difference) * difference;
        if (r.grad) r.grad[offset + i] = r.gradient_scale * difference;
      }
      per_row[b * M + m] = total;
      if (r.target_energy) {
        double energy = 0.0;
        for (int i = 0; i < r.width; ++i) energy += static_cast<double>(target[i]) * target[i];
        energy_per_row[b * M + m] = energy;
      }
    }
  }
  for (int m = 0; m < M; ++m) {
    r.squared_error[m] = 0.0;
    if (r.target_energy) r.target_energy[m] = 0.0;
  }
  for (std::int64_t b = 0; b < rows; ++b) {
    for (int m = 0; m < M; ++m) {
      r.squared_error[m] += per_row[b * M + m];
      if (r.target_energy) r.target_energy[m] += energy_per_row[b * M + m];
    }
  }
}

namespace {

// What an overwriting sparse_backward leaves for latent f before adding its entries: zero
// gradient rows, bias gradient and row statistics.
void clear_latent_gradients(const SparseBackwardRequest& r, std::int64_t f) {
  const std::int64_t D = r.width;
  std::fill_n(r.d_encoder + f * D, D, 0.0f);
  if (r.d_decoder) std::fill_n(r.d_decoder + f * D, D, 0.0f);
  r.d_bias[f] = 0.0f;
  if (r.row_statistics) {
    const int blocks = r.statistics_blocks;
    std::fill_n(r.row_statistics + f * blocks * 4, blocks * 4, 0.0);
  }
}

// sparse_backward for crowded codes: with A the codes' values and Δ their ∂L/∂pre as dense
// [rows, active] matrices and W the active latents' decoder rows, ∂L/∂a = G·Wᵀ at the entries,
// the decoder's gradient rows Aᵀ·G and the encoder's Δᵀ·X, three GEMMs.
void sparse_backward_by_gemm(const SparseCodes& codes, const CrowdedLatents& dense,
                             const SparseBackwardRequest& r) {
  const std::int64_t F = r.latents, D = r.width, rows = codes.rows;
  const auto count = static_cast<std::int64_t>(dense.active.size());
  const std::vector<float> decoder_rows = gather_rows(r.decoder, dense.active, D);
  std::vector<float> d_value(static_cast<std::size_t>(rows * count));
  multiply(false, true, rows, count, D, r.grad_out, decoder_rows.data(), d_value.data());
  std::vector<float> d_pre(static_cast<std::size_t>(rows * count), 0.0f);
  const std::int64_t* row_ptr = codes.row_ptr.data();
  const std::int32_t* latent = codes.latent.data();
  const float* value = codes.value.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < rows; ++b) {
    for (std::int64_t e = row_ptr[b]; e < row_ptr[b + 1]; ++e) {
      const std::int64_t at = b * count + dense.column[latent[e]];
      if (r.d_value) r.d_value[e] = d_value[at];
      const float offset = r.value_gradient_offset ? r.value_gradient_offset[latent[e]] : 0.0f;
      if (value[e] > 0.0f) d_pre[at] += d_value[at] + offset;
    }
  }
  std::vector<float> encoder_rows(static_cast<std::size_t>(count * D)), decoder_gradient;
  multiply(true, false, count, D, rows, d_pre.data(), r.xn, encoder_rows.data());
  if (r.d_decoder) {
    decoder_gradient.resize(static_cast<std::size_t>(count * D));
    multiply(true, false, count, D, rows, dense.values.data(), r.grad_out, decoder_gradient.data());
  }
  const int blocks = r.statistics_blocks;
#pragma omp parallel for schedule(static)
  for (std::int64_t f = 0; f < F; ++f) {
    if (!r.accumulate) clear_latent_gradients(r, f);
    const std::int32_t j = dense.column[f];
    if (j < 0) continue;
    float* encoder_row = r.d_encoder + f * D;
    float* decoder_row = r.d_decoder ? r.d_decoder + f * D : nullptr;
    VectorMap(encoder_row, D) += ConstVectorMap(encoder_rows.data() + j * D, D);
    if (decoder_row)
      VectorMap(decoder_row, D) += ConstVectorMap(decoder_gradient.data() + j * D, D);
    float bias_gradient = 0.0f;
    for (std::int64_t b = 0; b < rows; ++b) bias_gradient += d_pre[b * count + j];
    r.d_bias[f] += bias_gradient;
    if (r.row_statistics)
      write_row_statistics(encoder_row, decoder_row, r.decoder + f * D, D, blocks,
                           r.row_statistics + f * blocks * 4);
  }
}

}  // namespace

void CpuBackend::sparse_backward(const SparseCodes& codes, const SparseBackwardRequest& r) {
  // One thread owns a latent: it reads that latent's decoder row once, derives every entry's
  // ∂L/∂a and ∂L/∂pre, and writes the latent's decoder and encoder gradient rows once, while the
  // upstream and input rows of its entries stream through the cache.
  const std::int64_t F = r.latents, D = r.width;
  if (max_latent_plus_one(codes) > F)
    throw Error(fmt::format("sparse_backward: the codes name latent {} of {}",
                            max_latent_plus_one(codes) - 1, F));
  check_row_statistics(r);
  CrowdedLatents dense;
  if (crowded(codes, F, dense)) {
    sparse_backward_by_gemm(codes, dense, r);
    return;
  }
  const EntriesByLatent grouped = group_by_latent(codes, F);
  const float* value = codes.value.data();
  const int blocks = r.statistics_blocks;
#pragma omp parallel for schedule(dynamic, 16)
  for (std::int64_t f = 0; f < F; ++f) {
    VectorMap encoder_row(r.d_encoder + f * D, D);
    float* decoder_gradient = r.d_decoder ? r.d_decoder + f * D : nullptr;
    double* statistics = r.row_statistics ? r.row_statistics + f * blocks * 4 : nullptr;
    if (!r.accumulate) clear_latent_gradients(r, f);
    if (grouped.begin[f] == grouped.begin[f + 1]) continue;
    const ConstVectorMap decoder_row(r.decoder + f * D, D);
    const float offset = r.value_gradient_offset ? r.value_gradient_offset[f] : 0.0f;
    float bias_gradient = 0.0f;
    for (std::int64_t s = grouped.begin[f]; s < grouped.begin[f + 1]; ++s) {
      const std::int64_t e = grouped.entry[s];
      const ConstVectorMap upstream(r.grad_out + grouped.row[s] * D, D);
      const float d_value = decoder_row.dot(upstream);
      if (r.d_value) r.d_value[e] = d_value;
      if (decoder_gradient) VectorMap(decoder_gradient, D).noalias() += value[e] * upstream;
      const float d_pre = value[e] > 0.0f ? d_value + offset : 0.0f;
      if (d_pre == 0.0f) continue;
      encoder_row.noalias() += d_pre * ConstVectorMap(r.xn + grouped.row[s] * D, D);
      bias_gradient += d_pre;
    }
    r.d_bias[f] += bias_gradient;
    if (statistics) {
      // The rows are still in L1: these sums spare the clipping norm a pass over both
      // gradients and the decoder.
      write_row_statistics(encoder_row.data(), decoder_gradient, r.decoder + f * D, D, blocks,
                           statistics);
    }
  }
}

void CpuBackend::decoder_backward(const SparseCodes& codes, const float* grad_out,
                                  const float* decoder, std::int64_t output_width, float* d_value,
                                  float* d_decoder) {
  // Entries grouped by latent, so that each decoder row is read once (not once per entry) and
  // each gradient row is written by one thread; the upstream rows [B, D] stay in cache.
  const std::int64_t latents = max_latent_plus_one(codes);
  const EntriesByLatent grouped = group_by_latent(codes, latents);
  const float* value = codes.value.data();
#pragma omp parallel for schedule(dynamic, 16)
  for (std::int64_t f = 0; f < latents; ++f) {
    if (grouped.begin[f] == grouped.begin[f + 1]) continue;
    const ConstVectorMap decoder_row(decoder + f * output_width, output_width);
    for (std::int64_t s = grouped.begin[f]; s < grouped.begin[f + 1]; ++s) {
      const ConstVectorMap upstream(grad_out + grouped.row[s] * output_width, output_width);
      d_value[grouped.entry[s]] = decoder_row.dot(upstream);
      if (d_decoder) {
        VectorMap(d_decoder + f * output_width, output_width).noalias() +=
            value[grouped.entry[s]] * upstream;
      }
    }
  }
}

void CpuBackend::encoder_backward(const SparseCodes& codes, const float* d_pre, const float* xn,
                                  std::int64_t input_width, float* d_encoder, float* d_bias) {
  const std::int64_t latents = max_latent_plus_one(codes);
  const EntriesByLatent grouped = group_by_latent(codes, latents);
#pragma omp parallel for schedule(dynamic, 16)
  for (std::int64_t f = 0; f < latents; ++f) {
    if (grouped.begin[f] == grouped.begin[f + 1]) continue;
    VectorMap gradient_row(d_encoder + f * input_width, input_width);
    float bias_gradient = 0.0f;
    for (std::int64_t s = grouped.begin[f]; s < grouped.begin[f + 1]; ++s) {
      const float upstream = d_pre[grouped.entry[s]];
      if (upstream == 0.0f) continue;
      gradient_row.noalias() +=
          upstream * ConstVectorMap(xn + grouped.row[s] * input_width, input_width);
      bias_gradient += upstream;
    }
    d_bias[f] += bias_gradient;
  }
}

void CpuBackend::latent_totals(const SparseCodes& codes, std::int64_t latents, float* sums,
                               std::int64_t* counts) {
  std::fill(sums, sums + latents, 0.0f);
  if (counts) std::fill(counts, counts + latents, 0);
  for (std::int64_t e = 0; e < codes.nnz; ++e) {
    const std::int32_t f = codes.latent.data()[e];
    sums[f] += codes.value.data()[e];
    if (counts) ++counts[f];
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

void CpuBackend::constrain_decoder(float* decoder, float* gradient, std::int64_t latents,
                                   std::int64_t width) {
#pragma omp parallel for schedule(static)
  for (std::int64_t f = 0; f < latents; ++f) {
    VectorMap row(decoder + f * width, width);
    const float squared_norm = row.squaredNorm();
    if (squared_norm == 0.0f) continue;
    if (gradient) {
      VectorMap g(gradient + f * width, width);
      g -= (g.dot(row) / squared_norm) * row;
    } else {
      row /= std::sqrt(squared_norm);
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
