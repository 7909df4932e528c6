#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <set>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/io/npy.hpp"

namespace crosscoder {
namespace {

namespace fs = std::filesystem;

class NpySourceTest : public ::testing::Test {
 protected:
  NpySourceTest() {
    dir_ = fs::temp_directory_path() / ("crosscoder-npy-" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  ~NpySourceTest() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(NpySourceTest, BatchesPairRowsAcrossSourcesAndCoverEachEpoch) {
  const std::size_t rows = 37, width = 5;
  std::vector<float> a(rows * width), b(rows * width);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < width; ++j) {
      a[r * width + j] = static_cast<float>(r) + 0.01f * static_cast<float>(j);
      b[r * width + j] = -static_cast<float>(r) - 0.01f * static_cast<float>(j);
    }
  io::write_npy(dir_ / "a.npy", {rows, width}, a);
  io::write_npy(dir_ / "b.npy", {rows, width}, b);
  NpyPairSource source({dir_ / "a.npy", dir_ / "b.npy"}, 7);
  EXPECT_EQ(source.sources(), 2);
  EXPECT_EQ(source.width(), 5);
  const std::int64_t batch = 8;
  std::vector<float> out(batch * 2 * width);
  std::multiset<int> seen;
  for (std::int64_t step = 0; step * batch < 2 * static_cast<std::int64_t>(rows); ++step) {
    source.fill(step, batch, out.data(), nullptr);
    for (std::int64_t i = 0; i < batch; ++i) {
      const float row = out[i * 2 * width];
      EXPECT_EQ(out[i * 2 * width + width], -row) << "sources must come from the same row";
      if ((step * batch + i) < static_cast<std::int64_t>(rows)) seen.insert(static_cast<int>(row));
    }
  }
  EXPECT_EQ(seen.size(), rows);
  EXPECT_EQ(std::set<int>(seen.begin(), seen.end()).size(), rows)
      << "the first epoch visits every row once";
  // Same seed and step: the same batch.
  NpyPairSource again({dir_ / "a.npy", dir_ / "b.npy"}, 7);
  std::vector<float> first(out.size()), second(out.size());
  source.fill(3, batch, first.data(), nullptr);
  again.fill(3, batch, second.data(), nullptr);
  EXPECT_EQ(first, second);
}

TEST_F(NpySourceTest, MismatchedOrBadFilesAreNamed) {
  io::write_npy(dir_ / "a.npy", {4, 3}, std::vector<float>(12, 1.0f));
  io::write_npy(dir_ / "b.npy", {5, 3}, std::vector<float>(15, 1.0f));
  io::write_npy(dir_ / "c.npy", {12}, std::vector<float>(12, 1.0f));
  std::vector<float> with_nan(12, 1.0f);
  with_nan[7] = std::nanf("");
  io::write_npy(dir_ / "d.npy", {4, 3}, with_nan);
  const auto message = [&](std::vector<fs::path> files) {
    try {
      NpyPairSource source(files, 0);
      std::vector<float> out(4 * source.sources() * 3);
      source.fill(0, 4, out.data(), nullptr);
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({dir_ / "a.npy", dir_ / "b.npy"}).find("b.npy has shape [5, 3]"),
            std::string::npos);
  EXPECT_NE(message({dir_ / "c.npy"}).find("2-D"), std::string::npos);
  EXPECT_NE(message({dir_ / "a.npy", dir_ / "d.npy"}).find("d.npy: non-finite value nan at row 2"),
            std::string::npos);
  EXPECT_NE(message({dir_ / "absent.npy"}).find("absent.npy"), std::string::npos);
}

}  // namespace
}  // namespace crosscoder
