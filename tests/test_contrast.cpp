#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "crosscoder/contrast.hpp"
#include "crosscoder/error.hpp"

namespace crosscoder {
namespace {

// Random sparse codes with their dense float64 copy: `label(b)` gives row b's label and
// `value(b, f, label)` an activation, 0 where the latent stays silent.
struct RandomCodes {
  HostSparseCodes codes;
  std::vector<std::int8_t> labels;
  std::vector<std::vector<double>> dense;  // [rows][F]
};

template <typename Label, typename Value>
RandomCodes random_codes(int rows, int F, Label label, Value value) {
  RandomCodes out;
  out.codes.rows = rows;
  out.codes.row_ptr.push_back(0);
  out.labels.resize(static_cast<std::size_t>(rows));
  out.dense.assign(static_cast<std::size_t>(rows), std::vector<double>(F, 0.0));
  for (int b = 0; b < rows; ++b) {
    out.labels[b] = label(b);
    for (int f = 0; f < F; ++f) {
      const float v = value(b, f, out.labels[b]);
      if (v == 0.0f) continue;
      out.codes.latent.push_back(f);
      out.codes.value.push_back(v);
      out.dense[b][f] = v;
    }
    out.codes.row_ptr.push_back(static_cast<std::int64_t>(out.codes.latent.size()));
  }
  return out;
}

TEST(Contrast, CohensDAndAurocMatchFloat64References) {
  std::mt19937_64 rng(std::random_device{}());
  const int F = 7, rows = 300;
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const RandomCodes random = random_codes(
      rows, F,
      [&](int) {
        return static_cast<std::int8_t>(uniform(rng) < 0.3 ? 1 : (uniform(rng) < 0.1 ? -1 : 0));
      },
      [&](int, int f, std::int8_t label) {
        const double rate = 0.1 + 0.1 * f + (label == 1 && f == 3 ? 0.5 : 0.0);
        // Quantised, so equal non-zero activations (ties) occur as well as the zero ties.
        return uniform(rng) < rate
                   ? static_cast<float>(std::ceil(uniform(rng) * 8.0) / 8.0 * (1 + f))
                   : 0.0f;
      });
  const HostSparseCodes& codes = random.codes;
  const std::vector<std::int8_t>& labels = random.labels;
  const std::vector<std::vector<double>>& dense = random.dense;
  ContrastAccumulator accumulator(F);
  accumulator.add(codes, labels);
  const LatentContrast got = accumulator.result();

  for (int f = 0; f < F; ++f) {
    double n[2] = {0, 0}, mean[2] = {0, 0}, var[2] = {0, 0};
    for (int b = 0; b < rows; ++b)
      if (labels[b] == 0 || labels[b] == 1) {
        n[labels[b]] += 1;
        mean[labels[b]] += dense[b][f];
      }
    for (int g = 0; g < 2; ++g) mean[g] /= n[g];
    for (int b = 0; b < rows; ++b)
      if (labels[b] == 0 || labels[b] == 1)
        var[labels[b]] += std::pow(dense[b][f] - mean[labels[b]], 2);
    for (int g = 0; g < 2; ++g) var[g] /= (n[g] - 1);
    const double pooled =
        std::sqrt(((n[1] - 1) * var[1] + (n[0] - 1) * var[0]) / (n[0] + n[1] - 2));
    EXPECT_NEAR(got.cohens_d[f], (mean[1] - mean[0]) / pooled, 1e-9) << "latent " << f;
    EXPECT_NEAR(got.mean_positive[f], mean[1], 1e-12);
    EXPECT_NEAR(got.mean_negative[f], mean[0], 1e-12);
    double fired[2] = {0, 0};
    for (int b = 0; b < rows; ++b)
      if ((labels[b] == 0 || labels[b] == 1) && dense[b][f] > 0.0) fired[labels[b]] += 1;
    EXPECT_NEAR(got.firing_positive[f], fired[1] / n[1], 1e-12) << "latent " << f;
    EXPECT_NEAR(got.firing_negative[f], fired[0] / n[0], 1e-12) << "latent " << f;
    // AUROC by brute force over every (positive, negative) pair, ties counting one half.
    double wins = 0.0, pairs = 0.0;
    for (int i = 0; i < rows; ++i) {
      if (labels[i] != 1) continue;
      for (int j = 0; j < rows; ++j) {
        if (labels[j] != 0) continue;
        const auto a = static_cast<float>(dense[i][f]), b = static_cast<float>(dense[j][f]);
        wins += a > b ? 1.0 : (a == b ? 0.5 : 0.0);
        pairs += 1.0;
      }
    }
    EXPECT_NEAR(got.auroc[f], wins / pairs, 1e-12) << "latent " << f;
  }
  EXPECT_EQ(got.ranking().front(), 3);
}

// Both standardisers against float64 references on unbalanced groups (where they differ):
// the n-weighted pooled SD, and the study's √((s₁² + s₀²)/2) (arXiv 2606.26474,
// rank_features.py: numpy var(ddof=1) of each group, averaged).
TEST(Contrast, CohensDStandardisersMatchFloat64ReferencesOnUnbalancedGroups) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const int F = 5, positives = 37, negatives = 211, rows = positives + negatives;
  const RandomCodes random = random_codes(
      rows, F, [&](int b) { return static_cast<std::int8_t>(b < positives ? 1 : 0); },
      [&](int, int f, std::int8_t label) {
        // Different spreads in the two groups, so the two standardisers differ.
        const double spread = label == 1 ? 1.0 + f : 0.3;
        return uniform(rng) < 0.6
                   ? static_cast<float>(spread * uniform(rng) + (label == 1 ? 0.2 : 0.0))
                   : 0.0f;
      });
  const std::vector<std::int8_t>& labels = random.labels;
  const std::vector<std::vector<double>>& dense = random.dense;
  ContrastAccumulator accumulator(F);
  accumulator.add(random.codes, labels);
  const LatentContrast pooled = accumulator.result();
  const LatentContrast average = accumulator.result(CohensD::average);
  ASSERT_EQ(pooled.positives, positives);
  ASSERT_EQ(pooled.negatives, negatives);
  EXPECT_EQ(pooled.cohens_d_kind, CohensD::pooled);
  EXPECT_EQ(average.cohens_d_kind, CohensD::average);
  for (int f = 0; f < F; ++f) {
    std::vector<double> group[2];
    for (int b = 0; b < rows; ++b) group[labels[b]].push_back(dense[b][f]);
    double mean[2], var[2];
    for (int g = 0; g < 2; ++g) {
      double sum = 0.0;
      for (double v : group[g]) sum += v;
      mean[g] = sum / static_cast<double>(group[g].size());
      double squares = 0.0;
      for (double v : group[g]) squares += (v - mean[g]) * (v - mean[g]);
      var[g] = squares / static_cast<double>(group[g].size() - 1);
    }
    const double n1 = positives, n0 = negatives;
    const double want_pooled =
        (mean[1] - mean[0]) / std::sqrt(((n1 - 1) * var[1] + (n0 - 1) * var[0]) / (n1 + n0 - 2));
    const double want_average = (mean[1] - mean[0]) / std::sqrt((var[1] + var[0]) / 2.0);
    EXPECT_NEAR(pooled.cohens_d[f], want_pooled, 1e-9 * (1 + std::abs(want_pooled)))
        << "latent " << f;
    EXPECT_NEAR(average.cohens_d[f], want_average, 1e-9 * (1 + std::abs(want_average)))
        << "latent " << f;
    // The groups are unbalanced and their spreads differ: the two must not agree here.
    EXPECT_GT(std::abs(want_pooled - want_average), 1e-3 * std::abs(want_pooled)) << "latent " << f;
    // Everything but Cohen's d is the same.
    EXPECT_EQ(pooled.auroc[f], average.auroc[f]);
    EXPECT_EQ(pooled.mean_positive[f], average.mean_positive[f]);
  }
  EXPECT_EQ(parse_cohens_d("average"), CohensD::average);
  EXPECT_EQ(to_string(CohensD::pooled), "pooled");
  EXPECT_THROW(parse_cohens_d("hedges"), Error);
}

TEST(Contrast, RejectsMismatchedLabelsAndTooFewRows) {
  ContrastAccumulator accumulator(3);
  HostSparseCodes codes;
  codes.rows = 2;
  codes.row_ptr = {0, 0, 0};
  std::vector<std::int8_t> one_label = {1};
  EXPECT_THROW(accumulator.add(codes, one_label), Error);
  std::vector<std::int8_t> labels = {1, 0};
  accumulator.add(codes, labels);
  EXPECT_THROW(accumulator.result(), Error);
}

}  // namespace
}  // namespace crosscoder
