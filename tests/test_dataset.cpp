// Activation datasets: every input layout, the manifest, the shuffled batcher, prefetch and
// the writer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>

#include "crosscoder/activation_writer.hpp"
#include "crosscoder/dataset.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/io/half.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "crosscoder/prefetch.hpp"
#include "crosscoder/shuffled_batches.hpp"

namespace crosscoder {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  return "no error";
}

class DatasetTest : public ::testing::Test {
 protected:
  DatasetTest() {
    dir_ = fs::temp_directory_path() /
           ("crosscoder-dataset-" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  ~DatasetTest() override { fs::remove_all(dir_); }

  // Random values of [rows, sources, width], distinct per (row, source).
  std::vector<float> random_rows(std::int64_t rows, int sources, int width, unsigned seed) {
    std::mt19937 engine(seed);
    std::normal_distribution<float> normal;
    std::vector<float> values(static_cast<std::size_t>(rows * sources * width));
    for (float& v : values) v = normal(engine);
    return values;
  }

  std::vector<float> column(const std::vector<float>& all, std::int64_t rows, int sources,
                            int width, int source) {
    std::vector<float> out(static_cast<std::size_t>(rows * width));
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy_n(&all[static_cast<std::size_t>((r * sources + source) * width)], width,
                  &out[static_cast<std::size_t>(r * width)]);
    return out;
  }

  void write_text(const fs::path& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
  }

  fs::path dir_;
};

TEST_F(DatasetTest, EveryInputLayoutReadsTheSameRows) {
  const std::int64_t N = 53;
  const int M = 2, d = 7;
  const auto all = random_rows(N, M, d, 1);
  io::write_npy(dir_ / "stacked.npy", {N, M, d}, all);
  io::write_npy(dir_ / "base.npy", {N, d}, column(all, N, M, d, 0));
  io::write_npy(dir_ / "tuned.npy", {N, d}, column(all, N, M, d, 1));
  io::SafetensorsWriter writer;
  // Named so that name order is the reverse of source order; metadata decides.
  writer.add_float("b_base", {N, d}, column(all, N, M, d, 0));
  writer.add_float("a_tuned", {N, d}, column(all, N, M, d, 1));
  writer.set_metadata("sources", R"(["b_base", "a_tuned"])");
  std::vector<std::int64_t> labels(N);
  for (std::int64_t i = 0; i < N; ++i) labels[i] = i % 3 - 1;
  std::vector<std::byte> label_bytes(N);
  for (std::int64_t i = 0; i < N; ++i) label_bytes[i] = static_cast<std::byte>(labels[i]);
  writer.add_raw("labels", io::DType::I8, {N}, label_bytes);
  writer.write(dir_ / "paired.safetensors");

  for (const std::vector<fs::path>& inputs :
       {std::vector<fs::path>{dir_ / "stacked.npy"},
        std::vector<fs::path>{dir_ / "base.npy", dir_ / "tuned.npy"},
        std::vector<fs::path>{dir_ / "paired.safetensors"}}) {
    SCOPED_TRACE(inputs.front().string());
    const ActivationDataset data = ActivationDataset::open(inputs);
    ASSERT_EQ(data.rows(), N);
    ASSERT_EQ(data.sources(), M);
    ASSERT_EQ(data.width(), d);
    std::vector<float> out(static_cast<std::size_t>(N * M * d));
    data.read(0, N, out.data());
    EXPECT_EQ(out, all);
    // A range in the middle, and one source alone.
    std::vector<float> part(static_cast<std::size_t>(5 * M * d));
    data.read(20, 5, part.data());
    EXPECT_TRUE(std::equal(part.begin(), part.end(), all.begin() + 20 * M * d));
    std::vector<float> one(static_cast<std::size_t>(N * d));
    data.read_source(1, 0, N, one.data());
    EXPECT_EQ(one, column(all, N, M, d, 1));
    EXPECT_NE(error_of([&] { data.read(N - 2, 3, part.data()); }).find("outside [0, 53)"),
              std::string::npos);
  }
  const ActivationDataset with_labels = ActivationDataset::open({dir_ / "paired.safetensors"});
  EXPECT_EQ(with_labels.source_names(), (std::vector<std::string>{"b_base", "a_tuned"}));
  ASSERT_TRUE(with_labels.has_labels());
  std::vector<std::int8_t> got(N);
  with_labels.read_labels(0, N, got.data());
  for (std::int64_t i = 0; i < N; ++i) EXPECT_EQ(got[i], labels[i]);
}

TEST_F(DatasetTest, ManifestShardsConvertHalfAndBfloat16AndCarryLabelsAndTokens) {
  const int M = 2, d = 5;
  const std::vector<std::int64_t> shard_rows{11, 4, 9};
  std::int64_t N = 0;
  for (auto r : shard_rows) N += r;
  const auto all = random_rows(N, M, d, 2);
  std::vector<float> expected(all.size());
  std::string sources[2];
  std::string labels, tokens;
  std::int64_t first = 0;
  io::SafetensorsWriter tuned_file;
  for (std::size_t s = 0; s < shard_rows.size(); ++s) {
    const std::int64_t n = shard_rows[s];
    // Source 0: bfloat16 bits in '<u2' .npy files; source 1: float16 safetensors tensors.
    std::vector<std::uint16_t> bf(static_cast<std::size_t>(n * d));
    std::vector<std::uint16_t> half(static_cast<std::size_t>(n * d));
    for (std::int64_t r = 0; r < n; ++r) {
      for (int j = 0; j < d; ++j) {
        const float a = all[static_cast<std::size_t>(((first + r) * M + 0) * d + j)];
        const float b = all[static_cast<std::size_t>(((first + r) * M + 1) * d + j)];
        bf[static_cast<std::size_t>(r * d + j)] = io::float_to_bfloat16(a);
        half[static_cast<std::size_t>(r * d + j)] = io::float_to_half(b);
        expected[static_cast<std::size_t>(((first + r) * M + 0) * d + j)] =
            io::bfloat16_to_float(io::float_to_bfloat16(a));
        expected[static_cast<std::size_t>(((first + r) * M + 1) * d + j)] =
            io::half_to_float(io::float_to_half(b));
      }
    }
    const std::string name = "base-" + std::to_string(s) + ".npy";
    io::write_npy_raw(dir_ / name, {static_cast<std::size_t>(n), static_cast<std::size_t>(d)},
                      "<u2", std::as_bytes(std::span(bf)));
    tuned_file.add_raw("tuned." + std::to_string(s), io::DType::F16, {n, d},
                       std::as_bytes(std::span(half)));
    std::vector<std::int32_t> label(static_cast<std::size_t>(n)),
        token(static_cast<std::size_t>(n));
    for (std::int64_t r = 0; r < n; ++r) {
      label[static_cast<std::size_t>(r)] = static_cast<std::int32_t>((first + r) % 2);
      token[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(1000 + first + r);
    }
    io::write_npy(dir_ / ("labels-" + std::to_string(s) + ".npy"), {static_cast<std::size_t>(n)},
                  label);
    io::write_npy(dir_ / ("tokens-" + std::to_string(s) + ".npy"), {static_cast<std::size_t>(n)},
                  token);
    const std::string sep = s == 0 ? "" : ", ";
    sources[0] += sep + R"({"path": ")" + name + R"(", "rows": )" + std::to_string(n) + "}";
    sources[1] += sep + R"({"path": "tuned.safetensors", "tensor": "tuned.)" + std::to_string(s) +
                  R"(", "rows": )" + std::to_string(n) + "}";
    labels += sep + R"({"path": "labels-)" + std::to_string(s) + R"(.npy", "rows": )" +
              std::to_string(n) + "}";
    tokens += sep + R"({"path": "tokens-)" + std::to_string(s) + R"(.npy", "rows": )" +
              std::to_string(n) + "}";
    first += n;
  }
  tuned_file.write(dir_ / "tuned.safetensors");
  write_text(dir_ / "manifest.json",
             R"({"format": "crosscoder-activations-1", "width": 5, "producer": "a test",
                 "sources": [{"name": "base", "dtype": "bf16", "shards": [)" +
                 sources[0] + R"(]}, {"name": "tuned", "dtype": "f16", "shards": [)" + sources[1] +
                 R"(]}], "labels": {"dtype": "int32", "shards": [)" + labels +
                 R"(]}, "token_ids": {"dtype": "int32", "shards": [)" + tokens + "]}}");

  const ActivationDataset data = ActivationDataset::open({dir_ / "manifest.json"});
  EXPECT_EQ(data.rows(), N);
  EXPECT_EQ(data.shards(), 3u);
  EXPECT_EQ(data.source_names(), (std::vector<std::string>{"base", "tuned"}));
  std::vector<float> out(all.size());
  data.read(0, N, out.data());
  EXPECT_EQ(out, expected);
  // A read across all three shard boundaries.
  std::vector<float> part(static_cast<std::size_t>(10 * M * d));
  data.read(8, 10, part.data());
  EXPECT_TRUE(std::equal(part.begin(), part.end(), expected.begin() + 8 * M * d));
  std::vector<std::int8_t> got_labels(static_cast<std::size_t>(N));
  std::vector<std::int32_t> got_tokens(static_cast<std::size_t>(N));
  data.read_labels(0, N, got_labels.data());
  data.read_token_ids(0, N, got_tokens.data());
  for (std::int64_t r = 0; r < N; ++r) {
    EXPECT_EQ(got_labels[static_cast<std::size_t>(r)], r % 2);
    EXPECT_EQ(got_tokens[static_cast<std::size_t>(r)], 1000 + r);
  }
  EXPECT_NE(data.describe().find("bf16"), std::string::npos);
  // A manifest from before document ids: none, and reading them is an error.
  EXPECT_FALSE(data.has_document_ids());
  EXPECT_EQ(data.describe().find("document ids"), std::string::npos);
  std::vector<std::int32_t> no_documents(1);
  EXPECT_NE(error_of([&] {
              data.read_document_ids(0, 1, no_documents.data());
            }).find("has no document ids"),
            std::string::npos);

  // The manifest is checked against every shard.
  write_text(dir_ / "wrong-rows.json",
             R"({"format": "crosscoder-activations-1", "width": 5, "sources": [
                 {"name": "base", "dtype": "bf16", "shards": [{"path": "base-0.npy", "rows": 12}]}]})");
  EXPECT_NE(error_of([&] {
              ActivationDataset::open({dir_ / "wrong-rows.json"});
            }).find("base-0.npy: shape [11, 5] but expected [12, 5]"),
            std::string::npos);
  write_text(dir_ / "wrong-dtype.json",
             R"({"format": "crosscoder-activations-1", "width": 5, "sources": [
                 {"name": "base", "dtype": "f16", "shards": [{"path": "base-0.npy", "rows": 11}]}]})");
  EXPECT_NE(error_of([&] {
              ActivationDataset::open({dir_ / "wrong-dtype.json"});
            }).find("base-0.npy: dtype '<u2' is not an activation type"),
            std::string::npos);
  write_text(dir_ / "missing.json",
             R"({"format": "crosscoder-activations-1", "width": 5, "sources": [
                 {"name": "base", "dtype": "f32", "shards": [{"path": "gone.npy", "rows": 11}]}]})");
  EXPECT_NE(error_of([&] { ActivationDataset::open({dir_ / "missing.json"}); }).find("gone.npy"),
            std::string::npos);
  write_text(dir_ / "mismatch.json",
             R"({"format": "crosscoder-activations-1", "width": 5, "sources": [
                 {"name": "a", "dtype": "f32", "shards": [{"path": "x.npy", "rows": 11}]},
                 {"name": "b", "dtype": "f32", "shards": [{"path": "y.npy", "rows": 12}]}]})");
  EXPECT_NE(error_of([&] {
              ActivationDataset::open({dir_ / "mismatch.json"});
            }).find("sources[1].shards[0].rows is 12 but sources[0].shards[0].rows is 11"),
            std::string::npos);
}

