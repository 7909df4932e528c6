#include "crosscoder/sparse_codes.hpp"

namespace crosscoder {

HostSparseCodes HostSparseCodes::from(const SparseCodes& codes) {
  HostSparseCodes host;
  host.rows = codes.rows;
  host.row_ptr = codes.row_ptr.download();
  host.latent = codes.latent.download();
  host.value = codes.value.download();
  return host;
}

std::vector<float> HostSparseCodes::dense_row(std::int64_t row, std::int64_t latents) const {
  std::vector<float> dense(static_cast<std::size_t>(latents), 0.0f);
  for (std::int64_t e = row_ptr[row]; e < row_ptr[row + 1]; ++e) dense[latent[e]] = value[e];
  return dense;
}

}  // namespace crosscoder
