// The crosscoder's forward pass, gradients and training invariants against the float64
// reference in reference_crosscoder.hpp, on fresh random inputs, over every usable backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>

#include "backend_params.hpp"
#include "crosscoder/crosscoder.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

using testing::ReferenceParameters;

std::uint64_t fresh_seed() {
  return (static_cast<std::uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
}

CrosscoderConfig small_config(Activation activation, bool dedicated) {
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 6;
  c.latents = 24;
  c.activation = activation;
  c.k = 4;
  if (dedicated) c.exclusive = {3, 4};
  c.jumprelu_initial_threshold = 0.2f;
  c.jumprelu_bandwidth = 0.4f;
  return c;
}

// Non-zero biases and a fitted normaliser, so every term of the forward pass is exercised.
void randomise_biases(Crosscoder& model, std::mt19937_64& rng, const std::vector<float>& x,
                      int rows) {
  std::normal_distribution<float> normal(0.0f, 0.1f);
  auto fill = [&](DeviceArray<float>& a, float offset, bool positive) {
    std::vector<float> host(a.size());
    for (float& v : host) v = (positive ? std::abs(normal(rng)) : normal(rng)) + offset;
    a.upload(host);
  };
  fill(model.parameters().encoder_bias, 0.0f, false);
  fill(model.parameters().decoder_bias, 0.0f, false);
  // JumpReLU thresholds are non-negative (training clamps them at 0).
  if (!model.parameters().threshold.empty()) fill(model.parameters().threshold, 0.15f, true);
  model.fit_normaliser(x, rows);
}

struct Case {
  Activation activation;
  bool dedicated;
  /// The study's setting (arXiv 2606.26474): per-channel z-score normaliser, a plain L1 per
  /// partition, free decoder norms, no AuxK.
  bool study = false;
  /// A Matryoshka dictionary of three nested prefixes (6, 14, 24 latents).
  bool matryoshka = false;
};

CrosscoderConfig case_config(const Case& the_case) {
  CrosscoderConfig c = small_config(the_case.activation, the_case.dedicated);
  if (the_case.study) c.normalisation = Normalisation::per_channel;
  if (the_case.matryoshka) c.matryoshka_groups = {6, 8, 10};
  return c;
}

// The study's objective on top of `t`, with distinct coefficients for the three partitions.
void use_study_objective(TrainConfig& t) {
  t.partition_l1 = {0.3f, 0.05f, 0.11f};
  t.unit_norm_decoder = false;
  t.auxk_coefficient = 0.0f;
}

class CrosscoderNumerics : public ::testing::TestWithParam<std::tuple<BackendKind, Case>> {
 protected:
  std::shared_ptr<Backend> backend() const {
    return testing::make_test_backend(std::get<0>(GetParam()));
  }
  Case the_case() const { return std::get<1>(GetParam()); }
};

TEST_P(CrosscoderNumerics, ForwardMatchesFloat64Reference) {
  const auto [activation, dedicated, study, matryoshka] = the_case();
  std::mt19937_64 rng(fresh_seed());
  const CrosscoderConfig c = case_config(the_case());
  const int B = 16;
  Crosscoder model(c, backend(), rng());
  const std::vector<float> x = testing::random_activations(B, c.sources, c.width, rng);
  randomise_biases(model, rng, x, B);

  const ReferenceParameters p = ReferenceParameters::from(model);
  const testing::ReferenceForward expected = testing::reference_forward(c, p, x, B, c.k);
  const HostSparseCodes codes = model.encode(x, B);
  for (int b = 0; b < B; ++b) {
    std::set<int> got(codes.latent.begin() + codes.row_ptr[b],
                      codes.latent.begin() + codes.row_ptr[b + 1]);
    std::set<int> want(expected.active[b].begin(), expected.active[b].end());
    ASSERT_EQ(got, want) << "row " << b;
    const std::vector<float> dense = codes.dense_row(b, c.latents);
    for (int f = 0; f < c.latents; ++f) {
      ASSERT_NEAR(dense[f], expected.activation[b * c.latents + f], 1e-4)
          << "row " << b << " latent " << f;
    }
  }
  if (activation == Activation::topk) {
    for (int b = 0; b < B; ++b) {
      ASSERT_EQ(codes.row_ptr[b + 1] - codes.row_ptr[b], c.k);
    }
  }
  if (activation == Activation::batchtopk) {
    ASSERT_EQ(codes.row_ptr[B], static_cast<std::int64_t>(B) * c.k);
  }

  const std::vector<float> recon = model.reconstruct(x, B);
  const int D = c.sources * c.width;
  for (int b = 0; b < B; ++b)
    for (int m = 0; m < c.sources; ++m)
      for (int i = 0; i < c.width; ++i) {
        const int j = m * c.width + i;
        const double raw = expected.recon[b * D + j] / p.scale[j] + p.mean[j];
        ASSERT_NEAR(recon[b * D + j], raw, 1e-4 * (1.0 + std::abs(raw)));
      }
}

TEST_P(CrosscoderNumerics, GradientsMatchCentralFiniteDifferences) {
  const auto [activation, dedicated, study, matryoshka] = the_case();
  std::mt19937_64 rng(fresh_seed());
  const CrosscoderConfig c = case_config(the_case());
  const int B = 12;
  Crosscoder model(c, backend(), rng());
  std::vector<float> x;
  // Draw until no pre-activation sits within reach of a selection boundary or kink, where
  // float32 and float64 may disagree about which side it is on.
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 50) << "could not draw inputs away from selection boundaries";
    x = testing::random_activations(B, c.sources, c.width, rng);
    randomise_biases(model, rng, x, B);
    const ReferenceParameters p = ReferenceParameters::from(model);
    if (testing::selection_margin(c, p, testing::reference_forward(c, p, x, B, c.k), B, 5) > 1e-3)
      break;
  }

  TrainConfig t;  // aux_k = 5 matches the margin check above
  t.l1_coefficient = 0.3f;
  t.l0_coefficient = 0.2f;
  t.dead_after_tokens = 0;  // every latent counts as dead, so AuxK is active
  t.aux_k = 5;
  t.auxk_coefficient = 0.25f;
  if (study) use_study_objective(t);
  if (matryoshka) t.matryoshka_weights = {0.5f, 0.2f, 0.9f};
  Trainer trainer(model, t);
  const StepReport report = trainer.compute_gradients(x, B);

  const ReferenceParameters base = ReferenceParameters::from(model);
  const testing::ReferenceForward fixed = testing::reference_forward(c, base, x, B, c.k);
  testing::ReferenceAux aux;
  if ((activation == Activation::topk || activation == Activation::batchtopk) &&
      t.auxk_coefficient > 0.0f) {
    aux = testing::reference_aux_all_dead(c, fixed, B, t.aux_k);
  }
  if (study) {
    EXPECT_EQ(report.auxk, 0.0);
    EXPECT_GT(report.sparsity, 0.0) << "the partition L1 added nothing: the test checks nothing";
  }
  const double reference = testing::reference_loss(c, t, base, x, B, fixed, aux);
  const double sparsity_offset = activation == Activation::jumprelu ? report.sparsity : 0.0;
  ASSERT_NEAR(report.loss - sparsity_offset, reference, 1e-4 * (1.0 + std::abs(reference)));

  const Gradients& g = trainer.gradients();
  struct Tensor {
    const char* name;
    std::vector<double> ReferenceParameters::*field;
    const DeviceArray<float>* gradient;
  };
  const Tensor tensors[] = {{"encoder.weight", &ReferenceParameters::encoder, &g.encoder_weight},
                            {"encoder.bias", &ReferenceParameters::encoder_bias, &g.encoder_bias},
                            {"decoder.weight", &ReferenceParameters::decoder, &g.decoder_weight},
                            {"decoder.bias", &ReferenceParameters::decoder_bias, &g.decoder_bias}};
  const double h = 1e-5;
  for (const Tensor& tensor : tensors) {
    const std::vector<float> library = tensor.gradient->download();
    std::uniform_int_distribution<std::size_t> pick(0, library.size() - 1);
    for (int sample = 0; sample < 40; ++sample) {
      const std::size_t i = pick(rng);
      ReferenceParameters plus = base, minus = base;
      (plus.*tensor.field)[i] += h;
      (minus.*tensor.field)[i] -= h;
      const double numeric = (testing::reference_loss(c, t, plus, x, B, fixed, aux) -
                              testing::reference_loss(c, t, minus, x, B, fixed, aux)) /
                             (2 * h);
      ASSERT_NEAR(library[i], numeric, 2e-4 + 2e-3 * std::abs(numeric))
          << tensor.name << "[" << i << "] " << to_string(activation);
    }
  }

  if (activation == Activation::jumprelu) {
    // The threshold's straight-through pseudo-gradient against its formula, in float64.
    const int D = c.sources * c.width, F = c.latents;
    std::vector<double> theta_grad(F, 0.0);
    for (int b = 0; b < B; ++b)
      for (int f = 0; f < F; ++f) {
        const double pre = fixed.pre[b * F + f];
        if (std::abs(pre - base.threshold[f]) >= c.jumprelu_bandwidth / 2) continue;
        double dot = 0.0;
        for (int j = 0; j < D; ++j)
          dot += base.decoder[f * D + j] * 2.0 * (fixed.recon[b * D + j] - fixed.xn[b * D + j]) / B;
        theta_grad[f] += -base.threshold[f] / c.jumprelu_bandwidth * dot -
                         t.l0_coefficient / (B * c.jumprelu_bandwidth);
      }
    const std::vector<float> library = g.threshold.download();
    int near = 0;
    for (int f = 0; f < F; ++f) {
      ASSERT_NEAR(library[f], theta_grad[f], 1e-4 * (1.0 + std::abs(theta_grad[f])))
          << "threshold " << f;
      near += theta_grad[f] != 0.0;
    }
    EXPECT_GT(near, 0)
        << "no pre-activation fell in the estimator's window: the test checked nothing";
  }
}