TEST_F(DatasetTest, ManifestParserNamesTheKeyAtFault) {
  const auto parse_error = [](const std::string& text) {
    return error_of([&] { parse_manifest(text, "dir/m.json"); });
  };
  const std::string head = R"({"format": "crosscoder-activations-1", "width": 4, )";
  EXPECT_NE(parse_error("[1, 2]").find("m.json: must be a JSON object"), std::string::npos);
  EXPECT_NE(parse_error("{").find("not valid JSON"), std::string::npos);
  EXPECT_NE(parse_error(R"({"format": "other", "width": 4})").find("format is \"other\""),
            std::string::npos);
  EXPECT_NE(parse_error(head + R"("sources": []})").find("sources must be a non-empty array"),
            std::string::npos);
  EXPECT_NE(parse_error(head + R"("sources": [{"name": "a", "dtype": "f64", "shards": []}]})")
                .find("sources[0].dtype: unknown dtype \"f64\""),
            std::string::npos);
  EXPECT_NE(
      parse_error(
          head +
          R"("sources": [{"name": "a", "dtype": "int8", "shards": [{"path": "x", "rows": 1}]}]})")
          .find("activations are f32, f16 or bf16"),
      std::string::npos);
  EXPECT_NE(
      parse_error(
          head +
          R"("sources": [{"name": "a", "dtype": "f32", "shards": [{"path": "x", "rows": -3}]}]})")
          .find("sources[0].shards[0].rows is -3"),
      std::string::npos);
  EXPECT_NE(
      parse_error(
          head +
          R"("sources": [{"name": "a", "dtype": "f32", "shards": [{"path": "x", "rows": 1.5}]}]})")
          .find("rows must be an integer"),
      std::string::npos);
  EXPECT_NE(
      parse_error(
          head + R"("sources": [{"name": "a", "dtype": "f32", "shards": [{"path": "x", "rows": 1}]},
                                              {"name": "a", "dtype": "f32", "shards": [{"path": "y", "rows": 1}]}]})")
          .find("\"a\" names two sources"),
      std::string::npos);
  EXPECT_NE(parse_error(
                head +
                R"("sources": [{"name": "a", "dtype": "f32", "shards": [{"path": "x", "rows": 1}]}],
                                  "labels": {"dtype": "int8", "shards": [{"path": "l", "rows": 2}]}})")
                .find("labels.shards[0].rows is 2"),
            std::string::npos);
  // Document ids: int32 only, and shard for shard the sources' rows.
  const std::string two_shards =
      R"("sources": [{"name": "a", "dtype": "f32", "shards": [{"path": "x", "rows": 4},
                                                              {"path": "y", "rows": 3}]}], )";
  EXPECT_NE(parse_error(head + two_shards +
                        R"("document_ids": {"dtype": "int8", "shards": [{"path": "d0", "rows": 4},
                                                                         {"path": "d1", "rows": 3}]}})")
                .find("document_ids.dtype is int8; document ids are int32"),
            std::string::npos);
  EXPECT_NE(parse_error(head + two_shards +
                        R"("document_ids": {"dtype": "int32", "shards": [{"path": "d0", "rows": 4},
                                                                          {"path": "d1", "rows": 5}]}})")
                .find("document_ids.shards[1].rows is 5 but sources[0].shards[1].rows is 3"),
            std::string::npos);
  EXPECT_NE(
      parse_error(head + two_shards +
                  R"("document_ids": {"dtype": "int32", "shards": [{"path": "d", "rows": 7}]}})")
          .find("document_ids.shards has 1 shards but sources[0] has 2"),
      std::string::npos);
  EXPECT_NE(parse_error(head + two_shards +
                        R"("document_ids": {"dtype": "int32", "shards": [{"rows": 4},
                                                                          {"path": "d1", "rows": 3}]}})")
                .find("document_ids.shards[0].path is missing"),
            std::string::npos);
  EXPECT_NE(parse_error(head + two_shards + R"("document_ids": []})")
                .find("document_ids must be an object"),
            std::string::npos);
  EXPECT_FALSE(parse_manifest(head + two_shards + R"("document_ids": null})", "dir/m.json")
                   .document_ids.has_value());
  // Relative paths resolve against the manifest's directory; a round trip keeps everything.
  const DatasetManifest m = parse_manifest(
      head + R"("sources": [{"name": "a", "dtype": "bf16", "shards": [{"path": "x.npy", "rows": 3},
                {"path": "/abs/y.safetensors", "tensor": "t", "rows": 2}]}]})",
      "dir/m.json");
  EXPECT_EQ(m.sources[0].shards[0].path, fs::path("dir/x.npy"));
  EXPECT_EQ(m.sources[0].shards[1].path, fs::path("/abs/y.safetensors"));
  EXPECT_EQ(m.rows(), 5);
  const DatasetManifest again = parse_manifest(manifest_to_json(m, "dir"), "dir/m.json");
  EXPECT_EQ(again.sources[0].shards[0].path, m.sources[0].shards[0].path);
  EXPECT_EQ(again.sources[0].shards[1].tensor, "t");
  EXPECT_EQ(again.sources[0].dtype, StoredType::BF16);
}

