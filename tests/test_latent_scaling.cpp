// Latent Scaling against its definition evaluated in float64 with the reference forward pass.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <random>

#include "crosscoder/crosscoder.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

TEST(LatentScaling, BetasAndRatiosMatchTheirFloat64Definition) {
  std::mt19937_64 rng(std::random_device{}());
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 6;
  c.latents = 20;
  c.k = 4;
  c.activation = Activation::topk;
  c.exclusive = {3, 3};
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  const int B = 120, D = 12, d = 6, M = 2;
  const std::vector<float> x = testing::random_activations(B, M, d, rng);
  model.fit_normaliser(x, B);
  // Non-zero decoder bias and decoder entries for both sources of the shared latents.
  std::normal_distribution<float> normal(0.0f, 0.2f);
  std::vector<float> bias(D);
  for (float& v : bias) v = normal(rng);
  model.parameters().decoder_bias.upload(bias);

  const std::vector<std::int32_t> latents = {0, 5, 15, 19};  // shared, shared, excl. 0, excl. 1
  LatentScalingAccumulator accumulator(model, latents);
  accumulator.add(std::span<const float>(x).first(50 * D), 50);
  accumulator.add(std::span<const float>(x).subspan(50 * D), B - 50);
  const LatentScaling got = accumulator.result();

  const auto p = testing::ReferenceParameters::from(model);
  const testing::ReferenceForward ref = testing::reference_forward(c, p, x, B, c.k);
  const std::vector<float> norms = model.decoder_norms();
  for (std::size_t i = 0; i < latents.size(); ++i) {
    const int j = latents[i];
    const int s = norms[j * M + 1] > norms[j * M + 0] ? 1 : 0;
    EXPECT_EQ(got.reference_source[i], s);
    double squares = 0.0, dd = 0.0, num_e[2] = {0, 0}, num_r[2] = {0, 0};
    std::int64_t active = 0;
    for (int k = 0; k < d; ++k) dd += p.decoder[j * D + s * d + k] * p.decoder[j * D + s * d + k];
    for (int b = 0; b < B; ++b) {
      const double f = ref.activation[b * c.latents + j];
      if (!(f > 0.0)) continue;
      ++active;
      squares += f * f;
      for (int m = 0; m < M; ++m)
        for (int k = 0; k < d; ++k) {
          const int col = m * d + k;
          const double own = f * p.decoder[j * D + col];
          num_e[m] += f * p.decoder[j * D + s * d + k] *
                      (ref.xn[b * D + col] - ref.recon[b * D + col] + own);
          num_r[m] += f * p.decoder[j * D + s * d + k] * (ref.recon[b * D + col] - own);
        }
    }
    EXPECT_EQ(got.active_rows[i], active) << "latent " << j;
    ASSERT_GT(active, 0) << "latent " << j << " never fired: the test would check nothing";
    for (int m = 0; m < M; ++m) {
      const double be = num_e[m] / (dd * squares), br = num_r[m] / (dd * squares);
      EXPECT_NEAR(got.beta_error[i * M + m], be, 1e-4 * (1 + std::abs(be)))
          << "latent " << j << " source " << m;
      EXPECT_NEAR(got.beta_reconstruction[i * M + m], br, 1e-4 * (1 + std::abs(br)))
          << "latent " << j << " source " << m;
    }
    EXPECT_NEAR(got.nu_error[i * M + s], 1.0, 1e-12);
    EXPECT_NEAR(got.nu_error[i * M + (1 - s)],
                got.beta_error[i * M + (1 - s)] / got.beta_error[i * M + s], 1e-9);
  }
  EXPECT_THROW(LatentScalingAccumulator(model, {20}), Error);
  EXPECT_THROW(LatentScalingAccumulator(model, {1, 1}), Error);
  EXPECT_THROW(LatentScalingAccumulator(model, {1}, {2}), Error);
}

// The closed form against a numerical least-squares solve (Householder QR of the stacked
// design column f(x)·d_s against the stacked targets), for both targets and both sources.
TEST(LatentScaling, ClosedFormEqualsANumericalLeastSquaresFit) {
  std::mt19937_64 rng(std::random_device{}());
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 5;
  c.latents = 16;
  c.k = 4;
  c.activation = Activation::relu;
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  const int B = 200, D = 10, d = 5, M = 2;
  const std::vector<float> x = testing::random_activations(B, M, d, rng);
  model.fit_normaliser(x, B);
  const std::vector<std::int32_t> latents = {2, 9};
  LatentScalingAccumulator accumulator(model, latents, {1, 0});
  accumulator.add(x, B);
  const LatentScaling got = accumulator.result();
  const auto p = testing::ReferenceParameters::from(model);
  const testing::ReferenceForward ref = testing::reference_forward(c, p, x, B, c.k);
  for (std::size_t i = 0; i < latents.size(); ++i) {
    const int j = latents[i], s = got.reference_source[i];
    for (int m = 0; m < M; ++m) {
      for (int target = 0; target < 2; ++target) {
        std::vector<double> design, observed;
        for (int b = 0; b < B; ++b) {
          const double f = ref.activation[b * c.latents + j];
          if (!(f > 0.0)) continue;
          for (int k = 0; k < d; ++k) {
            const int col = m * d + k;
            const double own = f * p.decoder[j * D + col];
            design.push_back(f * p.decoder[j * D + s * d + k]);
            observed.push_back(target == 0 ? ref.xn[b * D + col] - ref.recon[b * D + col] + own
                                           : ref.recon[b * D + col] - own);
          }
        }
        ASSERT_FALSE(design.empty()) << "latent " << j << " never fired";
        const Eigen::Map<const Eigen::VectorXd> a(design.data(),
                                                  static_cast<Eigen::Index>(design.size()));
        const Eigen::Map<const Eigen::VectorXd> y(observed.data(),
                                                  static_cast<Eigen::Index>(observed.size()));
        const Eigen::VectorXd beta = Eigen::MatrixXd(a).colPivHouseholderQr().solve(y);
        const double closed =
            target == 0 ? got.beta_error[i * M + m] : got.beta_reconstruction[i * M + m];
        EXPECT_NEAR(closed, beta(0), 1e-4 * (1.0 + std::abs(beta(0))))
            << "latent " << j << ", source " << m << ", target " << target;
      }
    }
  }
}

}  // namespace
}  // namespace crosscoder
