#include "crosscoder/npy_source.hpp"

#include <fmt/format.h>

#include <cmath>
#include <numeric>

#include "crosscoder/error.hpp"
#include "crosscoder/io/npy.hpp"
#include "random.hpp"

namespace crosscoder {

NpyPairSource::NpyPairSource(const std::vector<std::filesystem::path>& files, std::uint64_t seed)
    : paths_(files), seed_(seed) {
  if (files.empty()) throw Error("training data: no --data file given");
  for (const auto& path : files) {
    auto file = std::make_unique<io::NpyFile>(io::NpyFile::open(path));
    const auto& shape = file->shape();
    if (shape.size() != 2) {
      throw Error(fmt::format("{}: expected a 2-D array [rows, width], got {} dimensions",
                              path.string(), shape.size()));
    }
    if (shape[0] == 0 || shape[1] == 0) {
      throw Error(fmt::format("{}: the array is empty (shape [{}, {}])", path.string(), shape[0],
                              shape[1]));
    }
    const auto rows = static_cast<std::int64_t>(shape[0]);
    const auto width = static_cast<int>(shape[1]);
    if (files_.empty()) {
      rows_ = rows;
      width_ = width;
    } else if (rows != rows_ || width != width_) {
      throw Error(fmt::format(
          "{} has shape [{}, {}] but {} has [{}, {}]: every source needs the same rows and width",
          path.string(), rows, width, paths_[0].string(), rows_, width_));
    }
    files_.push_back(std::move(file));
  }
}

NpyPairSource::~NpyPairSource() = default;

const std::vector<std::int64_t>& NpyPairSource::permutation(std::int64_t epoch) {
  if (epoch != cached_epoch_) {
    cached_permutation_.resize(static_cast<std::size_t>(rows_));
    std::iota(cached_permutation_.begin(), cached_permutation_.end(), 0);
    detail::Random random(seed_ * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(epoch) + 1);
    for (std::int64_t i = rows_ - 1; i > 0; --i) {  // Fisher–Yates
      const auto j = static_cast<std::int64_t>(random.uniform() * static_cast<double>(i + 1));
      std::swap(cached_permutation_[i], cached_permutation_[std::min(j, i)]);
    }
    cached_epoch_ = epoch;
  }
  return cached_permutation_;
}

void NpyPairSource::fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) {
  const std::int64_t D = static_cast<std::int64_t>(width_) * sources();
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t global = step * rows + i;
    const std::int64_t row = permutation(global / rows_)[global % rows_];
    for (int m = 0; m < sources(); ++m) {
      float* destination = out + i * D + static_cast<std::int64_t>(m) * width_;
      files_[m]->read_rows_float(static_cast<std::size_t>(row), 1, destination);
      for (int j = 0; j < width_; ++j) {
        if (!std::isfinite(destination[j])) {
          throw Error(fmt::format("{}: non-finite value {} at row {}, column {}",
                                  paths_[m].string(), destination[j], row, j));
        }
      }
    }
    if (labels) labels[i] = -1;
  }
}

std::string NpyPairSource::identity() const {
  std::string text;
  for (const auto& path : paths_) text += std::filesystem::absolute(path).string() + ";";
  return fmt::format("npy:{}rows={};width={};seed={}", text, rows_, width_, seed_);
}

}  // namespace crosscoder