TEST_P(CrosscoderNumerics, TrainingKeepsTheVariantsInvariants) {
  const auto [activation, dedicated, study, matryoshka] = the_case();
  std::mt19937_64 rng(fresh_seed());
  CrosscoderConfig c = case_config(the_case());
  c.exclusive = {3, 4};
  const int B = 32;
  Crosscoder model(c, backend(), rng());
  TrainConfig t;
  t.steps = 30;
  t.warmup_steps = 3;
  t.learning_rate = 1e-2f;
  t.dead_after_tokens = 64;
  t.threshold_start_step = 0;  // 30 steps: the default (1001) would never learn the threshold
  if (study) use_study_objective(t);
  Trainer trainer(model, t);
  for (int s = 0; s < t.steps; ++s) {
    const std::vector<float> x = testing::random_activations(B, c.sources, c.width, rng);
    const StepReport r = trainer.step(x, B);
    ASSERT_TRUE(std::isfinite(r.loss));
    if (activation == Activation::topk || activation == Activation::batchtopk) {
      ASSERT_DOUBLE_EQ(r.l0, c.k);
    }
  }
  const int D = c.sources * c.width;
  const std::vector<float> encoder = model.parameters().encoder_weight.download();
  const std::vector<float> decoder = model.parameters().decoder_weight.download();
  for (int f = c.shared_latents(); f < c.latents; ++f)
    for (int m = 0; m < c.sources; ++m) {
      if (c.latent_uses_source(f, m)) continue;
      for (int i = 0; i < c.width; ++i) {
        ASSERT_EQ(encoder[f * D + m * c.width + i], 0.0f) << "latent " << f << " source " << m;
        ASSERT_EQ(decoder[f * D + m * c.width + i], 0.0f) << "latent " << f << " source " << m;
      }
    }
  if (activation == Activation::topk || activation == Activation::batchtopk) {
    // Unit-norm rows, unless the study's free decoder norms let them move.
    double largest_change = 0.0;
    for (int f = 0; f < c.latents; ++f) {
      double squared = 0.0;
      for (int j = 0; j < D; ++j)
        squared += static_cast<double>(decoder[f * D + j]) * decoder[f * D + j];
      if (!study) {
        ASSERT_NEAR(std::sqrt(squared), 1.0, 1e-5) << "latent " << f;
      }
      largest_change = std::max(largest_change, std::abs(std::sqrt(squared) - 1.0));
    }
    if (study) {
      EXPECT_GT(largest_change, 1e-3) << "free decoder norms never left 1";
    }
  }
  if (activation == Activation::batchtopk) {
    EXPECT_GT(model.batch_threshold(), 0.0f);
  }
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<BackendKind, Case>>& info) {
  const Case c = std::get<1>(info.param);
  return std::string(to_string(std::get<0>(info.param))) + "_" +
         std::string(to_string(c.activation)) + (c.dedicated ? "_dedicated" : "") +
         (c.study ? "_study" : "") + (c.matryoshka ? "_matryoshka" : "");
}

