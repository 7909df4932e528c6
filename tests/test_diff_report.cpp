// The diff report: metric lookup, ranking with class filters, and the JSON it writes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

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
  LatentScalingAccumulator scaling(*model, {1, 20});
  scaling.add(x, 64);
  report.scaling = scaling.result();
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
    // Sorted, with NaN (latents a metric did not measure) after every number.
    const auto sorted = [&](const std::vector<std::int32_t>& ranked, bool ascending) {
      for (std::size_t i = 1; i < ranked.size(); ++i) {
        const double a = values[ranked[i - 1]], b = values[ranked[i]];
        if (std::isnan(b)) continue;
        if (std::isnan(a) || (ascending ? a > b : a < b)) return false;
      }
      return true;
    };
    EXPECT_TRUE(sorted(order, false)) << name;
    EXPECT_TRUE(sorted(rank_latents(report, name, true), true)) << name;
  }
  // Source 1's class: its dedicated block (latents 19-23, no weights for source 0) and any
  // shared latent whose random initial decoder happens to lie almost all in source 1.
  const std::vector<std::int32_t> exclusive = rank_latents(report, "relative_norm_1", false, 1);
  std::set<std::int32_t> want;
  for (std::int32_t f = 0; f < 24; ++f)
    if (report.weights.latent_class[f] == 1) want.insert(f);
  for (std::int32_t f = 19; f < 24; ++f) EXPECT_EQ(want.count(f), 1u) << f;
  EXPECT_EQ(std::set<std::int32_t>(exclusive.begin(), exclusive.end()), want);
  EXPECT_EQ(exclusive.size(), want.size());
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
    EXPECT_EQ(entry["index"], f);
    EXPECT_EQ(entry["class"], latent_class_name(report.weights.latent_class[f]));
    EXPECT_FLOAT_EQ(entry["relative_norm"][1].get<float>(),
                    report.weights.relative_norm[f * 2 + 1]);
    EXPECT_DOUBLE_EQ(entry["cohens_d"].get<double>(), report.contrast->cohens_d[f]);
    EXPECT_DOUBLE_EQ(entry["auroc"].get<double>(), report.contrast->auroc[f]);
    EXPECT_DOUBLE_EQ(entry["frequency"].get<double>(), report.data->frequency[f]);
  }
}

TEST(DiffReport, LatentScalingMetricsAreNaNForUnmeasuredLatentsAndRankLast) {
  std::mt19937_64 rng(std::random_device{}());
  const DiffReport report = make_report(rng);
  const std::vector<double> nu = latent_metric(report, "nu_error_0");
  for (std::size_t f = 0; f < nu.size(); ++f) {
    if (f == 1 || f == 20) {
      EXPECT_FALSE(std::isnan(nu[f]));
    } else {
      EXPECT_TRUE(std::isnan(nu[f])) << f;
    }
  }
  EXPECT_EQ(nu[20], report.scaling->nu_error[1 * 2 + 0]);
  for (const bool ascending : {false, true}) {
    const std::vector<std::int32_t> order = rank_latents(report, "beta_error_1", ascending);
    const std::set<std::int32_t> first(order.begin(), order.begin() + 2);
    EXPECT_EQ(first, (std::set<std::int32_t>{1, 20})) << "measured latents first, NaN last";
  }
  const auto json = nlohmann::json::parse(diff_report_json(report));
  EXPECT_EQ(json["n_sources"], 2);
  EXPECT_EQ(json["n_latents"], 24);
  EXPECT_EQ(json["d"], 5);
  EXPECT_EQ(json["latents"][20]["latent_scaling"]["nu_error"][0], report.scaling->nu_error[2]);
  EXPECT_FALSE(json["latents"][0].contains("latent_scaling"));
}

