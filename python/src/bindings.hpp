#pragma once
// The pieces of the crosscoder._core extension, one function per area of the public API.

#include <nanobind/nanobind.h>

#include <exception>
#include <functional>
#include <memory>
#include <string>

#include "crosscoder/backend.hpp"
#include "crosscoder/error.hpp"

namespace crosscoder::python {

namespace nb = nanobind;

void bind_errors(nb::module_& m);
void bind_model(nb::module_& m);
void bind_data(nb::module_& m);
void bind_training(nb::module_& m);
void bind_diff(nb::module_& m);
void bind_steering(nb::module_& m);
void bind_evaluation(nb::module_& m);

/// A backend from a Python argument: a Backend object, or "best", "cpu", "cuda".
std::shared_ptr<Backend> backend_from(const nb::handle& argument);

/// Polls Python's signal handlers (Ctrl-C) from a thread that released the GIL; true when a
/// KeyboardInterrupt is pending, which stays set for the caller to re-raise.
bool interrupted();

/// How a long C++ loop (training, a diff pass) that released the GIL stops for Python: a
/// Python callback's exception, or Ctrl-C (polled between steps, or raised inside a callback),
/// makes should_stop() true, so the loop ends cleanly (training saves its checkpoint); raise()
/// then turns the loop's Cancelled into that exception or a KeyboardInterrupt.
class PythonStop {
 public:
  /// Wraps `callback` (which must outlive the loop) to run with the GIL; none: an empty function.
  template <typename... Args>
  std::function<void(Args...)> wrap(nb::handle callback) {
    if (callback.is_none()) return {};
    return [this, callback](Args... args) {
      if (failure_) return;
      nb::gil_scoped_acquire gil;
      try {
        callback(args...);
      } catch (nb::python_error& e) {
        if (e.matches(PyExc_KeyboardInterrupt))
          interrupted_ = true;
        else
          failure_ = std::current_exception();
      } catch (...) {
        failure_ = std::current_exception();
      }
    };
  }
  std::function<bool()> should_stop() {
    return [this] {
      if (failure_) return true;
      if (interrupted()) interrupted_ = true;
      return interrupted_;
    };
  }
  /// Records an exception raised in Python code the loop called (e.g. a batch iterator).
  void record_failure(std::exception_ptr failure) { failure_ = std::move(failure); }
  /// Called from a catch block for the loop's Error: raises the recorded Python exception, a
  /// KeyboardInterrupt carrying the loop's message, or rethrows the error.
  [[noreturn]] void raise(const Error& error) const {
    if (failure_) std::rethrow_exception(failure_);
    if (interrupted_ && dynamic_cast<const Cancelled*>(&error) != nullptr) {
      PyErr_SetString(PyExc_KeyboardInterrupt, error.what());
      throw nb::python_error();
    }
    throw;
  }

 private:
  std::exception_ptr failure_;
  bool interrupted_ = false;
};

}  // namespace crosscoder::python
