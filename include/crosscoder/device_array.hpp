#pragma once
/// @file device_array.hpp
/// A typed, owning, move-only array in one backend's memory.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "crosscoder/backend.hpp"
#include "crosscoder/error.hpp"

namespace crosscoder {

/// `size()` elements of T in `backend`'s memory (device memory on CUDA, host memory on
/// the CPU). Keeps its backend alive. Contents are uninitialised until written.
template <typename T>
class DeviceArray {
  static_assert(std::is_trivially_copyable_v<T>, "DeviceArray holds plain numbers");

 public:
  DeviceArray() = default;
  /// Allocates `count` elements. @throws Error when the backend is out of memory.
  DeviceArray(std::shared_ptr<Backend> backend, std::size_t count)
      : backend_(std::move(backend)), size_(count) {
    if (!backend_) throw Error("DeviceArray: no backend given");
    if (size_ > 0) data_ = static_cast<T*>(backend_->allocate(size_ * sizeof(T)));
  }
  /// Allocates and uploads `host`.
  DeviceArray(std::shared_ptr<Backend> backend, std::span<const T> host)
      : DeviceArray(std::move(backend), host.size()) {
    upload(host);
  }
  ~DeviceArray() { reset(); }
  DeviceArray(DeviceArray&& other) noexcept { swap(other); }
  DeviceArray& operator=(DeviceArray&& other) noexcept {
    if (this != &other) {
      reset();
      swap(other);
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  Backend& backend() const noexcept { return *backend_; }

  /// Copies `host` (exactly size() elements) into the array.
  void upload(std::span<const T> host) {
    if (host.size() != size_) {
      throw Error("DeviceArray::upload: " + std::to_string(host.size()) +
                  " elements given for an array of " + std::to_string(size_));
    }
    if (size_ > 0) backend_->copy_to_device(data_, host.data(), size_ * sizeof(T));
  }
  /// Copies the array to a new host vector.
  std::vector<T> download() const {
    std::vector<T> host(size_);
    if (size_ > 0) backend_->copy_to_host(host.data(), data_, size_ * sizeof(T));
    return host;
  }
  /// Sets every element to zero bits.
  void zero() {
    if (size_ > 0) backend_->fill_zero(data_, size_ * sizeof(T));
  }

 private:
  void reset() noexcept {
    if (backend_ && data_) backend_->deallocate(data_);
    data_ = nullptr;
    size_ = 0;
  }
  void swap(DeviceArray& other) noexcept {
    std::swap(backend_, other.backend_);
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
  }

  std::shared_ptr<Backend> backend_;
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace crosscoder