TEST(DiffReport, CsvHoldsEveryMetricOfEveryLatent) {
  std::mt19937_64 rng(std::random_device{}());
  const DiffReport report = make_report(rng);
  std::istringstream csv(diff_report_csv(report));
  std::string line;
  std::getline(csv, line);
  std::vector<std::string> header;
  for (std::istringstream fields(line); std::getline(fields, line, ',');) header.push_back(line);
  const std::vector<std::string> names = latent_metric_names(report);
  ASSERT_EQ(header.size(), names.size() + 2);
  EXPECT_EQ(header[0], "index");
  EXPECT_EQ(header[1], "class");
  int rows = 0;
  while (std::getline(csv, line)) {
    std::vector<std::string> fields;
    std::size_t start = 0;
    while (true) {
      const std::size_t comma = line.find(',', start);
      fields.push_back(line.substr(start, comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    ASSERT_EQ(fields.size(), header.size()) << line;
    const int f = std::stoi(fields[0]);
    EXPECT_EQ(f, rows);
    EXPECT_EQ(fields[1], latent_class_name(report.weights.latent_class[f]));
    for (std::size_t c = 0; c < names.size(); ++c) {
      const double expected = latent_metric(report, names[c])[f];
      if (std::isnan(expected)) {
        EXPECT_TRUE(fields[c + 2].empty());
      } else {
        EXPECT_EQ(std::stod(fields[c + 2]), expected) << names[c] << " of latent " << f;
      }
    }
    ++rows;
  }
  EXPECT_EQ(rows, report.weights.latents);
}

// Reads the histogram bars of one plot back from the page: bin → summed data-count.
std::map<int, std::int64_t> bars(const std::string& html, const std::string& plot) {
  std::map<int, std::int64_t> counts;
  const std::string key = "data-plot='" + plot + "'";
  for (std::size_t at = html.find(key); at != std::string::npos; at = html.find(key, at + 1)) {
    const std::size_t bin = html.find("data-bin='", at) + 10;
    const std::size_t count = html.find("data-count='", at) + 12;
    counts[std::stoi(html.substr(bin))] += std::stoll(html.substr(count));
  }
  return counts;
}

TEST(DiffReport, HtmlHistogramsCountTheLatentsAndThePageIsSelfContained) {
  std::mt19937_64 rng(std::random_device{}());
  DiffReport report = make_report(rng);
  report.source_names = {"base<1>", "tuned & \"friends\""};
  HtmlReportOptions options;
  options.title = "report </script><b>";
  const std::string html = diff_report_html(report, options);
  // Relative norms of source 1 in 50 bins over [0, 1], counted directly in float64.
  std::map<int, std::int64_t> expected;
  for (const double r : latent_metric(report, "relative_norm_1"))
    ++expected[std::min(49, static_cast<int>(r * 50))];
  EXPECT_EQ(bars(html, "relative-norm-1"), expected);
  std::map<int, std::int64_t> cosines;
  for (const double c : latent_metric(report, "decoder_cosine"))
    if (c >= -1.0 && c <= 1.0) ++cosines[std::min(39, static_cast<int>((c + 1.0) / 2.0 * 40))];
  EXPECT_EQ(bars(html, "decoder-cosine"), cosines);
  // No network resources, names and title escaped, no stray NaN in coordinates.
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_NE(html.find("base&lt;1&gt;"), std::string::npos);
  EXPECT_NE(html.find("tuned &amp; &quot;friends&quot;"), std::string::npos);
  EXPECT_EQ(html.find("<b>"), std::string::npos);
  EXPECT_EQ(html.find("nan"), std::string::npos);
  EXPECT_NE(html.find("id='frequency-vs-norm'"), std::string::npos);
  // Density: log10 frequency of the active latents, per class, in float64.
  ASSERT_TRUE(report.data.has_value());
  const double floor = density_floor(report.data->rows);
  std::map<std::string, std::map<int, std::int64_t>> density;
  std::int64_t dead = 0;
  for (std::size_t f = 0; f < report.data->frequency.size(); ++f) {
    const double frequency = report.data->frequency[f];
    if (frequency <= 0) {
      ++dead;
      continue;
    }
    const int bin = std::min(kDensityBins - 1, static_cast<int>((std::log10(frequency) - floor) /
                                                                -floor * kDensityBins));
    ++density[latent_class_name(report.weights.latent_class[f])][bin];
  }
  std::map<std::string, std::map<int, std::int64_t>> shown;
  const std::string key = "data-plot='density'";
  for (std::size_t at = html.find(key); at != std::string::npos; at = html.find(key, at + 1)) {
    const std::size_t name = html.find("data-class='", at) + 12;
    const std::string cls = html.substr(name, html.find('\'', name) - name);
    shown[cls][std::stoi(html.substr(html.find("data-bin='", at) + 10))] +=
        std::stoll(html.substr(html.find("data-count='", at) + 12));
  }
  EXPECT_EQ(shown, density);
  EXPECT_EQ(html.find("(dead, not shown: none)") != std::string::npos, dead == 0);
  EXPECT_GT(density.size(), 1u);  // several classes, so the per-class split is exercised
  EXPECT_NE(html.find("id='cohens-d-vs-norm'"), std::string::npos);
  // Without data and labels: the weight plots only, still a table.
  DiffReport weights_only;
  weights_only.model_config = report.model_config;
  weights_only.weights = report.weights;
  const std::string plain = diff_report_html(weights_only);
  EXPECT_EQ(bars(plain, "relative-norm-1"), expected);
  EXPECT_EQ(plain.find("frequency-vs-norm"), std::string::npos);
  EXPECT_NE(plain.find("id='top-latents'"), std::string::npos);
}

}  // namespace
}  // namespace crosscoder
