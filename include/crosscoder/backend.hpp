#pragma once
/// @file backend.hpp
/// Compute backends, their public face: which kinds exist and whether each is usable here (the
/// registry), and a Backend's identity and device memory. The crosscoder's operations on that
/// memory are in backend_ops.hpp.
///
/// Model code holds its tensors in DeviceArray objects allocated on one backend and calls only
/// virtual operations, so the CPU and CUDA backends are interchangeable and one test suite runs
/// over both.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace crosscoder {

class BackendOps;

/// The kinds of backend this library knows about.
enum class BackendKind { cpu, cuda };

/// "cpu" or "cuda".
std::string_view to_string(BackendKind kind) noexcept;

/// Parses "cpu" or "cuda"; throws Error naming the text otherwise.
BackendKind parse_backend_kind(std::string_view text);

/// The arithmetic of the encoder GEMM, the one dense product of a training step.
enum class MatmulPrecision {
  float32,   ///< float32 operands and accumulation
  tf32,      ///< float32 in memory, TF32 tensor-core products (10-bit mantissa), float32 sums
  bfloat16,  ///< bfloat16 copies of the operands, float32 accumulation; weights stay float32
};

/// "float32", "tf32" or "bf16".
std::string_view to_string(MatmulPrecision precision) noexcept;

/// Parses "float32", "tf32" or "bf16"; throws Error naming the text otherwise.
MatmulPrecision parse_matmul_precision(std::string_view text);

/// What available_backends() says about one backend.
struct BackendInfo {
  BackendKind kind = BackendKind::cpu;
  bool built = false;   ///< compiled into this library
  bool usable = false;  ///< can be created now (device present, driver recent enough, ...)
  std::string reason;   ///< why it is not usable (empty when usable)
  std::string device;   ///< the device's description when usable, e.g. "NVIDIA H100 (80 GiB)"
};

/// A compute backend: a device (the host for the CPU backend), its memory, and on CUDA a stream
/// and a cuBLAS handle. Not thread-safe: use one backend per thread of work.
class Backend {
 public:
  virtual ~Backend() = default;
  Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  /// Which kind of backend this is.
  virtual BackendKind kind() const noexcept = 0;
  /// A human-readable description of the device, e.g. "CPU (2 threads, Eigen 3.4.0)".
  virtual std::string describe() const = 0;
  /// Sets the arithmetic of encode(). The CPU backend always computes in float32, at least as
  /// accurate as any request, and ignores it.
  virtual void set_matmul_precision(MatmulPrecision /*precision*/) {}
  /// The arithmetic encode() uses.
  virtual MatmulPrecision matmul_precision() const noexcept { return MatmulPrecision::float32; }

  /// Allocates `bytes` of device memory, aligned to at least 64 bytes.
  /// @throws Error naming the size when the device is out of memory.
  virtual void* allocate(std::size_t bytes) = 0;
  /// Frees memory from allocate(); nullptr is ignored.
  virtual void deallocate(void* pointer) noexcept = 0;
  /// Copies host memory to device memory. Blocks until done.
  virtual void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) = 0;
  /// Copies device memory to host memory. Blocks until done.
  virtual void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) = 0;
  /// Copies within the device.
  virtual void copy_on_device(void* device_dst, const void* device_src, std::size_t bytes) = 0;
  /// Sets `bytes` of device memory to zero.
  virtual void fill_zero(void* device_dst, std::size_t bytes) = 0;
  /// Waits until all queued work on this backend has finished.
  virtual void synchronize() = 0;

  /// The crosscoder's fused operations on this backend's memory (backend_ops.hpp): what model
  /// and training code calls. A program that only picks a backend and passes it on never needs
  /// them.
  virtual BackendOps& ops() noexcept = 0;
};

/// Every backend this library knows, whether built, and whether usable here (with the reason).
std::vector<BackendInfo> available_backends();

/// Creates a backend of the given kind.
/// @throws Error carrying the reason when that backend is not usable here.
std::shared_ptr<Backend> make_backend(BackendKind kind);

/// The CUDA backend when usable, else the CPU backend. Logs once, at info level, which one
/// was chosen and why CUDA was not. Never throws because CUDA is unusable.
std::shared_ptr<Backend> best_backend();

}  // namespace crosscoder
