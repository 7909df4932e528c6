#pragma once
/// @file error.hpp
/// The exception types the library throws: Error, and Cancelled for work stopped on request.

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

/// Long work (a diff pass, training) stopped because its caller's stop hook asked it to. Derives
/// from Error so that one handler catches both; catch it first to tell a stop from a failure.
class Cancelled : public Error {
 public:
  explicit Cancelled(const std::string& message) : Error(message) {}
};

}  // namespace crosscoder
