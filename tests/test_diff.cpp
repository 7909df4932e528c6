// The diff stage as library calls: diff() over a dataset gives what the accumulators give over
// the same rows in one batch, whatever the chunking, with labels from the dataset or the
// options; progress, the stop hook, row limits and shape errors; measure_data and
// check_dataset.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/io/npy.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kRows = 300;
constexpr int kSources = 2, kWidth = 6, kLatents = 40;

class DiffTest : public ::testing::Test {
 protected:
  DiffTest() : rng_(std::random_device{}()) {
    dir_ = fs::temp_directory_path() / ("crosscoder-diff-" + std::to_string(rng_()));
    fs::create_directories(dir_);
    x_ = testing::random_activations(kRows, kSources, kWidth, rng_);
    io::write_npy(dir_ / "stacked.npy", {kRows, kSources, kWidth}, x_);
    labels_.resize(kRows);
    std::uniform_int_distribution<int> label(-1, 1);  // -1: ignored
    for (std::int8_t& l : labels_) l = static_cast<std::int8_t>(label(rng_));
    std::vector<std::int32_t> wide(labels_.begin(), labels_.end());
    io::write_npy(dir_ / "labels.npy", {kRows}, wide);
    CrosscoderConfig c;
    c.sources = kSources;
    c.width = kWidth;
    c.latents = kLatents;
    c.k = 4;
    c.activation = Activation::topk;  // per-row selection: codes do not depend on the chunking
    c.exclusive = {5, 5};
    model_ = std::make_unique<Crosscoder>(c, make_backend(BackendKind::cpu), rng_());
    model_->fit_normaliser(x_, kRows);
  }
  ~DiffTest() override { fs::remove_all(dir_); }

  ActivationDataset open() const { return ActivationDataset::open({dir_ / "stacked.npy"}); }
  ActivationDataset open_labelled() const {
    ActivationDataset dataset = open();
    dataset.attach_labels(dir_ / "labels.npy");
    return dataset;
  }
  // No progress bar, no Latent Scaling.
  static DiffOptions contrast_only() {
    DiffOptions options;
    options.pass.show_progress = false;
    options.scaling = ScalingLatents::none;
    return options;
  }

  std::mt19937_64 rng_;
  fs::path dir_;
  std::vector<float> x_;
  std::vector<std::int8_t> labels_;
  std::unique_ptr<Crosscoder> model_;
};

// The pass encodes in chunks and the reference in one batch: the CPU GEMM may take another
// kernel for another row count, so activations agree to float32 rounding (~1e-7), not bitwise.
// A row lost or counted twice moves these statistics by far more than the tolerance.
void expect_near_vectors(const std::vector<double>& got, const std::vector<double>& want,
                         const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 1e-5 * (1.0 + std::abs(want[i]))) << what << " [" << i << "]";
}

TEST_F(DiffTest, MatchesTheAccumulatorsOverOneBatchWhateverTheChunking) {
  // The accumulators over all rows at once (each tested against float64 references elsewhere).
  DataMetricsAccumulator data(*model_);
  data.add(x_, kRows);
  const DataMetrics want_data = data.result();
  ContrastAccumulator contrast(kLatents);
  contrast.add(model_->encode(x_, kRows), labels_);
  const LatentContrast want_contrast = contrast.result();
  const std::vector<std::int32_t> measured = {0, 7, 39};
  LatentScalingAccumulator scaling(*model_, measured);
  scaling.add(x_, kRows);
  const LatentScaling want_scaling = scaling.result();

  ActivationDataset dataset = open();
  dataset.attach_labels(dir_ / "labels.npy");
  for (const std::int64_t chunk : {std::int64_t{7}, std::int64_t{64}, std::int64_t{4096}}) {
    SCOPED_TRACE(chunk);
    DiffOptions options;
    options.scaling = ScalingLatents::listed;
    options.scaling_latents = measured;
    options.pass.chunk_rows = chunk;
    options.pass.show_progress = false;
    const DiffReport report = diff(*model_, dataset, options);
    EXPECT_EQ(report.model_config, model_->config().to_json());
    EXPECT_EQ(report.source_names, dataset.source_names());
    EXPECT_EQ(report.weights.latent_class, weight_metrics(*model_).latent_class);
    ASSERT_TRUE(report.data && report.contrast && report.scaling);
    EXPECT_EQ(report.data->rows, kRows);
    EXPECT_EQ(report.data->dead_latents, want_data.dead_latents);
    EXPECT_NEAR(report.data->l0, want_data.l0, 1e-12);
    expect_near_vectors(report.data->frequency, want_data.frequency, "frequency");
    expect_near_vectors(report.data->mean_activation, want_data.mean_activation, "mean");
    expect_near_vectors(report.data->fve, want_data.fve, "fve");
    expect_near_vectors(report.data->mse, want_data.mse, "mse");
    EXPECT_EQ(report.contrast->positives, want_contrast.positives);
    EXPECT_EQ(report.contrast->negatives, want_contrast.negatives);
    expect_near_vectors(report.contrast->cohens_d, want_contrast.cohens_d, "cohens_d");
    expect_near_vectors(report.contrast->auroc, want_contrast.auroc, "auroc");
    EXPECT_EQ(report.scaling->latents, measured);
    expect_near_vectors(report.scaling->beta_error, want_scaling.beta_error, "beta_error");
    expect_near_vectors(report.scaling->nu_reconstruction, want_scaling.nu_reconstruction,
                        "nu_reconstruction");
    // The JSON is the report's (the CLI writes the same call's result).
    EXPECT_EQ(diff_report_json(report).substr(0, 1), "{");
  }
}