TEST_F(DatasetTest, BadInputsAreNamed) {
  const auto all = random_rows(6, 1, 3, 3);
  io::write_npy(dir_ / "a.npy", {6, 3}, all);
  io::write_npy(dir_ / "b.npy", {5, 3}, std::vector<float>(all.begin(), all.begin() + 15));
  io::write_npy(dir_ / "one-d.npy", {18}, all);
  auto with_nan = all;
  with_nan[10] = std::nanf("");
  io::write_npy(dir_ / "nan.npy", {6, 3}, with_nan);
  EXPECT_NE(error_of([&] {
              ActivationDataset::open({dir_ / "a.npy", dir_ / "b.npy"});
            }).find("b.npy: shape [5, 3] but expected [6, 3]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ActivationDataset::open({dir_ / "one-d.npy"}); }).find("[18]"),
            std::string::npos);
  const ActivationDataset nan_data = ActivationDataset::open({dir_ / "a.npy", dir_ / "nan.npy"});
  std::vector<float> out(6 * 2 * 3);
  EXPECT_NE(error_of([&] {
              nan_data.read(0, 6, out.data());
            }).find("nan.npy: non-finite value nan at row 3 (dataset row 3), column 1"),
            std::string::npos);
  // Labels of the wrong length, or out of int8's range.
  io::write_npy(dir_ / "labels5.npy", {5}, std::vector<std::int32_t>(5, 1));
  io::write_npy(dir_ / "labels-big.npy", {6}, std::vector<std::int32_t>{0, 1, 0, 300, 1, 0});
  ActivationDataset data = ActivationDataset::open({dir_ / "a.npy"});
  EXPECT_NE(error_of([&] {
              data.attach_labels(dir_ / "labels5.npy");
            }).find("labels5.npy: shape [5] but the data has 6 rows"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { data.attach_labels(dir_ / "labels-big.npy"); }).find("label 300 at row 3"),
      std::string::npos);
  io::write_npy(dir_ / "labels.npy", {6}, std::vector<std::int32_t>{0, 1, -1, 1, 1, 0});
  data.attach_labels(dir_ / "labels.npy");
  std::vector<std::int8_t> labels(6);
  data.read_labels(0, 6, labels.data());
  EXPECT_EQ(labels, (std::vector<std::int8_t>{0, 1, -1, 1, 1, 0}));
}

// Random document ids: runs of 1 to 40 rows, each run's id drawn from all of int32 and
// different from the previous run's (ids need only differ between neighbours).
std::vector<std::int32_t> random_document_ids(std::int64_t rows, unsigned seed) {
  std::mt19937 engine(seed);
  std::uniform_int_distribution<std::int32_t> id(std::numeric_limits<std::int32_t>::min(),
                                                 std::numeric_limits<std::int32_t>::max());
  std::uniform_int_distribution<std::int64_t> length(1, 40);
  std::vector<std::int32_t> ids;
  std::int32_t previous = 0;
  while (static_cast<std::int64_t>(ids.size()) < rows) {
    std::int32_t next = id(engine);
    while (next == previous) next = id(engine);
    const std::int64_t n = std::min(length(engine), rows - static_cast<std::int64_t>(ids.size()));
    ids.insert(ids.end(), static_cast<std::size_t>(n), next);
    previous = next;
  }
  return ids;
}

TEST_F(DatasetTest, DocumentIdsRoundTripThroughTheWriterAndTheManifest) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int M = 2, d = 3;
  const std::int64_t N = 301;
  const auto all = random_rows(N, M, d, seed);
  const std::vector<std::int32_t> documents = random_document_ids(N, seed + 1);
  ASSERT_NE(std::count(documents.begin(), documents.end(), 0), N);
  ActivationWriterOptions options;
  options.source_names = {"base", "chat"};
  options.width = d;
  options.shard_rows = 64;
  options.token_ids = true;
  options.document_ids = true;
  const fs::path out = dir_ / "documents";
  {
    ActivationWriter writer(out, options);
    writer.append_all(all);
    writer.append_token_ids(std::vector<std::int32_t>(N, 5));
    // In uneven pieces, across shard boundaries; short of the sources' rows at first.
    writer.append_document_ids(std::span(documents).first(100));
    EXPECT_NE(error_of([&] {
                writer.close();
              }).find("\"document_ids\" has 100 rows but \"base\" has 301"),
              std::string::npos);
    writer.append_document_ids(std::span(documents).subspan(100, 1));
    writer.append_document_ids(std::span(documents).subspan(101));
    EXPECT_EQ(writer.close(), out / "manifest.json");
    EXPECT_NE(error_of([&] { writer.append_document_ids(documents); }).find("append after close()"),
              std::string::npos);
  }
  EXPECT_TRUE(fs::is_regular_file(out / "documents-00004.npy"));
  const DatasetManifest manifest = read_manifest(out / "manifest.json");
  ASSERT_TRUE(manifest.document_ids.has_value());
  EXPECT_EQ(manifest.document_ids->shards.size(), 5u);  // 4 × 64 + 45
  // manifest_to_json keeps the column, shard for shard.
  const DatasetManifest again =
      parse_manifest(manifest_to_json(manifest, out), out / "manifest.json");
  ASSERT_TRUE(again.document_ids.has_value());
  ASSERT_EQ(again.document_ids->shards.size(), manifest.document_ids->shards.size());
  for (std::size_t i = 0; i < again.document_ids->shards.size(); ++i) {
    EXPECT_EQ(again.document_ids->shards[i].path, manifest.document_ids->shards[i].path);
    EXPECT_EQ(again.document_ids->shards[i].rows, manifest.document_ids->shards[i].rows);
  }
  EXPECT_EQ(again.document_ids->dtype, StoredType::I32);

  const ActivationDataset data = ActivationDataset::open({out / "manifest.json"});
  ASSERT_TRUE(data.has_document_ids());
  std::vector<std::int32_t> got(static_cast<std::size_t>(N));
  data.read_document_ids(0, N, got.data());
  EXPECT_EQ(got, documents);
  std::vector<std::int32_t> part(70);
  data.read_document_ids(60, 70, part.data());  // across two shard boundaries
  EXPECT_TRUE(std::equal(part.begin(), part.end(), documents.begin() + 60));
  EXPECT_NE(data.describe().find("document ids: int32"), std::string::npos);
  EXPECT_NE(error_of([&] {
              data.read_document_ids(N - 1, 2, part.data());
            }).find("document id rows [300, 302) are outside [0, 301)"),
            std::string::npos);

  // A shard that is not int32 is refused, naming the manifest's key and the file.
  const std::vector<std::int8_t> small_ids{1, 1, 2};
  io::write_npy_raw(dir_ / "docs-i1.npy", {3}, "|i1", std::as_bytes(std::span(small_ids)));
  io::write_npy(dir_ / "x.npy", {3, 2}, std::vector<float>(6, 1.0f));
  write_text(dir_ / "i1.json",
             R"({"format": "crosscoder-activations-1", "width": 2, "sources": [
                 {"name": "a", "dtype": "f32", "shards": [{"path": "x.npy", "rows": 3}]}],
                 "document_ids": {"dtype": "int32", "shards": [{"path": "docs-i1.npy", "rows": 3}]}})");
  const std::string message = error_of([&] { ActivationDataset::open({dir_ / "i1.json"}); });
  EXPECT_NE(message.find("document_ids.shards[0]: "), std::string::npos) << message;
  EXPECT_NE(message.find("docs-i1.npy: holds int8 ('|i1') but the manifest says int32"),
            std::string::npos)
      << message;

  // The writer refuses document ids it was not asked for, and "documents" as a source name
  // only when it writes them (the file prefix would collide).
  ActivationWriterOptions plain;
  plain.source_names = {"documents"};
  plain.width = 1;
  ActivationWriter without(dir_ / "plain", plain);
  EXPECT_NE(error_of([&] {
              without.append_document_ids(std::vector<std::int32_t>{1});
            }).find("created without document ids"),
            std::string::npos);
  without.append(0, std::vector<float>{1.0f});
  without.close();
  EXPECT_FALSE(ActivationDataset::open({dir_ / "plain" / "manifest.json"}).has_document_ids());
  plain.document_ids = true;
  EXPECT_NE(error_of([&] {
              ActivationWriter writer(dir_ / "clash", plain);
            }).find("source name \"documents\" is the document ids' file prefix"),
            std::string::npos);
}

