#include "backends/cpu/cpu_backend.hpp"

#include <omp.h>

#include <fmt/format.h>
#include <Eigen/Core>
#if CROSSCODER_WITH_OPENBLAS
#include <cblas.h>
#endif
#include <cstdlib>
#include <cstring>
#include <new>

#include "crosscoder/error.hpp"

namespace crosscoder::detail {

namespace {
constexpr std::size_t kAlignment = 64;  // a cache line; also enough for AVX-512 loads
}

CpuBackend::CpuBackend() = default;

std::string CpuBackend::describe() const {
#if CROSSCODER_WITH_OPENBLAS
  const std::string gemm = fmt::format("OpenBLAS {} GEMM, ", openblas_get_corename());
#else
  const std::string gemm;
#endif
  return fmt::format("CPU ({} threads, {}Eigen {}.{}.{})", omp_get_max_threads(), gemm,
                     EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION);
}

void* CpuBackend::allocate(std::size_t bytes) {
  const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* pointer = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  if (pointer == nullptr) {
    throw Error(fmt::format("CPU backend: out of memory allocating {} bytes ({:.1f} MiB)", bytes,
                            static_cast<double>(bytes) / (1024.0 * 1024.0)));
  }
  return pointer;
}

void CpuBackend::deallocate(void* pointer) noexcept { std::free(pointer); }

void CpuBackend::copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) {
  if (bytes > 0) std::memcpy(device_dst, host_src, bytes);
}
void CpuBackend::copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) {
  if (bytes > 0) std::memcpy(host_dst, device_src, bytes);
}
void CpuBackend::copy_on_device(void* device_dst, const void* device_src, std::size_t bytes) {
  if (bytes > 0) std::memmove(device_dst, device_src, bytes);
}
void CpuBackend::fill_zero(void* device_dst, std::size_t bytes) {
  if (bytes > 0) std::memset(device_dst, 0, bytes);
}

std::shared_ptr<Backend> make_cpu_backend() { return std::make_shared<CpuBackend>(); }

}  // namespace crosscoder::detail
