#include "cuda_backend.hpp"

#include <cstdio>
#include <string>

#include "backends/cuda_entry.hpp"
#include "crosscoder/sparse_codes.hpp"
#include "crosscoder/version.hpp"
#include "cuda_check.hpp"

namespace crosscoder {

bool built_with_cuda() noexcept { return true; }

namespace detail {
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
    info.reason = std::string("CUDA device 0 cannot be queried: ") + cudaGetErrorString(error);
    return info;
  }
  if (properties.major * 10 + properties.minor < CROSSCODER_CUDA_MIN_ARCH) {
    info.reason = "CUDA device 0 (" + describe_device(0) +
                  ") is older than the oldest architecture "
                  "this library was compiled for (sm_" +
                  std::to_string(CROSSCODER_CUDA_MIN_ARCH) +
                  "); rebuild with -DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(properties.major) +
                  std::to_string(properties.minor);
    return info;
  }
  // The memory operations work, but the crosscoder kernels are not written yet: say so rather
  // than let best_backend() pick a backend that cannot train.
  info.reason = "CUDA device " + describe_device(0) +
                " found, but this build's CUDA backend does not implement the crosscoder "
                "operations yet (they arrive with the CUDA backend issue); use the CPU backend";
  return info;
}

std::shared_ptr<Backend> make_cuda_backend() {
  const BackendInfo info = probe_cuda_backend();
  if (!info.usable) throw Error("CUDA backend unavailable: " + info.reason);
  return std::make_shared<CudaBackend>(0);
}

namespace {
[[noreturn]] void not_implemented(const char* operation) {
  throw Error(std::string("CUDA backend: ") + operation +
              " is not implemented yet; use the CPU backend (--device cpu)");
}
}  // namespace

// clang-format off
void CudaBackend::normalise(const float*, std::int64_t, int, int, const float*, const float*, float*) { not_implemented("normalise"); }
void CudaBackend::denormalise(const float*, std::int64_t, int, int, const float*, const float*, float*) { not_implemented("denormalise"); }
void CudaBackend::encode(const float*, std::int64_t, std::int64_t, const float*, const float*, std::int64_t, float*) { not_implemented("encode"); }
SparseCodes CudaBackend::select(const float*, std::int64_t, std::int64_t, const SelectionRequest&, float*) { not_implemented("select"); }
void CudaBackend::decode(const SparseCodes&, const float*, const float*, std::int64_t, float*) { not_implemented("decode"); }
void CudaBackend::squared_error(const float*, const float*, std::int64_t, int, int, float, float*, double*) { not_implemented("squared_error"); }
void CudaBackend::decoder_backward(const SparseCodes&, const float*, const float*, std::int64_t, float*, float*) { not_implemented("decoder_backward"); }
void CudaBackend::encoder_backward(const SparseCodes&, const float*, const float*, std::int64_t, float*, float*) { not_implemented("encoder_backward"); }
void CudaBackend::latent_totals(const SparseCodes&, std::int64_t, float*, std::int64_t*) { not_implemented("latent_totals"); }
void CudaBackend::decoder_norms(const float*, std::int64_t, int, int, float*) { not_implemented("decoder_norms"); }
void CudaBackend::constrain_decoder(float*, float*, std::int64_t, std::int64_t) { not_implemented("constrain_decoder"); }
void CudaBackend::column_sums(const float*, std::int64_t, std::int64_t, double*) { not_implemented("column_sums"); }
void CudaBackend::clamp_min(float*, std::int64_t, float) { not_implemented("clamp_min"); }
double CudaBackend::sum_of_squares(const float*, std::int64_t) { not_implemented("sum_of_squares"); }
void CudaBackend::adam_update(float*, const float*, float*, float*, std::int64_t, const AdamStep&) { not_implemented("adam_update"); }
// clang-format on

CudaBackend::CudaBackend(int device) : device_(device) {
  CROSSCODER_CUDA_CHECK(cudaSetDevice(device_));
  CROSSCODER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  if (const cublasStatus_t status = cublasCreate(&blas_); status != CUBLAS_STATUS_SUCCESS) {
    cudaStreamDestroy(stream_);
    throw_cublas_error(status, "cublasCreate", __FILE__, __LINE__);
  }
  CROSSCODER_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
  description_ = describe_device(device_);
}

CudaBackend::~CudaBackend() {
  if (blas_) cublasDestroy(blas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void* CudaBackend::allocate(std::size_t bytes) {
  void* pointer = nullptr;
  const cudaError_t status = cudaMallocAsync(&pointer, bytes == 0 ? 1 : bytes, stream_);
  if (status != cudaSuccess) {
    cudaGetLastError();
    char text[160];
    std::snprintf(text, sizeof text, "CUDA backend: cannot allocate %zu bytes (%.1f MiB): ", bytes,
                  static_cast<double>(bytes) / (1024.0 * 1024.0));
    throw Error(std::string(text) + cudaGetErrorString(status) + "; try a smaller batch");
  }
  return pointer;
}

void CudaBackend::deallocate(void* pointer) noexcept {
  if (pointer) cudaFreeAsync(pointer, stream_);
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

}  // namespace detail
}  // namespace crosscoder
