// The study's setting (arXiv 2606.26474, its dfc.py, train.py and cache.py): the per-channel
// z-score normaliser and the DFC objective, each against a float64 implementation written here
// from the study's definitions (not from this library's code), on fresh random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
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

CrosscoderConfig study_config() {
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 6;
  c.latents = 30;
  c.k = 5;
  c.activation = Activation::topk;
  c.exclusive = {4, 7};
  c.normalisation = Normalisation::per_channel;
  return c;
}

// Rows whose columns have very different offsets and spreads, so that a per-source scale could
// not pass for a per-channel one.
std::vector<float> uneven_rows(int rows, int columns, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> spread(0.05, 20.0), offset(-30.0, 30.0);
  std::vector<double> scale(columns), shift(columns);
  for (int j = 0; j < columns; ++j) {
    scale[j] = spread(rng);
    shift[j] = offset(rng);
  }
  std::vector<float> x(static_cast<std::size_t>(rows) * columns);
  for (int b = 0; b < rows; ++b)
    for (int j = 0; j < columns; ++j)
      x[b * columns + j] = static_cast<float>(shift[j] + scale[j] * normal(rng));
  return x;
}

TEST(PerChannelNormaliser, FitsTheStudysZScoreInFloat64) {
  std::mt19937_64 rng(fresh_seed());
  const CrosscoderConfig c = study_config();
  const int B = 57, D = c.sources * c.width;
  std::vector<float> x = uneven_rows(B, D, rng);
  for (int b = 0; b < B; ++b) x[b * D + 4] = 2.5f;  // a constant channel: σ clamps at 1e-6
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  model.fit_normaliser(x, B);
  const Normaliser& n = model.normaliser();
  ASSERT_EQ(n.scale.size(), static_cast<std::size_t>(D));
  // cache.py: (x − x.mean(0)) / x.std(0).clamp(min=1e-6), torch's std being the unbiased one.
  for (int j = 0; j < D; ++j) {
    double mean = 0.0;
    for (int b = 0; b < B; ++b) mean += x[b * D + j];
    mean /= B;
    double squares = 0.0;
    for (int b = 0; b < B; ++b) squares += (x[b * D + j] - mean) * (x[b * D + j] - mean);
    const double sigma = std::max(std::sqrt(squares / (B - 1)), 1e-6);
    EXPECT_NEAR(n.mean[j], mean, 1e-6 * (1.0 + std::abs(mean))) << "column " << j;
    EXPECT_NEAR(n.scale[j], 1.0 / sigma, 1e-6 * (1.0 / sigma)) << "column " << j;
  }
  EXPECT_FLOAT_EQ(n.scale[4], 1e6f);

  // The forward pass normalises with it: z-scores of the fitting rows have mean 0, variance 1.
  const Crosscoder::Inference inference = model.infer(x, B);
  for (int j = 0; j < D; ++j) {
    if (j == 4) continue;
    double sum = 0.0, squares = 0.0;
    for (int b = 0; b < B; ++b) sum += inference.normalised_input[b * D + j];
    for (int b = 0; b < B; ++b)
      squares += std::pow(inference.normalised_input[b * D + j] - sum / B, 2.0);
    EXPECT_NEAR(sum / B, 0.0, 1e-4) << "column " << j;
    EXPECT_NEAR(squares / (B - 1), 1.0, 1e-4) << "column " << j;
  }

  EXPECT_THROW(model.fit_normaliser(std::span<const float>(x).first(D), 1), Error);
  Normaliser per_source;
  per_source.scale.assign(static_cast<std::size_t>(c.sources), 1.0f);
  per_source.mean.assign(static_cast<std::size_t>(D), 0.0f);
  try {
    model.set_normaliser(per_source);
    FAIL() << "a per-source scale was accepted for a per-channel normaliser";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("per_channel"), std::string::npos) << error.what();
  }
}

TEST(PerChannelNormaliser, SurvivesSaveAndLoadAndEncodesTheSame) {
  std::mt19937_64 rng(fresh_seed());
  const CrosscoderConfig c = study_config();
  const int B = 40, D = c.sources * c.width;
  const std::vector<float> x = uneven_rows(B, D, rng);
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  model.fit_normaliser(x, B);
  const fs::path path = fs::temp_directory_path() /
                        ("crosscoder-per-channel-" + std::to_string(fresh_seed()) + ".safetensors");
  model.save(path);
  const Crosscoder loaded = Crosscoder::load(path, make_backend(BackendKind::cpu));
  // The file holds one scale per channel, [M, d].
  EXPECT_NO_THROW(io::SafetensorsFile::open(path).read_float("normaliser.scale", {2, 6}));
  fs::remove(path);
  EXPECT_EQ(loaded.normaliser().scale, model.normaliser().scale);
  EXPECT_EQ(loaded.normaliser().mean, model.normaliser().mean);
  const HostSparseCodes a = model.encode(x, B), b = loaded.encode(x, B);
  EXPECT_EQ(a.latent, b.latent);
  EXPECT_EQ(a.value, b.value);
  // Raw decoder vectors divide by the column's own scale.
  const auto p = testing::ReferenceParameters::from(model);
  const std::vector<float> raw = model.raw_decoder_vectors();
  for (int f = 0; f < c.latents; ++f)
    for (int j = 0; j < D; ++j)
      ASSERT_NEAR(raw[f * D + j], p.decoder[f * D + j] / p.scale[j],
                  1e-6 * (1.0 + std::abs(p.decoder[f * D + j] / p.scale[j])));
}

