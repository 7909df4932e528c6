#pragma once
/// @file error.hpp
/// The single exception type the library throws.

#include <stdexcept>
#include <string>

namespace crosscoder {

/// Every failure the library reports: bad input (naming the file, tensor, shape
/// or flag at fault), unusable backends, CUDA/cuBLAS status codes, I/O errors.
/// Library code never calls abort() or exit(); it throws this instead.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace crosscoder