INSTANTIATE_TEST_SUITE_P(
    Variants, CrosscoderNumerics,
    ::testing::Combine(
        ::testing::ValuesIn(testing::usable_backend_kinds()),
        ::testing::Values(Case{Activation::relu, false}, Case{Activation::topk, false},
                          Case{Activation::batchtopk, false}, Case{Activation::jumprelu, false},
                          Case{Activation::relu, true}, Case{Activation::topk, true},
                          Case{Activation::batchtopk, true}, Case{Activation::jumprelu, true},
                          Case{Activation::relu, true, true}, Case{Activation::topk, true, true},
                          Case{Activation::batchtopk, true, true},
                          Case{Activation::topk, false, false, true},
                          Case{Activation::batchtopk, true, false, true})),
    case_name);

TEST(CrosscoderConfigChecks, RejectsBadShapesWithTheFieldName) {
  CrosscoderConfig c = small_config(Activation::topk, false);
  const auto message_of = [](const CrosscoderConfig& config) {
    try {
      config.validate();
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  c.k = 0;
  EXPECT_NE(message_of(c).find("k must"), std::string::npos);
  c.k = c.latents;
  EXPECT_NE(message_of(c).find("k must"), std::string::npos);
  c.k = 4;
  c.exclusive = {20, 20};
  EXPECT_NE(message_of(c).find("exclusive"), std::string::npos);
  c.exclusive = {1};
  EXPECT_NE(message_of(c).find("exclusive lists 1 blocks but there are 2 models"),
            std::string::npos);
  c = small_config(Activation::relu, true);
  EXPECT_EQ(CrosscoderConfig::from_json(c.to_json()).to_json(), c.to_json());
  EXPECT_THROW(CrosscoderConfig::from_json("{\"sources\": 2}"), Error);
  EXPECT_THROW(CrosscoderConfig::from_json("not json"), Error);
}

TEST(CrosscoderInput, NonFiniteValuesAreNamedByRowAndSource) {
  const CrosscoderConfig c = small_config(Activation::topk, false);
  Crosscoder model(c, make_backend(BackendKind::cpu), 1);
  std::mt19937_64 rng(fresh_seed());
  std::vector<float> x = testing::random_activations(8, c.sources, c.width, rng);
  x[5 * c.sources * c.width + c.width + 2] = std::nanf("");
  Trainer trainer(model, TrainConfig{});
  try {
    trainer.step(x, 8);
    FAIL() << "expected an Error";
  } catch (const Error& error) {
    const std::string what = error.what();
    EXPECT_NE(what.find("row 5"), std::string::npos) << what;
    EXPECT_NE(what.find("source 1"), std::string::npos) << what;
  }
  EXPECT_THROW(model.encode(std::vector<float>(7, 1.0f), 1), Error);
}

// A batch encoded and selected tile by tile trains the same model as the whole batch at once,
// for every variant (BatchTopK through its tiled candidates, AuxK and JumpReLU's support too).
TEST(CrosscoderTraining, TilesOfTheBatchTrainTheSameModel) {
  for (const auto& [activation, dedicated] :
       {std::pair{Activation::relu, false}, std::pair{Activation::topk, false},
        std::pair{Activation::batchtopk, false}, std::pair{Activation::batchtopk, true},
        std::pair{Activation::jumprelu, false}}) {
    SCOPED_TRACE(::testing::Message() << to_string(activation) << (dedicated ? " dedicated" : ""));
    const CrosscoderConfig c = small_config(activation, dedicated);
    std::mt19937_64 rng(fresh_seed());
    std::vector<std::vector<float>> batches;
    for (int s = 0; s < 12; ++s)
      batches.push_back(testing::random_activations(32, c.sources, c.width, rng));
    const std::uint64_t seed = rng();
    const auto run = [&](std::int64_t tile_rows) {
      Crosscoder model(c, make_backend(BackendKind::cpu), seed);
      TrainConfig t;
      t.steps = 12;
      t.batch_size = 32;
      t.dead_after_tokens = 32;  // dead latents appear, so AuxK runs
      t.tile_rows = tile_rows;
      Trainer trainer(model, t);
      std::vector<double> losses;
      for (const auto& batch : batches) losses.push_back(trainer.step(batch, 32).loss);
      return std::pair{losses, model.parameters().decoder_weight.download()};
    };
    const auto [whole_losses, whole_decoder] = run(0);
    for (const std::int64_t tile : {std::int64_t{7}, std::int64_t{1}}) {
      const auto [losses, decoder] = run(tile);
      for (std::size_t s = 0; s < losses.size(); ++s)
        EXPECT_NEAR(losses[s], whole_losses[s], 1e-6 * std::abs(whole_losses[s]))
            << "step " << s + 1 << ", tile " << tile;
      for (std::size_t i = 0; i < decoder.size(); ++i)
        ASSERT_NEAR(decoder[i], whole_decoder[i], 1e-5) << i << ", tile " << tile;
    }
  }
}

TEST(CrosscoderTraining, IsDeterministicForASeed) {
  CrosscoderConfig c = small_config(Activation::batchtopk, true);
  std::mt19937_64 rng(fresh_seed());
  std::vector<std::vector<float>> batches;
  for (int s = 0; s < 10; ++s)
    batches.push_back(testing::random_activations(16, c.sources, c.width, rng));
  const std::uint64_t seed = rng();
  const auto run = [&] {
    Crosscoder model(c, make_backend(BackendKind::cpu), seed);
    TrainConfig t;
    t.steps = 10;
    t.dead_after_tokens = 16;
    Trainer trainer(model, t);
    for (const auto& batch : batches) trainer.step(batch, 16);
    return model.parameters().encoder_weight.download();
  };
  EXPECT_EQ(run(), run());
}

}  // namespace
}  // namespace crosscoder

