// crosscoder._core: the C++ library as a Python extension (nanobind). The Python package
// (python/crosscoder) re-exports these names and adds the Hugging Face helpers.

#include <nanobind/nanobind.h>

#include "bindings.hpp"
#include "crosscoder/version.hpp"

NB_MODULE(_core, m) {
  namespace py = crosscoder::python;
  m.doc() = "Sparse crosscoders for model diffing: the C++ core (see the crosscoder package).";
  m.attr("__version__") = CROSSCODER_VERSION_STRING;
  py::bind_errors(m);
  py::bind_model(m);
  py::bind_data(m);
  py::bind_training(m);
  py::bind_diff(m);
  py::bind_steering(m);
  py::bind_evaluation(m);
}
