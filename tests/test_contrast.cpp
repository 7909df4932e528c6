#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "crosscoder/contrast.hpp"
#include "crosscoder/error.hpp"

namespace crosscoder {
namespace {

TEST(Contrast, CohensDAndAurocMatchFloat64References) {
  std::mt19937_64 rng(std::random_device{}());
  const int F = 7, rows = 300;
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  HostSparseCodes codes;
  codes.rows = rows;
  codes.row_ptr.push_back(0);
  std::vector<std::int8_t> labels(rows);
  std::vector<std::vector<double>> dense(rows, std::vector<double>(F, 0.0));
  for (int b = 0; b < rows; ++b) {
    labels[b] = static_cast<std::int8_t>(uniform(rng) < 0.3 ? 1 : (uniform(rng) < 0.1 ? -1 : 0));
    for (int f = 0; f < F; ++f) {
      const double rate = 0.1 + 0.1 * f + (labels[b] == 1 && f == 3 ? 0.5 : 0.0);
      if (uniform(rng) < rate) {
        // Quantised, so equal non-zero activations (ties) occur as well as the zero ties.
        const auto value = static_cast<float>(std::ceil(uniform(rng) * 8.0) / 8.0 * (1 + f));
        codes.latent.push_back(f);
        codes.value.push_back(value);
        dense[b][f] = value;
      }
    }
    codes.row_ptr.push_back(static_cast<std::int64_t>(codes.latent.size()));
  }
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
