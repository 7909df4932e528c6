#include "crosscoder/sparse_codes.hpp"

#include "crosscoder/backend.hpp"

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

SparseCodes concatenate_rows(const std::shared_ptr<Backend>& backend,
                             std::span<const SparseCodes> parts) {
  SparseCodes joined;
  for (const SparseCodes& part : parts) {
    joined.rows += part.rows;
    joined.nnz += part.nnz;
  }
  // The row offsets are small (rows + 1 numbers): shifted on the host.
  std::vector<std::int64_t> row_ptr;
  row_ptr.reserve(static_cast<std::size_t>(joined.rows + 1));
  row_ptr.push_back(0);
  joined.latent = DeviceArray<std::int32_t>(backend, static_cast<std::size_t>(joined.nnz));
  joined.value = DeviceArray<float>(backend, static_cast<std::size_t>(joined.nnz));
  std::int64_t offset = 0;
  for (const SparseCodes& part : parts) {
    const std::vector<std::int64_t> part_row_ptr = part.row_ptr.download();
    for (std::int64_t b = 1; b <= part.rows; ++b) row_ptr.push_back(offset + part_row_ptr[b]);
    if (part.nnz > 0) {
      backend->copy_on_device(joined.latent.data() + offset, part.latent.data(),
                              static_cast<std::size_t>(part.nnz) * sizeof(std::int32_t));
      backend->copy_on_device(joined.value.data() + offset, part.value.data(),
                              static_cast<std::size_t>(part.nnz) * sizeof(float));
    }
    offset += part.nnz;
  }
  joined.row_ptr = DeviceArray<std::int64_t>(backend, std::span<const std::int64_t>(row_ptr));
  return joined;
}

}  // namespace crosscoder
