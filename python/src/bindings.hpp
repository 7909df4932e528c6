#pragma once
// The pieces of the crosscoder._core extension, one function per area of the public API.

#include <nanobind/nanobind.h>

#include <memory>
#include <string>

#include "crosscoder/backend.hpp"

namespace crosscoder::python {

namespace nb = nanobind;

void bind_errors(nb::module_& m);
void bind_model(nb::module_& m);
void bind_data(nb::module_& m);
void bind_training(nb::module_& m);
void bind_diff(nb::module_& m);
void bind_steering(nb::module_& m);

/// A backend from a Python argument: a Backend object, or "best", "cpu", "cuda".
std::shared_ptr<Backend> backend_from(const nb::handle& argument);

/// Polls Python's signal handlers (Ctrl-C) from a thread that released the GIL; true when a
/// KeyboardInterrupt is pending, which stays set for the caller to re-raise.
bool interrupted();

}  // namespace crosscoder::python