TEST_F(DatasetTest, SafetensorsDatasetsCarryDocumentIdsAsI32Only) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::int64_t N = 37;
  const int d = 4;
  const auto rows = random_rows(N, 1, d, seed);
  const std::vector<std::int32_t> documents = random_document_ids(N, seed + 1);
  const auto write = [&](const fs::path& path, io::DType dtype, std::int64_t length) {
    io::SafetensorsWriter writer;
    writer.add_float("base", {N, d}, rows);
    std::vector<std::byte> bytes;
    if (dtype == io::DType::I32) {
      const auto raw = std::as_bytes(std::span(documents).first(static_cast<std::size_t>(length)));
      bytes.assign(raw.begin(), raw.end());
    } else {
      bytes.assign(static_cast<std::size_t>(length) * (dtype == io::DType::I8 ? 1 : 8),
                   std::byte{1});
    }
    writer.add_raw("document_ids", dtype, {length}, bytes);
    writer.write(path);
  };
  write(dir_ / "good.safetensors", io::DType::I32, N);
  const ActivationDataset data = ActivationDataset::open({dir_ / "good.safetensors"});
  EXPECT_EQ(data.source_names(), std::vector<std::string>{"base"});
  ASSERT_TRUE(data.has_document_ids());
  EXPECT_FALSE(data.has_token_ids());
  std::vector<std::int32_t> got(static_cast<std::size_t>(N));
  data.read_document_ids(0, N, got.data());
  EXPECT_EQ(got, documents);

  write(dir_ / "i8.safetensors", io::DType::I8, N);
  EXPECT_NE(error_of([&] {
              ActivationDataset::open({dir_ / "i8.safetensors"});
            }).find("i8.safetensors[document_ids]: document_ids must be I32, not I8"),
            std::string::npos);
  write(dir_ / "i64.safetensors", io::DType::I64, N);
  EXPECT_NE(error_of([&] {
              ActivationDataset::open({dir_ / "i64.safetensors"});
            }).find("i64.safetensors[document_ids]: dtype I64 is not I8 or I32"),
            std::string::npos);
  write(dir_ / "short.safetensors", io::DType::I32, N - 1);
  EXPECT_NE(error_of([&] {
              ActivationDataset::open({dir_ / "short.safetensors"});
            }).find("short.safetensors[document_ids]: shape [36] but expected [37]"),
            std::string::npos);
}

