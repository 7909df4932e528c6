// The CPU backend's sparse passes (cuda/sparse_kernels.cuh on the GPU): decoding, the
// reconstruction fused with the loss, the sparse backward grouped by latent, and per-latent
// totals. Every reduction has a fixed order independent of the threads' scheduling.
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

void CpuBackend::decode(const SparseCodes& codes, const float* decoder, const float* bias,
                        std::int64_t output_width, float* out) {
  const std::int64_t* row_ptr = codes.row_ptr.data();
  const std::int32_t* latent = codes.latent.data();
  const float* value = codes.value.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < codes.rows; ++b)
    decode_row(row_ptr, latent, value, b, decoder, bias, output_width, out + b * output_width);
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

}  // namespace crosscoder::detail
