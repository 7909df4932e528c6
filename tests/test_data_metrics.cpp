// Data metrics accumulated over several batches against float64 loops over one pass.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "crosscoder/crosscoder.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

TEST(DataMetrics, AccumulatedBatchesMatchASinglePassReference) {
  std::mt19937_64 rng(std::random_device{}());
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 6;
  c.latents = 40;
  c.k = 3;
  c.activation = Activation::topk;
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  const int rows = 90, D = 12;
  const std::vector<float> x = testing::random_activations(rows, 2, 6, rng);
  model.fit_normaliser(x, rows);

  DataMetricsAccumulator accumulator(model);
  for (int begin : {0, 25, 60}) {  // three uneven batches
    const int end = begin == 0 ? 25 : (begin == 25 ? 60 : rows);
    accumulator.add(std::span<const float>(x).subspan(begin * D, (end - begin) * D), end - begin);
  }
  const DataMetrics got = accumulator.result();

  const HostSparseCodes codes = model.encode(x, rows);
  const std::vector<float> recon = model.reconstruct(x, rows);
  std::vector<double> fired(40, 0.0), sum(40, 0.0), max(40, 0.0);
  double active = 0.0;
  for (int b = 0; b < rows; ++b) {
    const std::vector<float> dense = codes.dense_row(b, 40);
    for (int f = 0; f < 40; ++f) {
      if (dense[f] > 0.0f) {
        fired[f] += 1;
        sum[f] += dense[f];
        max[f] = std::max(max[f], static_cast<double>(dense[f]));
        active += 1;
      }
    }
  }
  int dead = 0;
  for (int f = 0; f < 40; ++f) {
    EXPECT_NEAR(got.frequency[f], fired[f] / rows, 1e-12);
    // Batches of different sizes may round the GEMM differently: float32-level tolerances.
    EXPECT_NEAR(got.mean_activation[f], fired[f] > 0 ? sum[f] / fired[f] : 0.0,
                1e-5 * (1 + max[f]));
    EXPECT_NEAR(got.max_activation[f], max[f], 1e-5 * (1 + max[f]));
    dead += fired[f] == 0;
  }
  EXPECT_EQ(got.dead_latents, dead);
  EXPECT_NEAR(got.l0, active / rows, 1e-12);
  for (int m = 0; m < 2; ++m) {
    double mean[6] = {}, error = 0.0, variance = 0.0;
    for (int b = 0; b < rows; ++b)
      for (int i = 0; i < 6; ++i) mean[i] += x[b * D + m * 6 + i] / static_cast<double>(rows);
    for (int b = 0; b < rows; ++b)
      for (int i = 0; i < 6; ++i) {
        const double value = x[b * D + m * 6 + i];
        error += std::pow(recon[b * D + m * 6 + i] - value, 2);
        variance += std::pow(value - mean[i], 2);
      }
    EXPECT_NEAR(got.mse[m], error / rows, 1e-5 * (1 + error / rows));
    EXPECT_NEAR(got.fve[m], 1.0 - error / variance, 1e-5);
  }
  DataMetricsAccumulator empty(model);
  EXPECT_THROW(empty.result(), Error);
}

}  // namespace
}  // namespace crosscoder