TEST_F(DatasetTest, ShuffledBatchesDeliverEveryRowOncePerEpochPairedAndDeterministically) {
  const std::int64_t N = 1000;
  const int M = 2, d = 3;
  std::vector<float> all(static_cast<std::size_t>(N * M * d));
  for (std::int64_t r = 0; r < N; ++r)
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < d; ++j)
        all[static_cast<std::size_t>((r * M + m) * d + j)] =
            static_cast<float>(r) * (m == 0 ? 1.0f : -1.0f) + 0.125f * static_cast<float>(j);
  io::write_npy(dir_ / "stacked.npy", {N, M, d}, all);
  std::vector<std::int32_t> labels(N);
  for (std::int64_t r = 0; r < N; ++r) labels[static_cast<std::size_t>(r)] = r % 3 == 0;
  io::write_npy(dir_ / "labels.npy", {N}, labels);
  auto dataset =
      std::make_shared<ActivationDataset>(ActivationDataset::open({dir_ / "stacked.npy"}));
  dataset->attach_labels(dir_ / "labels.npy");

  ShuffleOptions options;
  options.seed = 42;
  options.block_rows = 64;
  options.buffer_bytes = 4 * 64 * M * d * static_cast<std::int64_t>(sizeof(float));  // 4 blocks
  options.row_count = 900;  // the last 100 rows are held out
  ShuffledBatches batches(dataset, options);
  EXPECT_EQ(batches.rows(), 900);
  EXPECT_EQ(batches.buffer_rows(), 256);
  const std::int64_t B = 64;  // 900 is not a multiple: batches straddle epochs
  std::vector<float> out(static_cast<std::size_t>(B * M * d));
  std::vector<std::int8_t> out_labels(B);
  std::vector<std::int64_t> delivered;
  for (std::int64_t step = 0; step * B < 3 * 900; ++step) {
    batches.fill(step, B, out.data(), out_labels.data());
    for (std::int64_t i = 0; i < B; ++i) {
      const float row = out[static_cast<std::size_t>(i * M * d)];
      const auto r = static_cast<std::int64_t>(row);
      ASSERT_EQ(out[static_cast<std::size_t>(i * M * d + d)], -row) << "pairing across sources";
      ASSERT_EQ(out[static_cast<std::size_t>(i * M * d + 2)], row + 0.25f);
      ASSERT_EQ(out_labels[static_cast<std::size_t>(i)], r % 3 == 0 ? 1 : 0);
      delivered.push_back(r);
    }
  }
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::set<std::int64_t> rows(delivered.begin() + epoch * 900,
                                delivered.begin() + (epoch + 1) * 900);
    EXPECT_EQ(rows.size(), 900u) << "epoch " << epoch << " delivers every row exactly once";
    EXPECT_EQ(*rows.rbegin(), 899) << "held-out rows never appear";
  }
  EXPECT_NE(std::vector<std::int64_t>(delivered.begin(), delivered.begin() + 900),
            std::vector<std::int64_t>(delivered.begin() + 900, delivered.begin() + 1800))
      << "each epoch has its own order";
  // Rows are mixed beyond a single block: the first batch draws from several blocks.
  std::set<std::int64_t> first_blocks;
  for (std::int64_t i = 0; i < B; ++i)
    first_blocks.insert(delivered[static_cast<std::size_t>(i)] / 64);
  EXPECT_GE(first_blocks.size(), 3u);
  // The same seed gives the same batch for any step, asked in any order (exact resume).
  ShuffledBatches again(dataset, options);
  std::vector<float> a(out.size()), b(out.size());
  for (std::int64_t step : {37, 3, 20, 3}) {
    again.fill(step, B, a.data(), nullptr);
    for (std::int64_t i = 0; i < B; ++i)
      EXPECT_EQ(static_cast<std::int64_t>(a[static_cast<std::size_t>(i * M * d)]),
                delivered[static_cast<std::size_t>(step * B + i)]);
  }
  options.seed = 43;
  ShuffledBatches other(dataset, options);
  other.fill(0, B, b.data(), nullptr);
  batches.fill(0, B, a.data(), nullptr);
  EXPECT_NE(a, b) << "another seed, another order";
  EXPECT_NE(error_of([&] {
              ShuffleOptions bad;
              bad.first_row = 990;
              bad.row_count = 20;
              ShuffledBatches(dataset, bad);
            }).find("outside the dataset's 1000 rows"),
            std::string::npos);
}

