// Writes a synthetic model pair as one .npy per source (and labels), and the same rows as a
// sharded bfloat16 dataset with a manifest (OUT_DIR/sharded/manifest.json, written by
// ActivationWriter), for end-to-end tests of `crosscoder train`, `diff`, `info` and the
// quickstart example:  write_synthetic_npy OUT_DIR ROWS
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/io/npy.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s OUT_DIR ROWS\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out = argv[1];
  const auto rows = static_cast<std::size_t>(std::atoll(argv[2]));
  crosscoder::SyntheticConfig config;
  config.width = 16;
  config.shared_features = 24;
  config.exclusive_features = {6, 6};
  config.seed = 11;
  const crosscoder::SyntheticPair pair(config);
  std::vector<float> rows_data(rows * 2 * 16);
  std::vector<std::int8_t> labels(rows);
  pair.sample(static_cast<std::int64_t>(rows), 0, rows_data.data(), labels.data());
  std::filesystem::create_directories(out);
  for (int m = 0; m < 2; ++m) {
    std::vector<float> source(rows * 16);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t i = 0; i < 16; ++i)
        source[r * 16 + i] = rows_data[(r * 2 + static_cast<std::size_t>(m)) * 16 + i];
    crosscoder::io::write_npy(out / (m == 0 ? "base.npy" : "finetuned.npy"), {rows, 16}, source);
  }
  std::vector<std::int32_t> wide(labels.begin(), labels.end());
  crosscoder::io::write_npy(out / "labels.npy", {rows}, wide);
  crosscoder::ActivationWriterOptions options;
  options.source_names = {"base", "finetuned"};
  options.width = 16;
  options.dtype = crosscoder::StoredType::BF16;
  options.shard_rows = 1000;
  options.labels = true;
  options.overwrite = true;
  crosscoder::ActivationWriter writer(out / "sharded", options);
  writer.append_all(rows_data);
  writer.append_labels(labels);
  writer.close();
  std::printf("wrote %zu rows to %s\n", rows, out.c_str());
  return 0;
}
