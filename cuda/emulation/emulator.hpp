#pragma once
// A host emulator for the CUDA backend's kernels, so that their indexing, synchronisation and
// arithmetic are tested on machines without a GPU (CI). It is a test harness, not a backend:
//  - each block's threads are fibers that run in turn up to their next __syncthreads(), the
//    only place they switch (in reverse order in every other block, so that a shared-memory
//    race changes a result); a barrier some threads skip aborts with a message;
//  - the blocks of a grid run one after another, so a kernel's __shared__ arrays (static
//    variables here) belong to one block at a time;
//  - device memory is host memory, streams are ignored and every call completes at once.
// It says nothing about speed, occupancy or the GPU's memory model; the parity tests on a GPU
// host do.

#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <tuple>
#include <vector>

#include "crosscoder/error.hpp"

namespace crosscoder::emulation {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr Dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/// The running launch: its shape, the CUDA thread now running and its dynamic shared memory.
struct Launch {
  Dim3 grid, block;
  Dim3 thread, block_index;
  std::vector<std::max_align_t> dynamic_shared;
};

inline Launch& current_launch() {
  static Launch launch;
  return launch;
}

/// __syncthreads(): every CUDA thread of the block runs up to here before any goes on.
void sync_threads();

/// Runs body(context) as every thread of every block of `launch`'s grid (emulator.cpp). Each
/// CUDA thread is a fiber with its own stack; the block's fibers run in turn, each up to its
/// next __syncthreads(), the only place they switch. A round in which some threads reach a
/// __syncthreads() while others finish is a divergent barrier (undefined behaviour on a GPU)
/// and aborts with a message.
void run_grid(void (*body)(void*), void* context);

/// Runs kernel(args...) for every thread of every block of the grid; returns when all are done.
template <typename... Params, typename... Args>
void launch(Dim3 grid, Dim3 block, std::size_t shared_bytes, void (*kernel)(Params...),
            Args&&... args) {
  Launch& state = current_launch();
  state.grid = grid;
  state.block = block;
  state.dynamic_shared.assign(shared_bytes / sizeof(std::max_align_t) + 1, std::max_align_t{});
  struct Call {
    void (*kernel)(Params...);
    std::tuple<Params...> params;
  } call{kernel, std::tuple<Params...>(std::forward<Args>(args)...)};
  run_grid(
      [](void* context) {
        Call& c = *static_cast<Call*>(context);
        std::apply(c.kernel, c.params);
      },
      &call);
}

template <typename T>
T atomic_add(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

template <typename T>
T atomic_min(T* address, T value) {
  std::atomic_ref<T> target(*address);
  T seen = target.load();
  while (value < seen && !target.compare_exchange_weak(seen, value)) {
  }
  return seen;
}

}  // namespace crosscoder::emulation

// ---- The CUDA names the backend's sources use ---------------------------------------------
// Kernels are inline, so that a test can include a kernel header beside the backend's own copy.
#define __global__ inline
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define dim3 ::crosscoder::emulation::Dim3
#define threadIdx (::crosscoder::emulation::current_launch().thread)
#define blockIdx (::crosscoder::emulation::current_launch().block_index)
#define blockDim (::crosscoder::emulation::current_launch().block)
#define gridDim (::crosscoder::emulation::current_launch().grid)
#define __syncthreads() ::crosscoder::emulation::sync_threads()

inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return ::crosscoder::emulation::atomic_add(address, value);
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return ::crosscoder::emulation::atomic_add(address, value);
}
inline unsigned atomicMin(unsigned* address, unsigned value) {
  return ::crosscoder::emulation::atomic_min(address, value);
}
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }

/// Dynamic shared memory of the running launch.
#define CROSSCODER_DYNAMIC_SHARED(type, name) \
  type* name =                                \
      reinterpret_cast<type*>(::crosscoder::emulation::current_launch().dynamic_shared.data())

#define CROSSCODER_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                  \
  do {                                                                                     \
    (void)(stream);                                                                        \
    ::crosscoder::emulation::launch((grid), (block), (shared_bytes), kernel, __VA_ARGS__); \
  } while (0)

// ---- The runtime calls the backend makes, on host memory ----------------------------------
using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 };
enum cudaMemcpyKind {
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3
};
inline const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "out of memory";
}
inline const char* cudaGetErrorName(cudaError_t error) {
  return error == cudaSuccess ? "cudaSuccess" : "cudaErrorMemoryAllocation";
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMallocAsync(void** pointer, std::size_t bytes, cudaStream_t) {
  *pointer = bytes > (std::size_t{1} << 40)
                 ? nullptr
                 : ::operator new (bytes, std::align_val_t{256}, std::nothrow);
  return *pointer ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFreeAsync(void* pointer, cudaStream_t) {
  ::operator delete (pointer, std::align_val_t{256});
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind,
                                   cudaStream_t) {
  if (bytes > 0) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t) {
  if (bytes > 0) std::memset(dst, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

#define CROSSCODER_CUDA_CHECK(call)                                                    \
  do {                                                                                 \
    if ((call) != cudaSuccess) throw ::crosscoder::Error("emulated " #call " failed"); \
  } while (0)
#define CROSSCODER_CUDA_CHECK_LAUNCH() \
  do {                                 \
  } while (0)