TEST_F(DatasetTest, PrefetchDeliversExactlyTheWrappedBatchesAndRestartsOnAJump) {
  const auto all = random_rows(500, 2, 4, 4);
  io::write_npy(dir_ / "stacked.npy", {500, 2, 4}, all);
  auto dataset =
      std::make_shared<ActivationDataset>(ActivationDataset::open({dir_ / "stacked.npy"}));
  ShuffleOptions options;
  options.seed = 9;
  options.block_rows = 32;
  ShuffledBatches reference(dataset, options);
  PrefetchingBatchSource prefetched(std::make_unique<ShuffledBatches>(dataset, options), 3);
  const std::int64_t B = 48;
  std::vector<float> expected(B * 8), got(B * 8);
  for (std::int64_t step : {0, 1, 2, 3, 4, 10, 11, 12, 2, 3, 30}) {
    reference.fill(step, B, expected.data(), nullptr);
    prefetched.fill(step, B, got.data(), nullptr);
    ASSERT_EQ(got, expected) << "step " << step;
  }
  // Another batch size restarts the worker too.
  reference.fill(5, 17, expected.data(), nullptr);
  prefetched.fill(5, 17, got.data(), nullptr);
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + 17 * 8, expected.begin()));
}

// A source that fails at one step, to check that errors reach the caller and the worker stops.
class FailingSource : public BatchSource {
 public:
  int sources() const override { return 1; }
  int width() const override { return 2; }
  void fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t*) override {
    if (step == 3) throw Error("bad row in step 3");
    for (std::int64_t i = 0; i < rows * 2; ++i) out[i] = static_cast<float>(step);
  }
  std::string identity() const override { return "failing"; }
};

