// Latent examples: the streaming collector against a brute-force sort of every activation, the
// quantile samples' distribution, token windows against the dataset, the file's round trip and
// refusals, and diff()'s end-to-end pass with its density counts.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "expect_error.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

namespace fs = std::filesystem;

std::uint64_t fresh_seed() {
  return (static_cast<std::uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
}

class TempDir {
 public:
  TempDir()
      : path_(fs::temp_directory_path() / ("crosscoder-examples-" + std::to_string(fresh_seed()))) {
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

struct Fired {
  std::int64_t row;
  float value;
};

// Random codes for `rows` rows over F latents: a few entries per row, values drawn from a
// small set so that ties occur, plus zeros and negatives the collector must ignore.
HostSparseCodes random_codes(std::int64_t rows, int F, std::mt19937_64& rng) {
  HostSparseCodes codes;
  codes.rows = rows;
  codes.row_ptr.push_back(0);
  std::uniform_int_distribution<int> count(0, 6), latent(0, F - 1), level(-2, 40);
  for (std::int64_t b = 0; b < rows; ++b) {
    const int n = count(rng);
    std::vector<int> chosen;
    while (static_cast<int>(chosen.size()) < n) {
      const int f = latent(rng);
      if (std::find(chosen.begin(), chosen.end(), f) == chosen.end()) chosen.push_back(f);
    }
    for (int f : chosen) {
      codes.latent.push_back(f);
      codes.value.push_back(static_cast<float>(level(rng)) * 0.37f);
    }
    codes.row_ptr.push_back(static_cast<std::int64_t>(codes.latent.size()));
  }
  return codes;
}

// The bin of a positive activation, from the definition: 0 below 1e-3, then four per decade.
int reference_bin(double value) {
  if (value < 1e-3) return 0;
  int bin = 0;
  for (int i = 0; i < kHistogramBins - 1; ++i)
    if (value >= std::pow(10.0, -3.0 + i / 4.0)) bin = i + 1;
  return bin;
}

TEST(LatentExamples, TopExamplesAndHistogramsMatchABruteForceSort) {
  std::mt19937_64 rng(fresh_seed());
  const int F = 37;
  ExampleOptions options;
  options.top = 5;
  options.samples = 4;
  options.reservoir = 12;
  options.seed = rng();
  LatentExampleCollector collector(F, options);
  std::vector<std::vector<Fired>> all(F);
  std::int64_t row = 0;
  for (int batch = 0; batch < 9; ++batch) {
    const std::int64_t rows = 1 + static_cast<std::int64_t>(rng() % 60);
    const HostSparseCodes codes = random_codes(rows, F, rng);
    collector.add(codes, row);
    for (std::int64_t b = 0; b < rows; ++b)
      for (std::int64_t e = codes.row_ptr[b]; e < codes.row_ptr[b + 1]; ++e)
        if (codes.value[e] > 0.0f) all[codes.latent[e]].push_back({row + b, codes.value[e]});
    row += rows;
  }
  const LatentExamples got = collector.result();
  EXPECT_EQ(got.rows, row);
  int full = 0;
  for (int f = 0; f < F; ++f) {
    std::vector<Fired> sorted = all[f];
    std::stable_sort(sorted.begin(), sorted.end(),
                     [](const Fired& a, const Fired& b) { return a.value > b.value; });
    EXPECT_EQ(got.active_rows[f], static_cast<std::int64_t>(sorted.size()));
    for (int i = 0; i < options.top; ++i) {
      const std::size_t slot = static_cast<std::size_t>(f * options.top + i);
      if (i < static_cast<int>(sorted.size())) {
        EXPECT_EQ(got.top_rows[slot], sorted[i].row) << "latent " << f << " rank " << i;
        EXPECT_EQ(got.top_values[slot], sorted[i].value) << "latent " << f << " rank " << i;
      } else {
        EXPECT_EQ(got.top_rows[slot], -1);
      }
    }
    full += sorted.size() > static_cast<std::size_t>(options.top) ? 1 : 0;
    std::vector<std::int64_t> bins(kHistogramBins, 0);
    for (const Fired& a : all[f]) ++bins[reference_bin(a.value)];
    for (int b = 0; b < kHistogramBins; ++b)
      EXPECT_EQ(got.histogram[f * kHistogramBins + b], bins[b]) << "latent " << f << " bin " << b;
    // Samples are real activations of the latent, lowest first.
    const std::size_t expected = std::min<std::size_t>(all[f].size(), options.samples);
    for (std::size_t i = 0; i < static_cast<std::size_t>(options.samples); ++i) {
      const std::size_t slot = static_cast<std::size_t>(f * options.samples) + i;
      if (i >= expected) {
        EXPECT_EQ(got.sample_rows[slot], -1);
        continue;
      }
      const bool real = std::any_of(all[f].begin(), all[f].end(), [&](const Fired& a) {
        return a.row == got.sample_rows[slot] && a.value == got.sample_values[slot];
      });
      EXPECT_TRUE(real) << "latent " << f << " sample " << i << " is not one of its activations";
      if (i > 0) {
        EXPECT_LE(got.sample_values[slot - 1], got.sample_values[slot]);
      }
    }
  }
  ASSERT_GT(full, 5) << "too few latents overflowed their top slots: the heap was not tested";
  // A latent outside [0, F) is refused.
  HostSparseCodes outside;
  outside.rows = 1;
  outside.row_ptr = {0, 1};
  outside.latent = {F};
  outside.value = {1.0f};
  EXPECT_THROW(collector.add(outside, row), Error);

  // Deterministic for a seed and the same batches.
  std::mt19937_64 again(rng());
  const std::uint64_t replay = again();
  const auto run = [&](std::uint64_t seed) {
    std::mt19937_64 source(replay);
    ExampleOptions o = options;
    o.seed = seed;
    LatentExampleCollector c(F, o);
    for (int batch = 0; batch < 5; ++batch) c.add(random_codes(80, F, source), batch * 80);
    return c.result();
  };
  EXPECT_EQ(run(7).sample_rows, run(7).sample_rows);
  EXPECT_NE(run(7).sample_rows, run(8).sample_rows);
}

TEST(LatentExamples, SamplesSitAtTheQuantilesOfTheDistribution) {
  std::mt19937_64 rng(fresh_seed());
  ExampleOptions options;
  options.top = 1;
  options.samples = 4;
  options.reservoir = 400;
  options.seed = rng();
  LatentExampleCollector collector(1, options);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (int batch = 0; batch < 50; ++batch) {
    HostSparseCodes codes;
    codes.rows = 200;
    codes.row_ptr.push_back(0);
    for (int b = 0; b < 200; ++b) {
      codes.latent.push_back(0);
      codes.value.push_back(1e-6f + uniform(rng));
      codes.row_ptr.push_back(b + 1);
    }
    collector.add(codes, batch * 200);
  }
  const LatentExamples got = collector.result();
  // Order statistics of a uniform sample of 400 at (i + ½)/4: standard error about 0.025.
  for (int i = 0; i < 4; ++i)
    EXPECT_NEAR(got.sample_values[i], (i + 0.5) / 4.0, 0.1) << "sample " << i;
  // Rows from all over the stream, not the first reservoir's worth.
  EXPECT_GT(*std::max_element(got.sample_rows.begin(), got.sample_rows.end()), 400);
}

TEST(LatentExamples, OptionsAreCheckedByName) {
  const auto refused = [](ExampleOptions o, const std::string& words) {
    try {
      LatentExampleCollector collector(4, o);
      ADD_FAILURE() << "accepted; expected an error with '" << words << "'";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(words), std::string::npos) << error.what();
    }
  };
  ExampleOptions o;
  o.top = -1;
  refused(o, "top");
  o = {};
  o.samples = 50;
  refused(o, "reservoir");
  o = {};
  o.window_after = 5000;
  refused(o, "window_after");
  o = {};
  o.top = 0;
  o.samples = 0;
  refused(o, "top + samples");
  EXPECT_THROW(LatentExampleCollector(0, ExampleOptions{}), Error);
}

class DiffExamples : public ::testing::Test {
 protected:
  // A model and a written dataset of `rows` rows with token ids (and labels).
  void SetUp() override {
    rng_.seed(fresh_seed());
    config_.sources = 2;
    config_.width = 8;
    config_.latents = 48;
    config_.k = 3;
    config_.activation = Activation::topk;
    model_ = std::make_unique<Crosscoder>(config_, make_backend(BackendKind::cpu), rng_());
    x_ = testing::random_activations(kRows, 2, 8, rng_);
    model_->fit_normaliser(x_, kRows);
    std::uniform_int_distribution<std::int32_t> token(0, 511);
    for (int b = 0; b < kRows; ++b) tokens_.push_back(token(rng_));
    // Documents of random lengths 1 … 9, so windows meet boundaries on both sides.
    for (std::int32_t id = 0; static_cast<int>(documents_.size()) < kRows; ++id)
      documents_.insert(documents_.end(), 1 + rng_() % 9, id);
    documents_.resize(kRows);
  }
  fs::path write_dataset(bool with_tokens) {
    ActivationWriterOptions options;
    options.source_names = {"base", "tuned"};
    options.width = 8;
    options.shard_rows = 97;  // several shards, so windows cross shard boundaries
    options.token_ids = with_tokens;
    options.document_ids = with_tokens;
    const fs::path directory = dir_ / (with_tokens ? "with-tokens" : "without-tokens");
    ActivationWriter writer(directory, options);
    writer.append_all(x_);
    if (with_tokens) {
      writer.append_token_ids(tokens_);
      writer.append_document_ids(documents_);
    }
    return writer.close();
  }

  static constexpr int kRows = 300;
  TempDir dir_;
  std::mt19937_64 rng_;
  CrosscoderConfig config_;
  std::unique_ptr<Crosscoder> model_;
  std::vector<float> x_;
  std::vector<std::int32_t> tokens_;
  std::vector<std::int32_t> documents_;
};

TEST_F(DiffExamples, DiffKeepsEachLatentsTopRowsWithTheirTokenWindows) {
  const ActivationDataset dataset = ActivationDataset::open({write_dataset(true)});
  DiffOptions options;
  options.examples = ExampleOptions{};
  options.examples->top = 6;
  options.examples->samples = 3;
  options.examples->reservoir = 12;
  options.examples->window_before = 5;
  options.examples->window_after = 2;
  options.pass.chunk_rows = 64;  // several batches
  options.scaling = ScalingLatents::none;
  const DiffReport report = diff(*model_, dataset, options);
  ASSERT_TRUE(report.examples.has_value());
  const LatentExamples& e = *report.examples;
  ASSERT_TRUE(e.has_windows());
  EXPECT_TRUE(e.windows_stop_at_documents);

  // Brute force over the model's own encoding of every row.
  const HostSparseCodes codes = model_->encode(x_, kRows);
  std::vector<std::vector<Fired>> all(config_.latents);
  for (int b = 0; b < kRows; ++b)
    for (std::int64_t i = codes.row_ptr[b]; i < codes.row_ptr[b + 1]; ++i)
      if (codes.value[i] > 0.0f) all[codes.latent[i]].push_back({b, codes.value[i]});
  int checked = 0;
  const int W = e.window();
  for (int f = 0; f < config_.latents; ++f) {
    std::stable_sort(all[f].begin(), all[f].end(),
                     [](const Fired& a, const Fired& b) { return a.value > b.value; });
    for (int i = 0; i < 6 && i < static_cast<int>(all[f].size()); ++i) {
      const std::size_t slot = static_cast<std::size_t>(f * 6 + i);
      ASSERT_EQ(e.top_rows[slot], all[f][i].row) << "latent " << f << " rank " << i;
      for (int w = 0; w < W; ++w) {
        const std::int64_t r = e.top_rows[slot] - 5 + w;
        const bool same_document =
            r >= 0 && r < kRows && documents_[r] == documents_[e.top_rows[slot]];
        const std::int32_t want = same_document ? tokens_[r] : -1;
        ASSERT_EQ(e.top_windows[slot * W + w], want) << "latent " << f << " rank " << i;
      }
      ++checked;
    }
  }
  ASSERT_GT(checked, 50);

  // The JSON's density counts agree with the frequencies.
  const nlohmann::json json = nlohmann::json::parse(diff_report_json(report));
  std::int64_t over_1 = 0, over_10 = 0;
  for (double frequency : report.data->frequency) {
    over_1 += frequency > 0.01;
    over_10 += frequency > 0.1;
  }
  EXPECT_EQ(json["summary"]["data"]["freq_over_1pct"], over_1);
  EXPECT_EQ(json["summary"]["data"]["freq_over_10pct"], over_10);
  EXPECT_EQ(json["summary"]["data"]["density_by_class"]["shared"]["latents"], config_.latents);
  EXPECT_EQ(json["summary"]["examples"]["top"], 6);

  // The file round-trips everything.
  const fs::path file = dir_ / "examples.safetensors";
  save_examples(file, e, {{"model", "test"}});
  const LatentExamples back = load_examples(file);
  EXPECT_EQ(back.top_rows, e.top_rows);
  EXPECT_EQ(back.top_values, e.top_values);
  EXPECT_EQ(back.sample_rows, e.sample_rows);
  EXPECT_EQ(back.sample_values, e.sample_values);
  EXPECT_EQ(back.histogram, e.histogram);
  EXPECT_EQ(back.active_rows, e.active_rows);
  EXPECT_EQ(back.top_windows, e.top_windows);
  EXPECT_EQ(back.sample_windows, e.sample_windows);
  EXPECT_EQ(back.rows, e.rows);
  EXPECT_EQ(back.options.window_before, 5);
}

TEST_F(DiffExamples, FeaturePagesShowTheExamplesAsEscapedText) {
  const ActivationDataset dataset = ActivationDataset::open({write_dataset(true)});
  DiffOptions options;
  options.examples = ExampleOptions{};
  options.scaling = ScalingLatents::none;
  const DiffReport report = diff(*model_, dataset, options);
  const LatentExamples& e = *report.examples;
  // The first 4 latents by the last source's relative norm each have a page.
  const std::vector<std::int32_t> order = rank_latents(report, "relative_norm_1");
  const auto f = static_cast<std::size_t>(order[0]);
  const std::size_t slot = f * static_cast<std::size_t>(e.options.top);
  ASSERT_GE(e.top_rows[slot], 0);
  const std::int32_t own = e.top_windows[slot * e.window() + e.options.window_before];
  // Token ids are below 512; the top example's own piece would break the page unescaped.
  std::vector<std::string> pieces;
  for (int id = 0; id < 512; ++id) pieces.push_back(" t" + std::to_string(id));
  pieces[static_cast<std::size_t>(own)] = "<b>&\n";
  const Vocabulary vocabulary(pieces, PieceEncoding::plain);
  HtmlReportOptions html_options;
  html_options.feature_pages = 4;
  html_options.examples_per_page = 3;
  html_options.vocabulary = &vocabulary;
  const std::string html = diff_report_html(report, html_options);
  for (int i = 0; i < 4; ++i)
    EXPECT_NE(html.find(fmt::format("<section class='feature' id='latent-{}'", order[i])),
              std::string::npos)
        << "latent " << order[i];
  EXPECT_EQ(html.find("<section class='feature' id='latent-" + std::to_string(order[4]) + "'"),
            std::string::npos);
  // The top example's token is marked with its activation, as escaped text.
  const std::string marked = fmt::format("<mark data-activation='{:.6g}'", e.top_values[slot]);
  const std::size_t at = html.find(marked, html.find("id='latent-" + std::to_string(f) + "'"));
  ASSERT_NE(at, std::string::npos);
  EXPECT_NE(html.find("&lt;b&gt;&amp;\\n</mark>", at), std::string::npos);
  EXPECT_EQ(html.find("<b>&"), std::string::npos) << "a piece reached the page unescaped";
  // A vocabulary that does not cover the data is refused by name.
  const Vocabulary small(std::vector<std::string>{"a", "b"}, PieceEncoding::plain);
  html_options.vocabulary = &small;
  testing::expect_error([&] { diff_report_html(report, html_options); },
                        "outside the vocabulary's 2 tokens");
}

TEST_F(DiffExamples, WithoutTokenIdsExamplesHaveRowsButNoWindows) {
  const ActivationDataset dataset = ActivationDataset::open({write_dataset(false)});
  DiffOptions options;
  options.examples = ExampleOptions{};
  options.scaling = ScalingLatents::none;
  const DiffReport report = diff(*model_, dataset, options);
  ASSERT_TRUE(report.examples.has_value());
  EXPECT_FALSE(report.examples->has_windows());
  EXPECT_GE(report.examples->top_rows[0], -1);
  LatentExamples examples = *report.examples;
  try {
    attach_windows(examples, dataset);
    FAIL() << "windows attached without token ids";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("no token ids"), std::string::npos) << error.what();
  }
}

TEST_F(DiffExamples, BadExamplesFilesAreRefusedByName) {
  LatentExampleCollector collector(config_.latents, ExampleOptions{});
  collector.add(model_->encode(x_, kRows), 0);
  const LatentExamples e = collector.result();
  const auto refused = [](const fs::path& path, const std::string& words) {
    try {
      load_examples(path);
      ADD_FAILURE() << path << " accepted; expected an error with '" << words << "'";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(words), std::string::npos) << error.what();
    }
  };
  // A model checkpoint is not an examples file.
  model_->save(dir_ / "model.safetensors");
  refused(dir_ / "model.safetensors",
          "format 'crosscoder-checkpoint-1', expected 'crosscoder-examples-1'");
  // A row beyond the rows the file says it covers.
  LatentExamples bad = e;
  bad.rows = 10;
  save_examples(dir_ / "bad-rows.safetensors", bad);
  refused(dir_ / "bad-rows.safetensors", "top.rows holds row");
  // A tensor of the wrong shape.
  io::SafetensorsWriter writer;
  writer.add_int64("active_rows", {e.latents}, e.active_rows);
  writer.add_int64("histogram", {e.latents - 1, kHistogramBins},
                   std::span<const std::int64_t>(e.histogram)
                       .first(static_cast<std::size_t>((e.latents - 1) * kHistogramBins)));
  writer.set_metadata("format", "crosscoder-examples-1");
  writer.set_metadata("options", R"({"top":20,"samples":10,"reservoir":40,"window_before":16,)"
                                 R"("window_after":4,"seed":0})");
  writer.set_metadata("rows", "300");
  writer.set_metadata("windows_stop_at_documents", "false");
  writer.write(dir_ / "bad-shape.safetensors");
  refused(dir_ / "bad-shape.safetensors",
          "tensor 'histogram' has shape [47, 30], expected [48, 30]");
}

}  // namespace
}  // namespace crosscoder
