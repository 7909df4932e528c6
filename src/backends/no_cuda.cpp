// Stands in for the CUDA backend when the library is built without CUDA.
#include "backends/cuda_entry.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/version.hpp"

namespace crosscoder {

bool built_with_cuda() noexcept { return false; }

namespace detail {

BackendInfo probe_cuda_backend() {
  BackendInfo info;
  info.kind = BackendKind::cuda;
  info.built = false;
  info.usable = false;
  info.reason = "built without CUDA (configure with -DCROSSCODER_CUDA=ON and a CUDA toolkit)";
  return info;
}

std::shared_ptr<Backend> make_cuda_backend() {
  throw Error("CUDA backend unavailable: " + probe_cuda_backend().reason);
}

}  // namespace detail
}  // namespace crosscoder
