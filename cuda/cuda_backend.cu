#include "cuda_backend.hpp"

#include <cstdio>
#include <string>

#include "backends/cuda_entry.hpp"
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
  info.usable = true;
  info.device = describe_device(0);
  return info;
}

std::shared_ptr<Backend> make_cuda_backend() {
  const BackendInfo info = probe_cuda_backend();
  if (!info.usable) throw Error("CUDA backend unavailable: " + info.reason);
  return std::make_shared<CudaBackend>(0);
}

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
