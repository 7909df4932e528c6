#pragma once
/// @file npy_source.hpp
/// Paired training batches from one .npy file per source.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "crosscoder/batch_source.hpp"

namespace crosscoder {

namespace io {
class NpyFile;
}

/// Reads M memory-mapped .npy files of shape [N, d] (float32, or float16 converted on the fly),
/// one per source, where row i of every file is the same token. Rows are visited in a fresh
/// seeded permutation each epoch; batch `step` is a pure function of (files, seed, step).
class NpyPairSource : public BatchSource {
 public:
  /// @throws Error naming the file when one cannot be read, is not 2-D, is empty, or when the
  ///         files disagree in row count or width.
  NpyPairSource(const std::vector<std::filesystem::path>& files, std::uint64_t seed);
  ~NpyPairSource() override;

  int sources() const override { return static_cast<int>(files_.size()); }
  int width() const override { return width_; }
  std::int64_t rows() const noexcept { return rows_; }
  /// @throws Error naming the file and row when a value is NaN or infinite.
  void fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) override;
  std::string identity() const override;

 private:
  const std::vector<std::int64_t>& permutation(std::int64_t epoch);

  std::vector<std::filesystem::path> paths_;
  std::vector<std::unique_ptr<io::NpyFile>> files_;
  std::int64_t rows_ = 0;
  int width_ = 0;
  std::uint64_t seed_ = 0;
  std::int64_t cached_epoch_ = -1;
  std::vector<std::int64_t> cached_permutation_;
};

}  // namespace crosscoder