namespace crosscoder {
namespace {

TEST(TrainingSchedules, WarmupDecayAndKAnnealingFollowTheirDefinitions) {
  CrosscoderConfig c = small_config(Activation::batchtopk, false);
  c.k = 6;
  Crosscoder model(c, make_backend(BackendKind::cpu), 1);
  TrainConfig t;
  t.steps = 100;
  t.learning_rate = 1e-3f;
  t.warmup_steps = 10;
  t.decay_fraction = 0.2f;
  t.k_initial = 20;
  t.k_anneal_steps = 50;
  Trainer trainer(model, t);
  EXPECT_FLOAT_EQ(trainer.learning_rate_at(1), 1e-4f);
  EXPECT_FLOAT_EQ(trainer.learning_rate_at(10), 1e-3f);
  EXPECT_FLOAT_EQ(trainer.learning_rate_at(80), 1e-3f);
  EXPECT_FLOAT_EQ(trainer.learning_rate_at(81), 1e-3f * 20.0f / 21.0f);
  EXPECT_FLOAT_EQ(trainer.learning_rate_at(100), 1e-3f / 21.0f);
  EXPECT_EQ(trainer.k_at(0), 20);
  EXPECT_EQ(trainer.k_at(25), 13);
  EXPECT_EQ(trainer.k_at(50), 6);
  EXPECT_EQ(trainer.k_at(99), 6);

  // The annealed k is the one in force: exactly B·k_at(step) active entries.
  std::mt19937_64 rng(fresh_seed());
  for (int s = 1; s <= 3; ++s) {
    const StepReport r = trainer.step(testing::random_activations(16, c.sources, c.width, rng), 16);
    EXPECT_EQ(r.k, trainer.k_at(s));
    EXPECT_DOUBLE_EQ(r.l0, r.k);
  }
}

TEST(TrainingSchedules, GradientNormIsTheConstrainedGradientsNorm) {
  // The step's norm (from the sparse backward's row sums where they hold) against float64 over
  // the raw gradients as the optimiser constrains them: frozen blocks of exclusive latents left
  // out, unit-norm decoder rows without their component along the row. Dead latents after a
  // few steps, so that AuxK's accumulating pass contributes too.
  for (const Activation activation :
       {Activation::relu, Activation::topk, Activation::batchtopk, Activation::jumprelu}) {
    for (const bool dedicated : {false, true}) {
      SCOPED_TRACE(std::string(to_string(activation)) + (dedicated ? ", dedicated" : ""));
      CrosscoderConfig c = small_config(activation, dedicated);
      c.latents = 96;  // 2 of 96 per row: most latents stay silent, so AuxK has dead ones
      c.k = 2;
      std::mt19937_64 rng(fresh_seed());
      const int rows = 32;
      TrainConfig t;
      t.gradient_clip = 0.0f;
      t.dead_after_tokens = rows;
      t.aux_k = 6;
      Crosscoder model(c, make_backend(BackendKind::cpu), rng());
      Trainer trainer(model, t);
      for (int warm = 0; warm < 3; ++warm)
        trainer.step(testing::random_activations(rows, c.sources, c.width, rng), rows);
      const std::vector<float> x = testing::random_activations(rows, c.sources, c.width, rng);
      const StepReport probe = trainer.compute_gradients(x, rows);
      const Gradients& g = trainer.gradients();
      const std::vector<float> decoder = model.parameters().decoder_weight.download();
      const std::vector<float> d_enc = g.encoder_weight.download(),
                               d_dec = g.decoder_weight.download();
      const bool unit = activation == Activation::topk || activation == Activation::batchtopk;
      const int D = static_cast<int>(c.input_width());
      double squared = 0.0;
      for (int f = 0; f < c.latents; ++f) {
        double along = 0.0, row = 0.0;
        for (int j = 0; j < D; ++j) {
          if (!c.latent_uses_source(f, j / c.width)) continue;
          along += static_cast<double>(d_dec[f * D + j]) * decoder[f * D + j];
          row += static_cast<double>(decoder[f * D + j]) * decoder[f * D + j];
        }
        const double scale = unit && row > 0.0 ? along / row : 0.0;
        for (int j = 0; j < D; ++j) {
          if (!c.latent_uses_source(f, j / c.width)) continue;
          const double projected = d_dec[f * D + j] - scale * decoder[f * D + j];
          squared +=
              static_cast<double>(d_enc[f * D + j]) * d_enc[f * D + j] + projected * projected;
        }
      }
      for (const DeviceArray<float>* a : {&g.encoder_bias, &g.decoder_bias, &g.threshold})
        for (float v : a->download()) squared += static_cast<double>(v) * v;
      const StepReport r = trainer.step(x, rows);
      if (unit) {
        EXPECT_GT(probe.auxk, 0.0) << "AuxK should have run";
      }
      EXPECT_NEAR(r.gradient_norm, std::sqrt(squared), 1e-5 * std::sqrt(squared));
    }
  }
}

TEST(TrainingSchedules, GradientClippingScalesTheGradientAdamSees) {
  // On the first Adam step the update is lr·ĝ/(|ĝ| + ε) with ĝ the (clipped) gradient, so with
  // ε = 1 clipping to a tenth of the norm changes every update in a predictable way.
  CrosscoderConfig c = small_config(Activation::relu, false);
  std::mt19937_64 rng(fresh_seed());
  const std::uint64_t seed = rng();
  const std::vector<float> x = testing::random_activations(32, c.sources, c.width, rng);
  TrainConfig t;
  t.warmup_steps = 0;
  t.decay_fraction = 0.0f;
  t.learning_rate = 1.0f;
  t.epsilon = 1.0f;
  t.gradient_clip = 0.0f;  // off: measure the raw gradient first

  Crosscoder probe(c, make_backend(BackendKind::cpu), seed);
  Trainer probing(probe, t);
  probing.compute_gradients(x, 32);
  const Gradients& g = probing.gradients();
  double squared = 0.0;
  for (const DeviceArray<float>* a :
       {&g.encoder_weight, &g.encoder_bias, &g.decoder_weight, &g.decoder_bias})
    for (float v : a->download()) squared += static_cast<double>(v) * v;
  const double norm = std::sqrt(squared);
  const std::vector<float> raw_bias_gradient = g.encoder_bias.download();

  t.gradient_clip = static_cast<float>(norm / 10.0);
  Crosscoder model(c, make_backend(BackendKind::cpu), seed);
  Trainer trainer(model, t);
  const std::vector<float> before = model.parameters().encoder_bias.download();
  const StepReport r = trainer.step(x, 32);
  EXPECT_NEAR(r.gradient_norm, norm, 1e-4 * norm);
  const std::vector<float> after = model.parameters().encoder_bias.download();
  int moved = 0;
  for (std::size_t i = 0; i < before.size(); ++i) {
    const double clipped = raw_bias_gradient[i] * 0.1;
    const double expected = -clipped / (std::abs(clipped) + 1.0);
    EXPECT_NEAR(after[i] - before[i], expected, 1e-5 + 1e-3 * std::abs(expected)) << "bias " << i;
    moved += raw_bias_gradient[i] != 0.0f;
  }
  EXPECT_GT(moved, 0);
  TrainConfig bad;
  bad.learning_rate = -1.0f;
  EXPECT_THROW(Trainer(model, bad), Error);
}

// The BatchTopK threshold's moving average skips the first threshold_start_step steps, then
// starts from that step's smallest selected score and moves with momentum 0.999, the scores
// taken from the float64 reference forward pass of each step's batch.
TEST(TrainingSchedules, ThresholdStartsAfterThresholdStartStep) {
  std::mt19937_64 rng(fresh_seed());
  const CrosscoderConfig c = small_config(Activation::batchtopk, false);
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  TrainConfig t;
  t.steps = 6;
  t.warmup_steps = 0;
  t.threshold_start_step = 3;
  Trainer trainer(model, t);
  const int B = 16;
  double expected = -1.0;
  for (int s = 1; s <= 6; ++s) {
    const std::vector<float> x = testing::random_activations(B, c.sources, c.width, rng);
    if (s == 1) model.fit_normaliser(x, B);  // so the reference sees the step's normaliser
    const auto p = testing::ReferenceParameters::from(model);
    const double score = testing::reference_forward(c, p, x, B, c.k).min_selected_score;
    ASSERT_GT(score, 0.0);
    trainer.step(x, B);
    if (s > 3) expected = expected < 0.0 ? score : 0.999 * expected + 0.001 * score;
    if (s <= 3) {
      EXPECT_EQ(model.batch_threshold(), -1.0f) << "step " << s;
    } else {
      EXPECT_NEAR(model.batch_threshold(), expected, 1e-4 * expected) << "step " << s;
    }
  }
  // dictionary_learning's rule by default: its 0-based step must exceed 1000.
  EXPECT_EQ(TrainConfig{}.threshold_start_step, 1001);
}

// The automatic dead-latent horizon, and AuxK starting exactly when a latent has been silent
// that long: with S steps of B rows, H = min(10 M, ⌊S·B/10⌋); a latent that never fires is
// dead from step ⌈H/B⌉ + 1 on, when the AuxK term first appears.
TEST(TrainingSchedules, DeadHorizonScalesWithTheRunAndAuxKStartsOnTime) {
  TrainConfig t;
  EXPECT_EQ(t.dead_after_tokens, TrainConfig::kAutomatic);
  t.steps = 1000;
  t.batch_size = 1024;
  EXPECT_EQ(t.dead_horizon(), 102'400);  // 1000·1024/10
  t.steps = 100'000;
  t.batch_size = 4096;
  EXPECT_EQ(t.dead_horizon(), 10'000'000);  // capped at dictionary_learning's
  t.steps = 7;
  t.batch_size = 3;
  EXPECT_EQ(t.dead_horizon(), 2);  // ⌊21/10⌋
  t.steps = 1;
  EXPECT_EQ(t.dead_horizon(), 1);  // never below one row
  t.dead_after_tokens = 12'345;
  EXPECT_EQ(t.dead_horizon(), 12'345);  // an explicit horizon is kept
  t.dead_after_tokens = -2;
  EXPECT_THROW(t.validate(), Error);

  std::mt19937_64 rng(fresh_seed());
  CrosscoderConfig c = small_config(Activation::topk, false);
  c.normalisation = Normalisation::none;
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  // The last latent can never fire: zero encoder row, negative bias (and ties at a score of 0
  // go to lower indices).
  const int silent = c.latents - 1;
  std::vector<float> encoder = model.parameters().encoder_weight.download();
  std::vector<float> bias(static_cast<std::size_t>(c.latents), 0.0f);
  const int D = c.sources * c.width;
  for (int j = 0; j < D; ++j) encoder[silent * D + j] = 0.0f;
  bias[silent] = -100.0f;
  model.parameters().encoder_weight.upload(encoder);
  model.parameters().encoder_bias.upload(bias);
  TrainConfig train;
  train.steps = 40;
  train.batch_size = 32;  // H = ⌊40·32/10⌋ = 128 rows: dead from step 128/32 + 1 = 5
  train.warmup_steps = 0;
  ASSERT_EQ(train.dead_horizon(), 128);
  Trainer trainer(model, train);
  for (int s = 1; s <= 8; ++s) {
    const StepReport r = trainer.step(testing::random_activations(32, c.sources, c.width, rng), 32);
    if (s < 5) {
      EXPECT_EQ(r.auxk, 0.0) << "step " << s;
    } else {
      EXPECT_GT(r.auxk, 0.0) << "step " << s;
    }
    EXPECT_EQ(trainer.tokens_since_fired()[silent], 32 * s);
  }
}

// The new fields round-trip through TrainConfig's JSON; a checkpoint's config written before
// threshold_start_step existed reads as 0 (it updated the threshold from the first step).
TEST(TrainingSchedules, NewFieldsRoundTripThroughJson) {
  TrainConfig t;
  t.threshold_start_step = 77;
  t.dead_after_tokens = TrainConfig::kAutomatic;
  const TrainConfig back = TrainConfig::from_json(t.to_json());
  EXPECT_EQ(back.threshold_start_step, 77);
  EXPECT_EQ(back.dead_after_tokens, TrainConfig::kAutomatic);
  EXPECT_EQ(back.to_json(), t.to_json());
  t.dead_after_tokens = 4096;
  EXPECT_EQ(TrainConfig::from_json(t.to_json()).dead_after_tokens, 4096);
  auto old = nlohmann::json::parse(t.to_json());
  old.erase("threshold_start_step");
  EXPECT_EQ(TrainConfig::from_json(old.dump()).threshold_start_step, 0);
  t.threshold_start_step = -1;
  EXPECT_THROW(t.validate(), Error);
}

}  // namespace
}  // namespace crosscoder