TEST_F(DiffTest, LabelsFromTheOptionsEqualAttachedLabels) {
  const ActivationDataset attached = open_labelled();
  DiffOptions options = contrast_only();
  const DiffReport from_file = diff(*model_, attached, options);
  options.labels = labels_;
  const DiffReport from_options = diff(*model_, open(), options);
  ASSERT_TRUE(from_file.contrast && from_options.contrast);
  EXPECT_EQ(from_options.contrast->cohens_d, from_file.contrast->cohens_d);
  EXPECT_EQ(from_options.contrast->auroc, from_file.contrast->auroc);
  EXPECT_FALSE(from_options.scaling);
  // No labels anywhere: no contrast; too few labels: an error naming both counts.
  options.labels.reset();
  EXPECT_FALSE(diff(*model_, open(), options).contrast);
  options.labels = std::vector<std::int8_t>(10, 1);
  try {
    diff(*model_, open(), options);
    FAIL() << "10 labels for 300 rows accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("10 labels for 300 rows"), std::string::npos);
  }
}

// DiffOptions::cohens_d and class_rule reach the report, and the JSON says which were used.
TEST_F(DiffTest, CohensDAndClassRuleOptionsReachTheReportAndTheJson) {
  const ActivationDataset attached = open_labelled();
  DiffOptions options = contrast_only();
  options.cohens_d = CohensD::average;
  const DiffReport report = diff(*model_, attached, options);
  ContrastAccumulator contrast(kLatents);
  contrast.add(model_->encode(x_, kRows), labels_);
  const LatentContrast want = contrast.result(CohensD::average);
  ASSERT_TRUE(report.contrast);
  EXPECT_EQ(report.contrast->cohens_d_kind, CohensD::average);
  expect_near_vectors(report.contrast->cohens_d, want.cohens_d, "cohens_d");
  const auto json = nlohmann::json::parse(diff_report_json(report));
  EXPECT_EQ(json["summary"]["contrast"]["cohens_d"], "average");
  EXPECT_EQ(json["summary"]["class_rule"], "relative_norm");
  options.cohens_d = CohensD::pooled;
  options.class_rule = ClassRule::minder;
  const DiffReport minder = diff(*model_, attached, options);
  EXPECT_EQ(minder.weights.latent_class,
            weight_metrics(*model_, 0.9, ClassRule::minder).latent_class);
  const auto pooled = nlohmann::json::parse(diff_report_json(minder));
  EXPECT_EQ(pooled["summary"]["contrast"]["cohens_d"], "pooled");
  EXPECT_EQ(pooled["summary"]["class_rule"], "minder");
}

TEST_F(DiffTest, OneSidedLabelsWarnAndKeepTheRest) {
  std::vector<std::string> warnings;
  set_log_sink([&](LogLevel level, std::string_view message) {
    if (level == LogLevel::warning) warnings.emplace_back(message);
  });
  DiffOptions options;
  options.pass.show_progress = false;
  options.labels = std::vector<std::int8_t>(kRows, 0);
  const DiffReport report = diff(*model_, open(), options);
  set_log_sink({});
  EXPECT_FALSE(report.contrast);
  EXPECT_TRUE(report.data);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("no contrast ranking"), std::string::npos);
}

TEST_F(DiffTest, ReportsProgressStopsOnRequestAndHonoursRows) {
  DiffOptions options;
  options.pass.show_progress = false;
  options.pass.chunk_rows = 50;
  options.rows = 120;
  std::vector<std::int64_t> seen;
  options.pass.on_progress = [&](std::int64_t done, std::int64_t total) {
    EXPECT_EQ(total, 120);
    seen.push_back(done);
  };
  EXPECT_EQ(diff(*model_, open(), options).data->rows, 120);
  EXPECT_EQ(seen, (std::vector<std::int64_t>{50, 100, 120}));

  seen.clear();
  options.rows = 0;
  options.pass.on_progress = [&](std::int64_t done, std::int64_t total) {
    EXPECT_EQ(total, kRows);
    seen.push_back(done);
  };
  int polls = 0;
  options.pass.should_stop = [&] { return ++polls == 3; };
  try {
    diff(*model_, open(), options);
    FAIL() << "the stop hook was ignored";
  } catch (const Cancelled& stopped) {
    EXPECT_NE(std::string(stopped.what()).find("after 100 of 300 rows"), std::string::npos)
        << stopped.what();
  }
  EXPECT_EQ(seen, (std::vector<std::int64_t>{50, 100}));
}

