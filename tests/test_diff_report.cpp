// The diff report: metric lookup, ranking with class filters, and the JSON it writes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "crosscoder/crosscoder.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

namespace fs = std::filesystem;

DiffReport make_report(std::mt19937_64& rng) {
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 5;
  c.latents = 24;
  c.k = 3;
  c.activation = Activation::topk;
  c.exclusive = {4, 5};
  auto model = std::make_unique<Crosscoder>(c, make_backend(BackendKind::cpu), rng());
  const std::vector<float> x = testing::random_activations(64, 2, 5, rng);
  model->fit_normaliser(x, 64);
  DiffReport report;
  report.model_config = c.to_json();
  report.weights = weight_metrics(*model);
  DataMetricsAccumulator data(*model);
  data.add(x, 64);
  report.data = data.result();
  std::vector<std::int8_t> labels(64);
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int8_t>(i % 3 == 0);
  ContrastAccumulator contrast(c.latents);
  contrast.add(model->encode(x, 64), labels);
  report.contrast = contrast.result();
  return report;
}

TEST(DiffReport, RanksByAnyMetricWithinAClass) {
  std::mt19937_64 rng(std::random_device{}());
  const DiffReport report = make_report(rng);
  for (const std::string& name : latent_metric_names(report)) {
    const std::vector<double> values = latent_metric(report, name);
    ASSERT_EQ(values.size(), 24u) << name;
    const std::vector<std::int32_t> order = rank_latents(report, name);
    ASSERT_EQ(order.size(), 24u);
    for (std::size_t i = 1; i < order.size(); ++i)
      ASSERT_GE(values[order[i - 1]], values[order[i]]) << name;
    const std::vector<std::int32_t> ascending = rank_latents(report, name, true);
    for (std::size_t i = 1; i < ascending.size(); ++i)
      ASSERT_LE(values[ascending[i - 1]], values[ascending[i]]) << name;
  }
  const std::vector<std::int32_t> exclusive = rank_latents(report, "relative_norm_1", false, 1);
  ASSERT_EQ(exclusive.size(), 5u);  // the five latents of source 1's dedicated block
  for (std::int32_t f : exclusive) EXPECT_GE(f, 19);
  try {
    latent_metric(report, "relative_norm_7");
    FAIL();
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("relative_norm_7"), std::string::npos);
  }
  DiffReport weights_only = report;
  weights_only.data.reset();
  weights_only.contrast.reset();
  EXPECT_THROW(latent_metric(weights_only, "cohens_d"), Error);
  EXPECT_EQ(parse_latent_class(latent_class_name(1)), 1);
  EXPECT_EQ(parse_latent_class("shared"), kSharedLatent);
  EXPECT_THROW(parse_latent_class("exclusive:"), Error);
}

TEST(DiffReport, JsonCarriesEveryMetricOfEveryLatent) {
  std::mt19937_64 rng(std::random_device{}());
  const DiffReport report = make_report(rng);
  const fs::path path =
      fs::temp_directory_path() / ("crosscoder-diff-" + std::to_string(rng()) + ".json");
  write_diff_report_json(path, report);
  std::ifstream in(path);
  const nlohmann::json json = nlohmann::json::parse(in);
  fs::remove(path);
  EXPECT_EQ(json["format"], "crosscoder-diff-1");
  EXPECT_EQ(json["config"]["latents"], 24);
  EXPECT_EQ(json["summary"]["classes"]["exclusive:0"], 4);
  EXPECT_EQ(json["summary"]["data"]["rows"], 64);
  ASSERT_EQ(json["latents"].size(), 24u);
  for (std::size_t f = 0; f < 24; ++f) {
    const auto& entry = json["latents"][f];
    EXPECT_EQ(entry["latent"], f);
    EXPECT_EQ(entry["class"], latent_class_name(report.weights.latent_class[f]));
    EXPECT_FLOAT_EQ(entry["relative_norm"][1].get<float>(),
                    report.weights.relative_norm[f * 2 + 1]);
    EXPECT_DOUBLE_EQ(entry["cohens_d"].get<double>(), report.contrast->cohens_d[f]);
    EXPECT_DOUBLE_EQ(entry["auroc"].get<double>(), report.contrast->auroc[f]);
    EXPECT_DOUBLE_EQ(entry["frequency"].get<double>(), report.data->frequency[f]);
  }
}

}  // namespace
}  // namespace crosscoder
