// The CUDA backend's operations: the orchestration of the kernels in *_kernels.cuh and of the
// primitives in device_primitives.hpp on one stream. Host code waits for the device only where
// a size must be known on the host (the number of selected entries, of latent groups) or a
// result is a host array.
#include "cuda_backend.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "backends/backend_contract.hpp"
#include "crosscoder/device_array.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/sparse_codes.hpp"
#include "dense_kernels.cuh"
#include "selection_kernels.cuh"
#include "sparse_kernels.cuh"

#if !defined(CROSSCODER_CUDA_EMULATION)
#include "backends/cuda_entry.hpp"
#include "crosscoder/version.hpp"
#endif

namespace crosscoder::CROSSCODER_CUDA_NS {
namespace {

// Grid-stride kernels need no more blocks than keep the GPU busy.
dim3 elementwise_grid(std::int64_t n) {
  const std::int64_t blocks = std::clamp<std::int64_t>(ceil_div(n, kThreads), 1, 1 << 16);
  return dim3(static_cast<unsigned>(blocks));
}

// One block per item (row, latent, group).
dim3 grid_of(std::int64_t items) {
  if (items > std::numeric_limits<int>::max())
    throw Error("CUDA backend: " + std::to_string(items) + " blocks exceed the grid limit");
  return dim3(static_cast<unsigned>(items));
}

}  // namespace

#if defined(CROSSCODER_CUDA_EMULATION)

CudaBackend::CudaBackend(int device)
    : device_(device),
      description_("CUDA kernels on the host emulator (tests only)"),
      workspace_(std::make_unique<Workspace>(stream_)),
      gemm_(std::make_unique<EncoderGemm>(stream_)) {}

CudaBackend::~CudaBackend() = default;

#else

namespace {

std::string describe_device(int device) {
  cudaDeviceProp properties{};
  CROSSCODER_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  char text[512];
  std::snprintf(text, sizeof text, "%s (device %d, sm_%d%d, %.1f GiB)", properties.name, device,
                properties.major, properties.minor,
                static_cast<double>(properties.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return text;
}

}  // namespace

CudaBackend::CudaBackend(int device) : device_(device) {
  CROSSCODER_CUDA_CHECK(cudaSetDevice(device_));
  CROSSCODER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    // Stream-ordered allocations come from the device's current pool; keeping freed memory
    // there makes every per-step temporary a reuse rather than a cudaMalloc.
    cudaMemPool_t pool = nullptr;
    CROSSCODER_CUDA_CHECK(cudaDeviceGetMemPool(&pool, device_));
    std::uint64_t keep_everything = std::numeric_limits<std::uint64_t>::max();
    CROSSCODER_CUDA_CHECK(
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_everything));
    workspace_ = std::make_unique<Workspace>(stream_);
    gemm_ = std::make_unique<EncoderGemm>(stream_);
    description_ = describe_device(device_);
  } catch (...) {
    gemm_.reset();
    workspace_.reset();
    cudaStreamDestroy(stream_);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  gemm_.reset();
  workspace_.reset();
  if (stream_) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
}

#endif

// ---- Memory ---------------------------------------------------------------------------------

void* CudaBackend::allocate(std::size_t bytes) {
  void* pointer = nullptr;
  const cudaError_t status = cudaMallocAsync(&pointer, bytes == 0 ? 1 : bytes, stream_);
  if (status != cudaSuccess) {
    cudaGetLastError();
    char text[200];
    std::snprintf(text, sizeof text,
                  "CUDA backend: cannot allocate %zu bytes (%.1f MiB) of device memory: ", bytes,
                  static_cast<double>(bytes) / (1024.0 * 1024.0));
    throw Error(std::string(text) + cudaGetErrorString(status) + "; try a smaller batch");
  }
  return pointer;
}

void CudaBackend::deallocate(void* pointer) noexcept {
  // A failed free must not surface as the next launch's error.
  if (pointer && cudaFreeAsync(pointer, stream_) != cudaSuccess) cudaGetLastError();
}

void CudaBackend::copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) {
  CROSSCODER_CUDA_CHECK(
      cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
  CROSSCODER_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) {
  CROSSCODER_CUDA_CHECK(
      cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, stream_));
  CROSSCODER_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_on_device(void* device_dst, const void* device_src, std::size_t bytes) {
  CROSSCODER_CUDA_CHECK(
      cudaMemcpyAsync(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::fill_zero(void* device_dst, std::size_t bytes) {
  CROSSCODER_CUDA_CHECK(cudaMemsetAsync(device_dst, 0, bytes, stream_));
}

void CudaBackend::synchronize() { CROSSCODER_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

template <typename T>
DeviceArray<T> CudaBackend::scratch(std::int64_t count, const char* what) {
  try {
    return DeviceArray<T>(shared_from_this(), static_cast<std::size_t>(count));
  } catch (const Error& error) {
    throw Error(std::string(error.what()) + " (for " + what + ")");
  }
}

template <typename T>
T CudaBackend::read_one(const T* device) {
  T host{};
  copy_to_host(&host, device, sizeof(T));
  return host;
}

// ---- Dense operations -----------------------------------------------------------------------

void CudaBackend::normalise(const float* x, std::int64_t rows, int sources, int width,
                            const float* scale, const float* mean, float* xn) {
  const std::int64_t n = rows * sources * static_cast<std::int64_t>(width);
  if (n == 0) return;
  CROSSCODER_LAUNCH(normalise_kernel, elementwise_grid(n), dim3(kThreads), 0, stream_, x, n,
                    sources, width, scale, mean, xn);
}

void CudaBackend::denormalise(const float* xn, std::int64_t rows, int sources, int width,
                              const float* scale, const float* mean, float* x) {
  const std::int64_t n = rows * sources * static_cast<std::int64_t>(width);
  if (n == 0) return;
  CROSSCODER_LAUNCH(denormalise_kernel, elementwise_grid(n), dim3(kThreads), 0, stream_, xn, n,
                    sources, width, scale, mean, x);
}

void CudaBackend::encode(const float* xn, std::int64_t rows, std::int64_t input_width,
                         const float* encoder, const float* bias, std::int64_t latents,
                         bool rectify, float* pre) {
  gemm_->run(xn, rows, input_width, encoder, bias, latents, rectify, pre, precision_);
}

void CudaBackend::squared_error(const float* recon, const float* target, std::int64_t rows,
                                int sources, int width, float gradient_scale, float* grad,
                                double* sse) {
  std::fill(sse, sse + sources, 0.0);
  if (rows == 0 || sources == 0) return;
  DeviceArray<double> partial = scratch<double>(rows * sources, "the squared error per row");
  DeviceArray<double> totals = scratch<double>(sources, "the squared error per source");
  CROSSCODER_LAUNCH(squared_error_rows, grid_of(rows), dim3(kThreads), 0, stream_, recon, target,
                    sources, width, gradient_scale, grad, partial.data());
  CROSSCODER_LAUNCH(sum_rows_of_columns, grid_of(sources), dim3(kThreads), 0, stream_,
                    partial.data(), rows, static_cast<std::int64_t>(sources), totals.data());
  copy_to_host(sse, totals.data(), static_cast<std::size_t>(sources) * sizeof(double));
}

void CudaBackend::decoder_norms(const float* decoder, std::int64_t latents, int sources, int width,
                                float* norms) {
  if (latents == 0) return;
  CROSSCODER_LAUNCH(decoder_norms_kernel, grid_of(latents), dim3(kThreads), 0, stream_, decoder,
                    sources, width, norms);
}

void CudaBackend::add_scaled_blocks(const float* source, const float* factor, std::int64_t latents,
                                    int sources, int width, float* target) {
  if (latents == 0) return;
  CROSSCODER_LAUNCH(add_scaled_blocks_kernel, grid_of(latents), dim3(kThreads), 0, stream_, source,
                    factor, sources, width, target);
}

void CudaBackend::column_sums(const float* x, std::int64_t rows, std::int64_t width, double* sums) {
  std::fill(sums, sums + width, 0.0);
  if (rows == 0 || width == 0) return;
  const std::int64_t blocks = ceil_div(rows, kColumnSumRows);
  const std::int64_t tiles = ceil_div(width, kThreads);
  if (tiles > 65535) throw Error("column_sums: width " + std::to_string(width) + " is too wide");
  DeviceArray<double> partial = scratch<double>(blocks * width, "column sums");
  DeviceArray<double> totals = scratch<double>(width, "column sums");
  CROSSCODER_LAUNCH(column_sums_by_block, dim3(grid_of(blocks).x, static_cast<unsigned>(tiles)),
                    dim3(kThreads), 0, stream_, x, rows, width, partial.data());
  CROSSCODER_LAUNCH(add_column_blocks, dim3(static_cast<unsigned>(tiles)), dim3(kThreads), 0,
                    stream_, partial.data(), blocks, width, totals.data());
  copy_to_host(sums, totals.data(), static_cast<std::size_t>(width) * sizeof(double));
}

void CudaBackend::clamp_min(float* x, std::int64_t n, float lower) {
  if (n == 0) return;
  CROSSCODER_LAUNCH(clamp_min_kernel, elementwise_grid(n), dim3(kThreads), 0, stream_, x, n, lower);
}

double CudaBackend::sum_of_squares(const float* x, std::int64_t n) {
  if (n == 0) return 0.0;
  const std::int64_t blocks = ceil_div(n, kSquaresPerBlock);
  DeviceArray<double> partial = scratch<double>(blocks, "a sum of squares");
  DeviceArray<double> total = scratch<double>(1, "a sum of squares");
  CROSSCODER_LAUNCH(sum_of_squares_by_block, grid_of(blocks), dim3(kThreads), 0, stream_, x, n,
                    partial.data());
  CROSSCODER_LAUNCH(sum_rows_of_columns, dim3(1), dim3(kThreads), 0, stream_, partial.data(),
                    blocks, std::int64_t{1}, total.data());
  return read_one(total.data());
}

double CudaBackend::constrained_sum_of_squares(const float* gradient, const float* parameter,
                                               std::int64_t n, const RowConstraint& constraint) {
  const std::int64_t rows =
      detail::check_row_constraint(constraint, n, "constrained_sum_of_squares");
  if (rows == 0) return sum_of_squares(gradient, n);
  DeviceArray<double> partial = scratch<double>(rows, "a constrained sum of squares");
  DeviceArray<double> total = scratch<double>(1, "a constrained sum of squares");
  CROSSCODER_LAUNCH(constrained_squares_rows, grid_of(rows), dim3(kThreads), 0, stream_, constraint,
                    gradient, parameter, partial.data());
  CROSSCODER_LAUNCH(sum_rows_of_columns, dim3(1), dim3(kThreads), 0, stream_, partial.data(), rows,
                    std::int64_t{1}, total.data());
  return read_one(total.data());
}

void CudaBackend::adam_update(float* parameter, const float* gradient, float* m, float* v,
                              std::int64_t n, const AdamStep& step) {
  const std::int64_t rows = detail::check_row_constraint(step.rows, n, "adam_update");
  const detail::AdamCorrections corrections = detail::adam_corrections(step);
  const AdamScalars scalars{step.beta1,
                            step.beta2,
                            step.epsilon,
                            step.gradient_scale,
                            corrections.step_size,
                            corrections.root_correction2};
  if (n == 0) return;
  if (rows == 0) {
    CROSSCODER_LAUNCH(adam_kernel, elementwise_grid(n), dim3(kThreads), 0, stream_, scalars,
                      parameter, gradient, m, v, n);
  } else {
    CROSSCODER_LAUNCH(adam_rows_kernel, grid_of(rows), dim3(kThreads), 0, stream_, scalars,
                      step.rows, parameter, gradient, m, v);
  }
}

// ---- Selection ------------------------------------------------------------------------------

SparseCodes CudaBackend::select(const float* pre, std::int64_t rows, std::int64_t latents,
                                const SelectionRequest& request, float* min_selected_score) {
  if (min_selected_score) *min_selected_score = -1.0f;
  detail::check_selection_request(request);
  switch (request.selection) {
    case Selection::per_row_top_k:
      return select_row_top_k(pre, rows, latents, request);
    case Selection::per_batch_top_k:
      return select_batch_top_k(pre, rows, latents, request, min_selected_score);
    case Selection::positive:
    case Selection::batch_threshold:
    case Selection::jump_threshold:
    case Selection::near_threshold:
      return select_elementwise(pre, rows, latents, request);
  }
  throw Error("select: unknown selection");
}

namespace {

SparseCodes empty_rows(const std::shared_ptr<Backend>& backend, std::int64_t rows) {
  SparseCodes codes;
  codes.rows = rows;
  codes.row_ptr = DeviceArray<std::int64_t>(backend, static_cast<std::size_t>(rows + 1));
  codes.row_ptr.zero();
  codes.latent = DeviceArray<std::int32_t>(backend, 0);
  codes.value = DeviceArray<float>(backend, 0);
  return codes;
}

}  // namespace

SparseCodes CudaBackend::codes_with_counts(const std::int64_t* counts, std::int64_t rows,
                                           std::int64_t expected, const char* what) {
  SparseCodes codes;
  codes.rows = rows;
  codes.row_ptr = scratch<std::int64_t>(rows + 1, "the codes' row offsets");
  counts_to_offsets(counts, rows, codes.row_ptr.data(), *workspace_, stream_);
  codes.nnz = read_one(codes.row_ptr.data() + rows);
  if (codes.nnz != expected)
    throw Error(std::string(what) + " (CUDA): selected " + std::to_string(codes.nnz) +
                " entries instead of " + std::to_string(expected) + "; please report this");
  codes.latent = scratch<std::int32_t>(codes.nnz, "the codes' latents");
  codes.value = scratch<float>(codes.nnz, "the codes' values");
  return codes;
}

SparseCodes CudaBackend::select_elementwise(const float* pre, std::int64_t rows,
                                            std::int64_t latents, const SelectionRequest& request) {
  if (rows == 0) return empty_rows(shared_from_this(), 0);
  const ElementwiseRule rule{request.selection,        request.weight,    request.threshold,
                             request.scalar_threshold, request.bandwidth, request.allowed};
  DeviceArray<std::int64_t> counts = scratch<std::int64_t>(rows, "the selection's row counts");
  SparseCodes codes;
  codes.rows = rows;
  codes.row_ptr = scratch<std::int64_t>(rows + 1, "the codes' row offsets");
  CROSSCODER_LAUNCH(count_elementwise, grid_of(rows), dim3(kThreads), 0, stream_, pre, latents,
                    rule, counts.data());
  counts_to_offsets(counts.data(), rows, codes.row_ptr.data(), *workspace_, stream_);
  codes.nnz = read_one(codes.row_ptr.data() + rows);
  codes.latent = scratch<std::int32_t>(codes.nnz, "the codes' latents");
  codes.value = scratch<float>(codes.nnz, "the codes' values");
  CROSSCODER_LAUNCH(write_elementwise, grid_of(rows), dim3(kThreads), 0, stream_, pre, latents,
                    rule, codes.row_ptr.data(), codes.latent.data(), codes.value.data());
  return codes;
}

void CudaBackend::finish_ranked_rows(SparseCodes& codes, const unsigned long long* keys,
                                     const float* values) {
  DeviceArray<unsigned long long> sorted =
      scratch<unsigned long long>(codes.nnz, "sorted selection keys");
  sort_segments_descending(keys, sorted.data(), values, codes.value.data(), codes.nnz, codes.rows,
                           codes.row_ptr.data(), *workspace_, stream_);
  if (codes.nnz > 0) {
    CROSSCODER_LAUNCH(unpack_rank_keys, elementwise_grid(codes.nnz), dim3(kThreads), 0, stream_,
                      sorted.data(), codes.nnz, codes.latent.data());
  }
}

SparseCodes CudaBackend::select_row_top_k(const float* pre, std::int64_t rows, std::int64_t latents,
                                          const SelectionRequest& request) {
  if (rows == 0) return empty_rows(shared_from_this(), 0);
  const RowTopKScores scores{pre, latents, request.k, request.allowed, request.positive_only};
  SparseCodes codes;
  codes.rows = rows;
  codes.row_ptr = scratch<std::int64_t>(rows + 1, "the codes' row offsets");
  if (request.allowed || request.positive_only) {
    DeviceArray<std::int64_t> counts = scratch<std::int64_t>(rows, "the selection's row counts");
    CROSSCODER_LAUNCH(count_row_top_k, grid_of(rows), dim3(kThreads), 0, stream_, scores,
                      counts.data());
    counts_to_offsets(counts.data(), rows, codes.row_ptr.data(), *workspace_, stream_);
    codes.nnz = read_one(codes.row_ptr.data() + rows);
  } else {
    const std::int64_t per_row = std::min(request.k, latents);
    CROSSCODER_LAUNCH(fill_uniform_row_ptr, elementwise_grid(rows + 1), dim3(kThreads), 0, stream_,
                      rows, per_row, codes.row_ptr.data());
    codes.nnz = rows * per_row;
  }
  codes.latent = scratch<std::int32_t>(codes.nnz, "the codes' latents");
  codes.value = scratch<float>(codes.nnz, "the codes' values");
  if (codes.nnz == 0) return codes;
  DeviceArray<unsigned long long> keys = scratch<unsigned long long>(codes.nnz, "selection keys");
  DeviceArray<float> values = scratch<float>(codes.nnz, "selected values");
  CROSSCODER_LAUNCH(::crosscoder::CROSSCODER_CUDA_NS::select_row_top_k, grid_of(rows),
                    dim3(kThreads), 0, stream_, scores, codes.row_ptr.data(), keys.data(),
                    values.data());
  finish_ranked_rows(codes, keys.data(), values.data());
  return codes;
}

SparseCodes CudaBackend::select_batch_top_k(const float* pre, std::int64_t rows,
                                            std::int64_t latents, const SelectionRequest& request,
                                            float* min_selected_score) {
  if (rows == 0 || latents == 0) return empty_rows(shared_from_this(), rows);
  const std::int64_t wanted = std::min(request.k * rows, rows * latents);
  const BatchTopKScores scores{pre, latents, request.weight};

  BatchSelectState initial{0u, 0u, static_cast<unsigned long long>(wanted), 0xFFFFFFFFu};
  DeviceArray<BatchSelectState> state = scratch<BatchSelectState>(1, "the BatchTopK state");
  copy_to_device(state.data(), &initial, sizeof initial);
  DeviceArray<unsigned long long> histograms =
      scratch<unsigned long long>(kRadixPasses * kMaxRadixBins, "the BatchTopK histograms");
  histograms.zero();
  for (int pass = 0; pass < kRadixPasses; ++pass) {
    unsigned long long* histogram = histograms.data() + pass * kMaxRadixBins;
    CROSSCODER_LAUNCH(batch_histogram, grid_of(rows), dim3(kThreads), 0, stream_, scores,
                      state.data(), pass, histogram);
    CROSSCODER_LAUNCH(batch_choose_digit, dim3(1), dim3(kThreads), 0, stream_, histogram, pass,
                      state.data());
  }

  DeviceArray<std::int64_t> above = scratch<std::int64_t>(rows, "BatchTopK row counts");
  DeviceArray<std::int64_t> ties = scratch<std::int64_t>(rows, "BatchTopK row counts");
  DeviceArray<std::int64_t> tie_offsets = scratch<std::int64_t>(rows + 1, "BatchTopK tie offsets");
  DeviceArray<std::int64_t> ties_taken = scratch<std::int64_t>(rows, "BatchTopK ties");
  DeviceArray<std::int64_t> counts = scratch<std::int64_t>(rows, "BatchTopK row counts");
  CROSSCODER_LAUNCH(batch_row_counts, grid_of(rows), dim3(kThreads), 0, stream_, scores,
                    state.data(), above.data(), ties.data());
  counts_to_offsets(ties.data(), rows, tie_offsets.data(), *workspace_, stream_);
  CROSSCODER_LAUNCH(batch_row_take, elementwise_grid(rows), dim3(kThreads), 0, stream_, rows,
                    state.data(), above.data(), tie_offsets.data(), ties_taken.data(),
                    counts.data());

  SparseCodes codes = codes_with_counts(counts.data(), rows, wanted, "BatchTopK selection");
  DeviceArray<unsigned long long> keys = scratch<unsigned long long>(codes.nnz, "selection keys");
  DeviceArray<float> values = scratch<float>(codes.nnz, "selected values");
  CROSSCODER_LAUNCH(write_batch_selection, grid_of(rows), dim3(kThreads), 0, stream_, scores,
                    state.data(), codes.row_ptr.data(), ties.data(), ties_taken.data(), keys.data(),
                    values.data());
  finish_ranked_rows(codes, keys.data(), values.data());
  if (min_selected_score) {
    const BatchSelectState final_state = read_one(state.data());
    if (final_state.min_positive_key != 0xFFFFFFFFu)
      *min_selected_score = std::bit_cast<float>(final_state.min_positive_key);
  }
  return codes;
}

SparseCodes CudaBackend::select_top_entries(const SparseCodes& codes, std::int64_t count,
                                            const float* weight, float* min_selected_score) {
  if (min_selected_score) *min_selected_score = -1.0f;
  const std::int64_t rows = codes.rows, nnz = codes.nnz;
  const std::int64_t wanted = std::clamp<std::int64_t>(count, 0, nnz);
  if (rows == 0 || wanted == 0) return empty_rows(shared_from_this(), rows);
  DeviceArray<std::int32_t> keys = scratch<std::int32_t>(nnz, "the entries' score keys");
  DeviceArray<std::int32_t> sorted_keys = scratch<std::int32_t>(nnz, "the entries' score keys");
  DeviceArray<std::int64_t> index = scratch<std::int64_t>(nnz, "the entries' indices");
  DeviceArray<std::int64_t> sorted_index = scratch<std::int64_t>(nnz, "the entries' indices");
  CROSSCODER_LAUNCH(entry_descending_keys, elementwise_grid(nnz), dim3(kThreads), 0, stream_,
                    codes.value.data(), codes.latent.data(), weight, nnz, keys.data(),
                    index.data());
  stable_sort_by_key(keys.data(), sorted_keys.data(), index.data(), sorted_index.data(), nnz, 31,
                     *workspace_, stream_);
  DeviceArray<std::uint8_t> selected = scratch<std::uint8_t>(nnz, "the selected entries");
  selected.zero();
  DeviceArray<unsigned> min_key = scratch<unsigned>(1, "the smallest selected score");
  const unsigned none = 0xFFFFFFFFu;
  copy_to_device(min_key.data(), &none, sizeof none);
  CROSSCODER_LAUNCH(mark_first_entries, elementwise_grid(wanted), dim3(kThreads), 0, stream_,
                    sorted_index.data(), sorted_keys.data(), wanted, selected.data(),
                    min_key.data());
  DeviceArray<std::int64_t> counts = scratch<std::int64_t>(rows, "the selection's row counts");
  CROSSCODER_LAUNCH(count_marked_entries, grid_of(rows), dim3(kThreads), 0, stream_,
                    codes.row_ptr.data(), selected.data(), counts.data());
  SparseCodes out = codes_with_counts(counts.data(), rows, wanted, "select_top_entries");
  CROSSCODER_LAUNCH(compact_marked_entries, grid_of(rows), dim3(kThreads), 0, stream_,
                    codes.row_ptr.data(), selected.data(), codes.latent.data(), codes.value.data(),
                    out.row_ptr.data(), out.latent.data(), out.value.data());
  if (min_selected_score) {
    const unsigned smallest = read_one(min_key.data());
    if (smallest != none) *min_selected_score = std::bit_cast<float>(smallest);
  }
  return out;
}

// ---- The sparse decoder and the backward passes ---------------------------------------------

struct CudaBackend::LatentGroups {
  DeviceArray<std::int64_t> entry_row;  // [nnz] by CSR entry
  DeviceArray<std::int64_t> entry;      // [nnz] CSR entries sorted by latent
  DeviceArray<std::int32_t> group_latent;
  DeviceArray<std::int64_t> group_begin;
  std::int64_t groups = 0;

  LatentGroupsView view() const {
    return LatentGroupsView{group_latent.data(), group_begin.data(), entry.data(),
                            entry_row.data()};
  }
};

CudaBackend::LatentGroups CudaBackend::group_by_latent(const SparseCodes& codes) {
  LatentGroups grouped;
  const std::int64_t nnz = codes.nnz;
  if (nnz == 0 || codes.rows == 0) return grouped;
  grouped.entry_row = scratch<std::int64_t>(nnz, "the entries' rows");
  DeviceArray<std::int64_t> index = scratch<std::int64_t>(nnz, "the entries' indices");
  CROSSCODER_LAUNCH(label_entries, grid_of(codes.rows), dim3(kThreads), 0, stream_,
                    codes.row_ptr.data(), grouped.entry_row.data(), index.data());
  DeviceArray<std::int32_t> sorted_latent = scratch<std::int32_t>(nnz, "the entries by latent");
  grouped.entry = scratch<std::int64_t>(nnz, "the entries by latent");
  stable_sort_by_key(codes.latent.data(), sorted_latent.data(), index.data(), grouped.entry.data(),
                     nnz, 31, *workspace_, stream_);
  grouped.group_latent = scratch<std::int32_t>(nnz, "the latent groups");
  DeviceArray<std::int64_t> lengths = scratch<std::int64_t>(nnz, "the latent groups");
  grouped.groups = run_lengths(sorted_latent.data(), nnz, grouped.group_latent.data(),
                               lengths.data(), *workspace_, stream_);
  grouped.group_begin = scratch<std::int64_t>(grouped.groups + 1, "the latent groups");
  counts_to_offsets(lengths.data(), grouped.groups, grouped.group_begin.data(), *workspace_,
                    stream_);
  return grouped;
}

void CudaBackend::decode(const SparseCodes& codes, const float* decoder, const float* bias,
                         std::int64_t output_width, float* out) {
  if (codes.rows == 0 || output_width == 0) return;
  CROSSCODER_LAUNCH(sparse_decode, grid_of(codes.rows), dim3(kThreads), 0, stream_,
                    codes.row_ptr.data(), codes.latent.data(), codes.value.data(), decoder, bias,
                    output_width, out);
}

void CudaBackend::reconstruct(const SparseCodes& codes, const ReconstructionRequest& r) {
  const int M = r.sources;
  std::fill(r.squared_error, r.squared_error + M, 0.0);
  if (r.target_energy) std::fill(r.target_energy, r.target_energy + M, 0.0);
  const std::int64_t rows = codes.rows;
  if (rows == 0 || M == 0 || r.width == 0) return;
  DeviceArray<double> partial = scratch<double>(rows * M, "the squared error per row");
  DeviceArray<double> partial_energy =
      scratch<double>(r.target_energy ? rows * M : 0, "the target energy per row");
  DeviceArray<double> totals = scratch<double>(2 * M, "the squared error per source");
  const ReconstructArgs args{codes.row_ptr.data(),
                             codes.latent.data(),
                             codes.value.data(),
                             r.decoder,
                             r.bias,
                             r.target,
                             M,
                             r.width,
                             r.gradient_scale,
                             r.recon,
                             r.grad,
                             partial.data(),
                             r.target_energy ? partial_energy.data() : nullptr};
  CROSSCODER_LAUNCH(sparse_reconstruct, grid_of(rows), dim3(kThreads), 0, stream_, args);
  CROSSCODER_LAUNCH(sum_rows_of_columns, grid_of(M), dim3(kThreads), 0, stream_, partial.data(),
                    rows, static_cast<std::int64_t>(M), totals.data());
  if (r.target_energy) {
    CROSSCODER_LAUNCH(sum_rows_of_columns, grid_of(M), dim3(kThreads), 0, stream_,
                      partial_energy.data(), rows, static_cast<std::int64_t>(M), totals.data() + M);
  }
  // Only the totals computed: the energy half is written only when it was asked for.
  std::vector<double> host(static_cast<std::size_t>(r.target_energy ? 2 * M : M));
  copy_to_host(host.data(), totals.data(), host.size() * sizeof(double));
  std::copy(host.begin(), host.begin() + M, r.squared_error);
  if (r.target_energy) std::copy(host.begin() + M, host.end(), r.target_energy);
}

void CudaBackend::sparse_backward(const SparseCodes& codes, const SparseBackwardRequest& r) {
  const std::int64_t F = r.latents, W = r.width;
  detail::check_row_statistics(r);
  const LatentGroups grouped = group_by_latent(codes);
  if (grouped.groups > 0) {
    const std::int32_t largest = read_one(grouped.group_latent.data() + grouped.groups - 1);
    if (largest >= F)
      throw Error("sparse_backward: the codes name latent " + std::to_string(largest) + " of " +
                  std::to_string(F));
  }
  if (grouped.groups == 0 || F == 0) {
    if (!r.accumulate && F > 0) {
      const auto bytes = static_cast<std::size_t>(F * W) * sizeof(float);
      fill_zero(r.d_encoder, bytes);
      if (r.d_decoder) fill_zero(r.d_decoder, bytes);
      fill_zero(r.d_bias, static_cast<std::size_t>(F) * sizeof(float));
      if (r.row_statistics)
        fill_zero(r.row_statistics,
                  static_cast<std::size_t>(F * r.statistics_blocks * 4) * sizeof(double));
    }
    return;
  }
  DeviceArray<float> d_pre = scratch<float>(codes.nnz, "the gradient of the pre-activations");
  DeviceArray<std::int64_t> group_of_latent =
      scratch<std::int64_t>(r.accumulate ? 0 : F, "the latents' groups");
  if (!r.accumulate) {
    // Every byte 0xFF: −1, "no group", for the latents the scatter does not reach.
    CROSSCODER_CUDA_CHECK(cudaMemsetAsync(
        group_of_latent.data(), 0xFF, static_cast<std::size_t>(F) * sizeof(std::int64_t), stream_));
    CROSSCODER_LAUNCH(scatter_group_index, elementwise_grid(grouped.groups), dim3(kThreads), 0,
                      stream_, grouped.group_latent.data(), grouped.groups, group_of_latent.data());
  }
  const SparseBackwardArgs args{grouped.view(),
                                r.accumulate ? nullptr : group_of_latent.data(),
                                codes.value.data(),
                                r.grad_out,
                                r.decoder,
                                r.xn,
                                W,
                                r.value_gradient_offset,
                                r.accumulate,
                                r.d_decoder,
                                r.d_encoder,
                                r.d_bias,
                                r.d_value,
                                d_pre.data(),
                                r.row_statistics,
                                r.statistics_blocks};
  CROSSCODER_LAUNCH(sparse_backward_kernel, grid_of(r.accumulate ? grouped.groups : F),
                    dim3(kThreads), 0, stream_, args);
}

void CudaBackend::decoder_backward(const SparseCodes& codes, const float* grad_out,
                                   const float* decoder, std::int64_t output_width, float* d_value,
                                   float* d_decoder) {
  const LatentGroups grouped = group_by_latent(codes);
  if (grouped.groups == 0) return;
  CROSSCODER_LAUNCH(sparse_decoder_backward, grid_of(grouped.groups), dim3(kThreads), 0, stream_,
                    grouped.view(), codes.value.data(), grad_out, decoder, output_width, d_value,
                    d_decoder);
}

void CudaBackend::latent_totals(const SparseCodes& codes, std::int64_t latents, float* sums,
                                std::int64_t* counts) {
  std::fill(sums, sums + latents, 0.0f);
  if (counts) std::fill(counts, counts + latents, 0);
  const LatentGroups grouped = group_by_latent(codes);
  if (grouped.groups == 0 || latents == 0) return;
  DeviceArray<float> device_sums = scratch<float>(latents, "per-latent sums");
  DeviceArray<std::int64_t> device_counts = scratch<std::int64_t>(latents, "per-latent counts");
  device_sums.zero();
  device_counts.zero();
  CROSSCODER_LAUNCH(group_totals, elementwise_grid(grouped.groups), dim3(kThreads), 0, stream_,
                    grouped.view(), grouped.groups, codes.value.data(), device_sums.data(),
                    device_counts.data());
  copy_to_host(sums, device_sums.data(), static_cast<std::size_t>(latents) * sizeof(float));
  if (counts)
    copy_to_host(counts, device_counts.data(),
                 static_cast<std::size_t>(latents) * sizeof(std::int64_t));
}

// ---- Entry points (the GPU build only) ------------------------------------------------------

#if !defined(CROSSCODER_CUDA_EMULATION)
}  // namespace crosscoder::CROSSCODER_CUDA_NS

namespace crosscoder {

bool built_with_cuda() noexcept { return true; }

namespace detail {

BackendInfo probe_cuda_backend() {
  BackendInfo info;
  info.kind = BackendKind::cuda;
  info.built = true;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    info.reason = std::string("no usable CUDA device: ") + cudaGetErrorString(status) + " (" +
                  cudaGetErrorName(status) + ")";
    return info;
  }
  if (count == 0) {
    info.reason = "no usable CUDA device: the driver reports no devices";
    return info;
  }
  cudaDeviceProp properties{};
  if (const cudaError_t error = cudaGetDeviceProperties(&properties, 0); error != cudaSuccess) {
    cudaGetLastError();
    info.reason = std::string("CUDA device 0 cannot be queried: ") + cudaGetErrorString(error);
    return info;
  }
  const std::string description = cuda_device::describe_device(0);
  if (properties.major * 10 + properties.minor < CROSSCODER_CUDA_MIN_ARCH) {
    info.reason = "CUDA device 0 (" + description +
                  ") is older than the oldest architecture this library was compiled for (sm_" +
                  std::to_string(CROSSCODER_CUDA_MIN_ARCH) +
                  "); rebuild with -DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(properties.major) +
                  std::to_string(properties.minor);
    return info;
  }
  info.usable = true;
  info.device = description;
  return info;
}

std::shared_ptr<Backend> make_cuda_backend() {
  const BackendInfo info = probe_cuda_backend();
  if (!info.usable) throw Error("CUDA backend unavailable: " + info.reason);
  return std::make_shared<cuda_device::CudaBackend>(0);
}

}  // namespace detail
}  // namespace crosscoder
#else
std::shared_ptr<Backend> make_emulated_cuda_backend() { return std::make_shared<CudaBackend>(0); }
}  // namespace crosscoder::CROSSCODER_CUDA_NS
#endif
