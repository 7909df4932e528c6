// The backend registry: what exists, what is usable, which one to use.
#include "crosscoder/backend.hpp"

#include <fmt/format.h>

#include <mutex>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cuda_entry.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/log.hpp"
#include "enum_names.hpp"

namespace crosscoder {

namespace {

constexpr detail::EnumName<BackendKind> kBackendNames[] = {{BackendKind::cpu, "cpu"},
                                                           {BackendKind::cuda, "cuda"}};
constexpr detail::EnumName<MatmulPrecision> kPrecisionNames[] = {
    {MatmulPrecision::float32, "float32"},
    {MatmulPrecision::tf32, "tf32"},
    {MatmulPrecision::bfloat16, "bf16"},
    {MatmulPrecision::float32, "fp32"},
    {MatmulPrecision::bfloat16, "bfloat16"}};

}  // namespace

std::string_view to_string(BackendKind kind) noexcept {
  return detail::enum_name(kBackendNames, kind);
}

BackendKind parse_backend_kind(std::string_view text) {
  return detail::parse_enum(kBackendNames, text, "backend");
}

std::string_view to_string(MatmulPrecision precision) noexcept {
  return detail::enum_name(kPrecisionNames, precision);
}

MatmulPrecision parse_matmul_precision(std::string_view text) {
  return detail::parse_enum(kPrecisionNames, text, "matmul precision");
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