// dfc.py's loss from its definition, with dfc.py's partitions mapped onto this library's
// latent order (shared first; the means do not depend on order): the mean-squared error over
// all B·M·d elements, plus c_s·(mean |a| over the shared latents) plus c_e·(the average over
// the sources of the mean |a| over that source's exclusive latents and the shared ones).
double study_dfc_loss(const CrosscoderConfig& c, const testing::ReferenceForward& forward, int B,
                      double sparsity_coef, double exclusive_sparsity_coef) {
  const int D = c.sources * c.width, F = c.latents, shared = c.shared_latents();
  double squared_error = 0.0;
  for (int e = 0; e < B * D; ++e) squared_error += std::pow(forward.recon[e] - forward.xn[e], 2.0);
  const auto mean_abs = [&](int begin, int end, int begin2, int end2) {
    double sum = 0.0;
    for (int b = 0; b < B; ++b) {
      for (int f = begin; f < end; ++f) sum += std::abs(forward.activation[b * F + f]);
      for (int f = begin2; f < end2; ++f) sum += std::abs(forward.activation[b * F + f]);
    }
    return sum / (static_cast<double>(B) * ((end - begin) + (end2 - begin2)));
  };
  const double l1_shared = mean_abs(0, shared, 0, 0);
  double l1_exclusive = 0.0;
  int first = shared;
  for (int m = 0; m < c.sources; ++m) {
    l1_exclusive += mean_abs(0, shared, first, first + c.exclusive[m]) / c.sources;
    first += c.exclusive[m];
  }
  return squared_error / (static_cast<double>(B) * D) + exclusive_sparsity_coef * l1_exclusive +
         sparsity_coef * l1_shared;
}

TEST(StudyObjective, TheLossIsTheStudysDfcLossTimesTheInputWidth) {
  std::mt19937_64 rng(fresh_seed());
  std::uniform_real_distribution<float> coefficient(0.01f, 1.0f);
  for (const Activation activation : {Activation::topk, Activation::batchtopk}) {
    CrosscoderConfig c = study_config();
    c.activation = activation;
    const int B = 24, D = c.sources * c.width;
    Crosscoder model(c, make_backend(BackendKind::cpu), rng());
    const std::vector<float> x = uneven_rows(B, D, rng);
    model.fit_normaliser(x, B);
    std::normal_distribution<float> normal(0.0f, 0.1f);
    std::vector<float> bias(static_cast<std::size_t>(D));
    for (float& v : bias) v = normal(rng);
    model.parameters().decoder_bias.upload(bias);
    const float cs = coefficient(rng), ce = coefficient(rng);
    TrainConfig t;
    t.partition_l1 = study_dfc_partition_l1(c, cs, ce);
    t.unit_norm_decoder = false;
    t.auxk_coefficient = 0.0f;
    Trainer trainer(model, t);
    const StepReport report = trainer.compute_gradients(x, B);
    const auto p = testing::ReferenceParameters::from(model);
    const testing::ReferenceForward forward = testing::reference_forward(c, p, x, B, c.k);
    const double want = D * study_dfc_loss(c, forward, B, cs, ce);
    EXPECT_NEAR(report.loss, want, 1e-5 * (1.0 + std::abs(want))) << to_string(activation);
    EXPECT_GT(report.sparsity, 0.0);
    EXPECT_EQ(report.auxk, 0.0);
  }
}

TEST(StudyObjective, BadSettingsAreRefusedByName) {
  const CrosscoderConfig c = study_config();
  Crosscoder model(c, make_backend(BackendKind::cpu), 1);
  TrainConfig t;
  t.partition_l1 = {0.1f, 0.2f};
  testing::expect_error([&] { Trainer trainer(model, t); },
                        "expected 3 (shared, then one per model)");
  t.partition_l1 = {0.1f, -0.2f, 0.0f};
  testing::expect_error([&] { t.validate(); }, "partition_l1[1]");
  CrosscoderConfig jump = c;
  jump.activation = Activation::jumprelu;
  Crosscoder jump_model(jump, make_backend(BackendKind::cpu), 1);
  t.partition_l1 = {0.1f, 0.2f, 0.3f};
  testing::expect_error([&] { Trainer trainer(jump_model, t); }, "jumprelu");
  CrosscoderConfig all_exclusive = c;
  all_exclusive.exclusive = {15, 15};
  testing::expect_error([&] { study_dfc_partition_l1(all_exclusive, 1e-3f, 2e-4f); },
                        "no shared latents");
  testing::expect_error([&] { study_dfc_partition_l1(c, -1.0f, 2e-4f); }, "out of range");
  // The fields travel with a training checkpoint's config.
  t.unit_norm_decoder = false;
  const TrainConfig back = TrainConfig::from_json(t.to_json());
  EXPECT_EQ(back.partition_l1, t.partition_l1);
  EXPECT_FALSE(back.unit_norm_decoder);
}

}  // namespace
}  // namespace crosscoder
