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
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "crosscoder/error.hpp"

namespace crosscoder::detail {

namespace {
constexpr std::size_t kAlignment = 64;  // a cache line; also enough for AVX-512 loads
// Arrays from this size on (weights, gradients, moments, pre-activations) are placed on 2 MiB
// boundaries and offered to the kernel's transparent huge pages: the sparse passes read rows
// scattered over 64 MiB, which 4 KiB pages turn into a TLB miss each.
constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kHugeFrom = 2 * kHugePage;
// Large blocks start 1…31 steps of a page and a cache line past a huge page's start.
constexpr std::size_t kColourStep = 4096 + 64;
constexpr std::size_t kColours = 31;
}  // namespace

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
  // Each block keeps its malloc'd base in the word before the address handed out.
  const bool huge = bytes >= kHugeFrom;
  const std::size_t alignment = huge ? kHugePage : kAlignment;
  // Inside 2 MiB pages, arrays that start at the same offset share cache sets all along, which
  // the optimiser's lock-step streams over parameters, gradients and moments then fight over:
  // each large block starts at its own offset.
  const std::size_t offset = huge ? kColourStep * (1 + next_colour_++ % kColours) : kAlignment;
  const std::size_t total = (bytes + offset + alignment - 1) / alignment * alignment;
  auto* base = static_cast<char*>(std::aligned_alloc(alignment, total));
  if (base == nullptr) {
    throw Error(fmt::format("CPU backend: out of memory allocating {} bytes ({:.1f} MiB)", bytes,
                            static_cast<double>(bytes) / (1024.0 * 1024.0)));
  }
#if defined(MADV_HUGEPAGE)
  // Advice only: where the kernel has no huge pages to give, the memory stays as it is.
  if (huge) madvise(base, total, MADV_HUGEPAGE);
#endif
  char* block = base + offset;
  std::memcpy(block - sizeof(void*), &base, sizeof(void*));
  return block;
}

void CpuBackend::deallocate(void* pointer) noexcept {
  if (pointer == nullptr) return;
  void* base = nullptr;
  std::memcpy(&base, static_cast<char*>(pointer) - sizeof(void*), sizeof(void*));
  std::free(base);
}

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