TEST_F(DatasetTest, PrefetchPassesErrorsOnAndShutsDownCleanly) {
  {
    PrefetchingBatchSource source(std::make_unique<FailingSource>(), 4);
    std::vector<float> out(8);
    for (std::int64_t step = 0; step < 3; ++step) {
      source.fill(step, 4, out.data(), nullptr);
      EXPECT_EQ(out[0], static_cast<float>(step));
    }
    EXPECT_EQ(error_of([&] { source.fill(3, 4, out.data(), nullptr); }), "bad row in step 3");
    // After an error, another step works again (a fresh worker).
    source.fill(4, 4, out.data(), nullptr);
    EXPECT_EQ(out[0], 4.0f);
  }
  // Destroyed while the worker is ahead and blocked on a full queue: must join, not hang.
  for (int i = 0; i < 20; ++i) {
    PrefetchingBatchSource source(std::make_unique<FailingSource>(), 2);
    std::vector<float> out(8);
    source.fill(0, 4, out.data(), nullptr);
  }
}

TEST_F(DatasetTest, WriterShardsRoundTripThroughTheManifest) {
  const int M = 2, d = 6;
  const std::int64_t N = 250;
  const auto all = random_rows(N, M, d, 5);
  for (StoredType dtype : {StoredType::F32, StoredType::F16, StoredType::BF16}) {
    SCOPED_TRACE(std::string(to_string(dtype)));
    const fs::path out = dir_ / std::string(to_string(dtype));
    ActivationWriterOptions options;
    options.source_names = {"base", "chat"};
    options.width = d;
    options.dtype = dtype;
    options.shard_rows = 64;
    options.labels = true;
    options.token_ids = true;
    {
      ActivationWriter writer(out, options);
      // Source 0 in uneven pieces, source 1 all at once, as two separate forward passes would.
      const auto base = column(all, N, M, d, 0), chat = column(all, N, M, d, 1);
      for (std::int64_t r = 0; r < N;) {
        const std::int64_t n = std::min<std::int64_t>(N - r, 1 + (r * 7) % 50);
        writer.append(0, std::span(base).subspan(static_cast<std::size_t>(r * d),
                                                 static_cast<std::size_t>(n * d)));
        r += n;
      }
      EXPECT_NE(error_of([&] { writer.close(); }).find("\"chat\" has 0 rows but \"base\" has 250"),
                std::string::npos);
      writer.append(1, chat);
      std::vector<std::int8_t> labels(N);
      std::vector<std::int32_t> tokens(N);
      for (std::int64_t r = 0; r < N; ++r) {
        labels[static_cast<std::size_t>(r)] = static_cast<std::int8_t>(r % 2);
        tokens[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(7 * r);
      }
      writer.append_labels(labels);
      writer.append_token_ids(tokens);
      EXPECT_EQ(writer.close(), out / "manifest.json");
    }
    const ActivationDataset data = ActivationDataset::open({out / "manifest.json"});
    EXPECT_EQ(data.rows(), N);
    EXPECT_EQ(data.shards(), 4u);  // 64 + 64 + 64 + 58
    std::vector<float> values(all.size());
    data.read(0, N, values.data());
    for (std::size_t i = 0; i < all.size(); ++i) {
      const float expected = dtype == StoredType::F32 ? all[i]
                             : dtype == StoredType::F16
                                 ? io::half_to_float(io::float_to_half(all[i]))
                                 : io::bfloat16_to_float(io::float_to_bfloat16(all[i]));
      ASSERT_EQ(values[i], expected) << i;
    }
    std::vector<std::int32_t> tokens(N);
    data.read_token_ids(0, N, tokens.data());
    EXPECT_EQ(tokens[249], 7 * 249);
    EXPECT_NE(error_of([&] { ActivationWriter again(out, options); }).find("manifest.json exists"),
              std::string::npos);
  }
  ActivationWriterOptions bad;
  bad.source_names = {"ok", "not/ok"};
  bad.width = 3;
  EXPECT_NE(error_of([&] { ActivationWriter writer(dir_ / "bad", bad); }).find("\"not/ok\""),
            std::string::npos);
  bad.source_names = {"a"};
  ActivationWriter writer(dir_ / "nan", bad);
  EXPECT_NE(error_of([&] {
              writer.append(0, std::vector<float>{1.0f, NAN, 2.0f});
            }).find("non-finite value nan in source \"a\" at appended row 0"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              writer.append(0, std::vector<float>{1.0f, 2.0f});
            }).find("not whole rows of width 3"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              writer.append_labels(std::vector<std::int8_t>{1});
            }).find("created without labels"),
            std::string::npos);
  writer.append(0, std::vector<float>{1.0f, 2.0f, 3.0f});
  writer.close();
}

}  // namespace
}  // namespace crosscoder