TEST_F(DiffTest, RefusesDataOfAnotherShape) {
  std::vector<float> one_source(x_.begin(), x_.begin() + kRows * kWidth);
  io::write_npy(dir_ / "one.npy", {kRows, kWidth}, one_source);
  const ActivationDataset narrow = ActivationDataset::open({dir_ / "one.npy"});
  try {
    diff(*model_, narrow);
    FAIL();
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what())
                  .find("the crosscoder has 2 sources of width 6 but the data has 1 of width 6"),
              std::string::npos)
        << error.what();
  }
  EXPECT_THROW(measure_data(*model_, narrow, 0, 10), Error);
}

TEST_F(DiffTest, MeasureDataEqualsTheAccumulatorOnTheSameRows) {
  DataMetricsAccumulator want(*model_);
  const std::int64_t first = 211, count = 89;
  want.add(std::span<const float>(x_).subspan(first * kSources * kWidth), count);
  PassControl pass;
  pass.chunk_rows = 13;
  pass.show_progress = false;
  const DataMetrics got = measure_data(*model_, open(), first, count, pass);
  EXPECT_EQ(got.rows, count);
  expect_near_vectors(got.fve, want.result().fve, "fve");
  expect_near_vectors(got.frequency, want.result().frequency, "frequency");
  EXPECT_THROW(measure_data(*model_, open(), 250, 51, pass), Error);
  EXPECT_THROW(measure_data(*model_, open(), 0, 0, pass), Error);
}

TEST_F(DiffTest, CheckDatasetCountsLabelsAndNamesANonFiniteValue) {
  ActivationDataset dataset = open();
  dataset.attach_labels(dir_ / "labels.npy");
  PassControl pass;
  pass.show_progress = false;
  pass.chunk_rows = 17;
  const DatasetCheck check = check_dataset(dataset, pass);
  EXPECT_EQ(check.rows, kRows);
  EXPECT_EQ(check.positives, std::count(labels_.begin(), labels_.end(), 1));
  EXPECT_EQ(check.negatives, std::count(labels_.begin(), labels_.end(), 0));
  EXPECT_EQ(check.ignored, std::count(labels_.begin(), labels_.end(), -1));

  std::vector<float> broken = x_;
  broken[static_cast<std::size_t>(123 * kSources * kWidth + kWidth + 2)] = std::nanf("");
  io::write_npy(dir_ / "broken.npy", {kRows, kSources, kWidth}, broken);
  try {
    check_dataset(ActivationDataset::open({dir_ / "broken.npy"}), pass);
    FAIL() << "NaN not found";
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("broken.npy"), std::string::npos) << message;
    EXPECT_NE(message.find("123"), std::string::npos) << message;
  }
}

TEST_F(DiffTest, AccumulatorRefusesLabelsItWasNotBuiltFor) {
  DiffOptions options;
  options.scaling = ScalingLatents::none;
  DiffAccumulator unlabelled(*model_, options, /*with_labels=*/false);
  EXPECT_THROW(unlabelled.add(x_, kRows, labels_), Error);
  DiffAccumulator labelled(*model_, options, /*with_labels=*/true);
  EXPECT_THROW(labelled.add(x_, kRows), Error);
  EXPECT_THROW(labelled.result(), Error);  // no rows yet
  labelled.add(x_, kRows, labels_);
  EXPECT_EQ(labelled.result().data->rows, kRows);
}

TEST(DiffLatentChoice, ExclusiveToLastKeepsTheLargestRelativeNormsInIndexOrder) {
  std::mt19937_64 rng(std::random_device{}());
  WeightMetrics weights;
  weights.sources = 3;
  const int F = 500;
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int f = 0; f < F; ++f) {
    const double r = unit(rng);
    weights.latent_class.push_back(r > 0.6 ? 2 : (r > 0.3 ? kSharedLatent : 0));
    for (int m = 0; m < 3; ++m) weights.relative_norm.push_back(static_cast<float>(unit(rng)));
  }
  for (const std::size_t maximum : {std::size_t{5}, std::size_t{50}, std::size_t{10000}}) {
    // Brute force: every latent of class 2, by relative norm of source 2, the first `maximum`.
    std::vector<std::int32_t> want;
    for (int f = 0; f < F; ++f)
      if (weights.latent_class[f] == 2) want.push_back(f);
    std::stable_sort(want.begin(), want.end(), [&](std::int32_t a, std::int32_t b) {
      return weights.relative_norm[a * 3 + 2] > weights.relative_norm[b * 3 + 2];
    });
    if (want.size() > maximum) want.resize(maximum);
    std::sort(want.begin(), want.end());
    EXPECT_EQ(latents_exclusive_to_last(weights, maximum), want) << maximum;
  }
  weights.sources = 1;
  EXPECT_TRUE(latents_exclusive_to_last(weights, 10).empty());
}

}  // namespace
}  // namespace crosscoder
