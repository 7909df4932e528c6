// Writes a synthetic model pair as one .npy per source (and labels), and the same rows as a
// sharded bfloat16 dataset with a manifest (OUT_DIR/sharded/manifest.json, written by
// ActivationWriter, with token ids 1000 + row so that example windows can be checked by eye, and
// a vocabulary for them, OUT_DIR/vocab.txt),
// for end-to-end tests of `crosscoder train`, `diff`, `info` and the
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
  options.token_ids = true;
  options.document_ids = true;
  options.overwrite = true;
  crosscoder::ActivationWriter writer(out / "sharded", options);
  writer.append_all(rows_data);
  writer.append_labels(labels);
  std::vector<std::int32_t> token_ids(rows);
  for (std::size_t r = 0; r < rows; ++r) token_ids[r] = static_cast<std::int32_t>(1000 + r);
  writer.append_token_ids(token_ids);
  // Documents of 7 rows: example windows (2 before, 1 after in the tests) often meet a boundary.
  std::vector<std::int32_t> document_ids(rows);
  for (std::size_t r = 0; r < rows; ++r) document_ids[r] = static_cast<std::int32_t>(r / 7);
  writer.append_document_ids(document_ids);
  writer.close();
  // A vocabulary for those ids (one piece per line: " w<id>"), for `crosscoder examples --vocab`.
  std::FILE* vocabulary = std::fopen((out / "vocab.txt").c_str(), "w");
  if (vocabulary == nullptr) return 1;
  for (std::size_t id = 0; id < 1000 + rows; ++id) std::fprintf(vocabulary, " w%zu\n", id);
  std::fclose(vocabulary);
  std::printf("wrote %zu rows to %s\n", rows, out.c_str());
  return 0;
}
