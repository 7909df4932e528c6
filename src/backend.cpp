// The backend registry: what exists, what is usable, which one to use.
#include "crosscoder/backend.hpp"

#include <fmt/format.h>

#include <mutex>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cuda_entry.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/log.hpp"

namespace crosscoder {

std::string_view to_string(BackendKind kind) noexcept {
  switch (kind) {
    case BackendKind::cpu:
      return "cpu";
    case BackendKind::cuda:
      return "cuda";
  }
  return "unknown";
}

BackendKind parse_backend_kind(std::string_view text) {
  if (text == "cpu") return BackendKind::cpu;
  if (text == "cuda") return BackendKind::cuda;
  throw Error(fmt::format("unknown backend '{}': expected 'cpu' or 'cuda'", text));
}

std::string_view to_string(MatmulPrecision precision) noexcept {
  switch (precision) {
    case MatmulPrecision::float32:
      return "float32";
    case MatmulPrecision::tf32:
      return "tf32";
    case MatmulPrecision::bfloat16:
      return "bf16";
  }
  return "unknown";
}

MatmulPrecision parse_matmul_precision(std::string_view text) {
  if (text == "float32" || text == "fp32") return MatmulPrecision::float32;
  if (text == "tf32") return MatmulPrecision::tf32;
  if (text == "bf16" || text == "bfloat16") return MatmulPrecision::bfloat16;
  throw Error(
      fmt::format("unknown matmul precision '{}': expected 'float32', 'tf32' or 'bf16'", text));
}

std::vector<BackendInfo> available_backends() {
  BackendInfo cpu;
  cpu.kind = BackendKind::cpu;
  cpu.built = true;
  cpu.usable = true;
  cpu.device = detail::CpuBackend().describe();
  return {cpu, detail::probe_cuda_backend()};
}

std::shared_ptr<Backend> make_backend(BackendKind kind) {
  switch (kind) {
    case BackendKind::cpu:
      return detail::make_cpu_backend();
    case BackendKind::cuda:
      return detail::make_cuda_backend();
  }
  throw Error("make_backend: unknown backend kind");
}

std::shared_ptr<Backend> best_backend() {
  const BackendInfo cuda = detail::probe_cuda_backend();
  static std::once_flag logged;
  if (cuda.usable) {
    std::call_once(logged,
                   [&] { log_message(LogLevel::info, "using the CUDA backend: " + cuda.device); });
    return detail::make_cuda_backend();
  }
  std::call_once(logged, [&] {
    log_message(LogLevel::info, "using the CPU backend (CUDA not usable: " + cuda.reason + ")");
  });
  return detail::make_cpu_backend();
}

}  // namespace crosscoder
