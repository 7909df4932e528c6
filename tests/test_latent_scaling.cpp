// Latent Scaling against the reference definition (Minder et al. 2025, the authors' closed form and
// targets) written out in float64 over the reference forward pass, and planted cases.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <random>

#include "crosscoder/crosscoder.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

TEST(LatentScaling, BetasAndRatiosMatchTheReferenceDefinitionInFloat64) {
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

  // The reference definition, written here from the closed form of Minder et al. (2025) as the
  // authors' code accumulates it: per latent and source, A = Σ_x f(x)·y(x) (a d-vector),
  // β = ⟨d_s, A⟩ / (Σ_x f(x)² · ‖d_s‖²), with the targets y^ε_m = x_m − (x̂_m − f·d_m) and
  // y^r_m = x̂_m (the full reconstruction) for every source, the reference source s included,
  // and ν_m = β_m / β_s. Everything from the float64 reference forward pass.
  const auto p = testing::ReferenceParameters::from(model);
  const testing::ReferenceForward ref = testing::reference_forward(c, p, x, B, c.k);
  const std::vector<float> norms = model.decoder_norms();
  for (std::size_t i = 0; i < latents.size(); ++i) {
    const int j = latents[i];
    const int s = norms[j * M + 1] > norms[j * M + 0] ? 1 : 0;
    EXPECT_EQ(got.reference_source[i], s);
    std::vector<double> a_error(M * d, 0.0), a_recon(M * d, 0.0), a_recon_without(M * d, 0.0);
    double c_squares = 0.0, d_squared = 0.0;
    std::int64_t active = 0;
    for (int b = 0; b < B; ++b) {
      const double f = ref.activation[b * c.latents + j];
      if (f == 0.0) continue;  // the reference counts rows with a non-zero activation
      ++active;
      c_squares += f * f;
      for (int m = 0; m < M; ++m)
        for (int k = 0; k < d; ++k) {
          const int col = m * d + k;
          const double without_latent = ref.recon[b * D + col] - f * p.decoder[j * D + col];
          a_error[m * d + k] += f * (ref.xn[b * D + col] - without_latent);
          a_recon[m * d + k] += f * ref.recon[b * D + col];
          a_recon_without[m * d + k] += f * without_latent;
        }
    }
    for (int k = 0; k < d; ++k)
      d_squared += p.decoder[j * D + s * d + k] * p.decoder[j * D + s * d + k];
    EXPECT_EQ(got.active_rows[i], active) << "latent " << j;
    ASSERT_GT(active, 0) << "latent " << j << " never fired: the test would check nothing";
    double beta_error[2], beta_recon[2], beta_without[2];
    for (int m = 0; m < M; ++m) {
      double b_error = 0.0, b_recon = 0.0, b_without = 0.0;
      for (int k = 0; k < d; ++k) {
        const double ds = p.decoder[j * D + s * d + k];
        b_error += ds * a_error[m * d + k];
        b_recon += ds * a_recon[m * d + k];
        b_without += ds * a_recon_without[m * d + k];
      }
      beta_error[m] = b_error / (c_squares * d_squared);
      beta_recon[m] = b_recon / (c_squares * d_squared);
      beta_without[m] = b_without / (c_squares * d_squared);
      EXPECT_NEAR(got.beta_error[i * M + m], beta_error[m], 1e-4 * (1 + std::abs(beta_error[m])))
          << "latent " << j << " source " << m;
      EXPECT_NEAR(got.beta_reconstruction[i * M + m], beta_recon[m],
                  1e-4 * (1 + std::abs(beta_recon[m])))
          << "latent " << j << " source " << m;
    }
    // The reference source's own target: the full reconstruction is the one without the latent
    // plus f·d_s, which adds exactly 1 to β^r_s (the slip this definition fixes gave the
    // value without it, so ν^r divided by a number near 0).
    EXPECT_NEAR(beta_recon[s] - beta_without[s], 1.0, 1e-9) << "latent " << j;
    for (int m = 0; m < M; ++m) {
      EXPECT_NEAR(got.nu_error[i * M + m], beta_error[m] / beta_error[s],
                  1e-4 * (1 + std::abs(beta_error[m] / beta_error[s])))
          << "latent " << j << " source " << m;
      EXPECT_NEAR(got.nu_reconstruction[i * M + m], beta_recon[m] / beta_recon[s],
                  1e-4 * (1 + std::abs(beta_recon[m] / beta_recon[s])))
          << "latent " << j << " source " << m;
    }
    EXPECT_EQ(got.nu_error[i * M + s], 1.0);
    EXPECT_EQ(got.nu_reconstruction[i * M + s], 1.0);
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
                                           : ref.recon[b * D + col]);
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

// Planted cases of Minder et al. (2025), Section "Latent Scaling": latent 0 is exclusive to
// the fine-tuned source 1 (d_{0,0} = 0, d_{0,1} = e₀) and fires with the fine-tuned activation
// along e₀. Latent 2 is an unrelated shared latent, latent 3 never fires. Other dimensions
// carry random values orthogonal to e₀, so each ν has an exact expected value:
//   truly exclusive  (the base activation has no e₀ part, no twin):     ν^ε_base = 0, ν^r_base = 0
//   Complete Shrinkage (base = α·a·e₀, nothing reconstructs it):        ν^ε_base = α, ν^r_base = 0
//   Latent Decoupling (base = a·e₀, latent 1 reconstructs it in base):  ν^ε_base = 0, ν^r_base = 1
// and ν_fine-tuned = 1 in every case.
TEST(LatentScaling, PlantedCasesGiveThePaperNus) {
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<double> normal(0.0, 1.0);
  const double alpha = 0.3 + 0.5 * std::abs(normal(rng));
  const int M = 2, d = 6, D = M * d, F = 4, B = 64;
  CrosscoderConfig c;
  c.sources = M;
  c.width = d;
  c.latents = F;
  c.activation = Activation::relu;
  c.normalisation = Normalisation::none;
  enum class Case { exclusive, shrinkage, decoupling };
  for (Case planted : {Case::exclusive, Case::shrinkage, Case::decoupling}) {
    Crosscoder model(c, make_backend(BackendKind::cpu), rng());
    std::vector<float> encoder(F * D, 0.0f), decoder(F * D, 0.0f);
    encoder[0 * D + 1 * d + 0] = 1.0f;  // latent 0 reads e₀ of the fine-tuned source
    decoder[0 * D + 1 * d + 0] = 1.0f;  // and writes e₀ there only
    if (planted == Case::decoupling) {
      encoder[1 * D + 1 * d + 0] = 1.0f;  // its twin fires with it
      decoder[1 * D + 0 * d + 0] = 1.0f;  // and writes e₀ in the base source only
    }
    encoder[2 * D + 0 * d + 1] = 1.0f;  // latent 2 reads e₁ of the base source
    decoder[2 * D + 0 * d + 1] = 1.0f;  // and writes e₁ in both
    decoder[2 * D + 1 * d + 1] = 1.0f;
    model.parameters().encoder_weight.upload(encoder);
    model.parameters().encoder_bias.upload(std::vector<float>(F, 0.0f));
    model.parameters().decoder_weight.upload(decoder);
    model.parameters().decoder_bias.upload(std::vector<float>(D, 0.0f));
    const double base_scale = planted == Case::exclusive   ? 0.0
                              : planted == Case::shrinkage ? alpha
                                                           : 1.0;
    std::vector<float> x(B * D);
    for (int b = 0; b < B; ++b) {
      const auto a = static_cast<float>(0.5 + std::abs(normal(rng)));
      for (int col = 0; col < D; ++col) x[b * D + col] = static_cast<float>(normal(rng));
      x[b * D + 1 * d + 0] = a;
      x[b * D + 0 * d + 0] = static_cast<float>(base_scale) * a;
    }
    LatentScalingAccumulator accumulator(model, {0});
    accumulator.add(x, B);
    const LatentScaling got = accumulator.result();
    ASSERT_EQ(got.reference_source[0], 1);
    ASSERT_EQ(got.active_rows[0], B);
    const double expected_error = planted == Case::shrinkage ? alpha : 0.0;
    const double expected_reconstruction = planted == Case::decoupling ? 1.0 : 0.0;
    const char* name = planted == Case::exclusive   ? "exclusive"
                       : planted == Case::shrinkage ? "shrinkage"
                                                    : "decoupling";
    EXPECT_NEAR(got.beta_error[1], 1.0, 1e-5) << name;
    EXPECT_NEAR(got.beta_reconstruction[1], 1.0, 1e-5) << name;
    EXPECT_EQ(got.nu_error[1], 1.0) << name;
    EXPECT_EQ(got.nu_reconstruction[1], 1.0) << name;
    EXPECT_NEAR(got.nu_error[0], expected_error, 1e-5) << name;
    EXPECT_NEAR(got.nu_reconstruction[0], expected_reconstruction, 1e-5) << name;
  }
}

}  // namespace
}  // namespace crosscoder
