#pragma once
// The CPU backend: host memory, Eigen for dense algebra, OpenMP threads.

#include <memory>
#include <string>

#include "crosscoder/backend.hpp"

namespace crosscoder::detail {

class CpuBackend final : public Backend {
 public:
  CpuBackend();

  BackendKind kind() const noexcept override { return BackendKind::cpu; }
  std::string describe() const override;

  void* allocate(std::size_t bytes) override;
  void deallocate(void* pointer) noexcept override;
  void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) override;
  void copy_on_device(void* device_dst, const void* device_src, std::size_t bytes) override;
  void fill_zero(void* device_dst, std::size_t bytes) override;
  void synchronize() override {}
};

std::shared_ptr<Backend> make_cpu_backend();

}  // namespace crosscoder::detail
