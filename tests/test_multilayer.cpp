// Crosscoders across layers: sources grouped into models (CrosscoderConfig::source_models),
// dedicated partitions exclusive to a model across all its blocks, and the per-model weight
// metrics against float64 definitions, on fresh random weights.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>

#include "crosscoder/crosscoder.hpp"
#include "expect_error.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

std::uint64_t fresh_seed() {
  return (static_cast<std::uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
}

// Two models × two blocks: sources (base, block 1), (base, block 2), (tuned, 1), (tuned, 2).
CrosscoderConfig two_models_two_blocks() {
  CrosscoderConfig c;
  c.sources = 4;
  c.width = 5;
  c.latents = 30;
  c.k = 3;
  c.activation = Activation::batchtopk;
  c.source_models = {0, 0, 1, 1};
  c.exclusive = {3, 5};
  return c;
}

TEST(AcrossLayers, ConfigGroupsSourcesIntoModels) {
  const CrosscoderConfig c = two_models_two_blocks();
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.models(), 2);
  EXPECT_EQ(c.model_of(3), 1);
  // Latents 22..24 belong to model 0 (both its blocks), 25..29 to model 1.
  EXPECT_EQ(c.exclusive_owner(21), -1);
  EXPECT_EQ(c.exclusive_owner(22), 0);
  EXPECT_EQ(c.exclusive_owner(29), 1);
  EXPECT_TRUE(c.latent_uses_source(22, 1));
  EXPECT_FALSE(c.latent_uses_source(22, 2));
  EXPECT_TRUE(c.latent_uses_source(29, 2));
  EXPECT_FALSE(c.latent_uses_source(29, 0));
  const CrosscoderConfig back = CrosscoderConfig::from_json(c.to_json());
  EXPECT_EQ(back.source_models, c.source_models);
  EXPECT_EQ(back.to_json(), c.to_json());
  // Without grouping the JSON stays as it always was.
  CrosscoderConfig plain = c;
  plain.source_models.clear();
  plain.exclusive.clear();
  EXPECT_EQ(nlohmann::json::parse(plain.to_json()).count("source_models"), 0u);

  CrosscoderConfig bad = c;
  bad.source_models = {0, 0, 1};
  testing::expect_error([&] { bad.validate(); }, "source_models lists 3 models for 4 sources");
  bad.source_models = {0, 0, 2, 2};
  bad.exclusive.clear();
  testing::expect_error([&] { bad.validate(); }, "numbers models 0 … 2 but none is 1");
  bad.source_models = {0, 0, 1, 1};
  bad.exclusive = {3, 3, 3, 3};
  testing::expect_error([&] { bad.validate(); }, "exclusive lists 4 blocks but there are 2 models");
}

TEST(AcrossLayers, ExclusiveLatentsStayZeroInEveryBlockOfTheOtherModel) {
  std::mt19937_64 rng(fresh_seed());
  const CrosscoderConfig c = two_models_two_blocks();
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  TrainConfig t;
  t.steps = 25;
  t.batch_size = 32;
  t.warmup_steps = 2;
  t.learning_rate = 1e-2f;
  t.threshold_start_step = 0;
  t.dead_after_tokens = 64;
  Trainer trainer(model, t);
  // One batch throughout: fitting it must lower the loss (fresh random batches at this rate
  // are too noisy for a 25-step comparison; the zero blocks below are the point).
  const std::vector<float> batch = testing::random_activations(32, c.sources, c.width, rng);
  double first = 0.0, last = 0.0;
  for (int s = 0; s < t.steps; ++s) {
    const StepReport r = trainer.step(batch, 32);
    (s == 0 ? first : last) = r.loss;
  }
  EXPECT_LT(last, first) << "training did not reduce the loss on a fixed batch";
  const int D = c.sources * c.width;
  const std::vector<float> encoder = model.parameters().encoder_weight.download();
  const std::vector<float> decoder = model.parameters().decoder_weight.download();
  int frozen = 0, trained = 0;
  for (int f = c.shared_latents(); f < c.latents; ++f)
    for (int m = 0; m < c.sources; ++m)
      for (int i = 0; i < c.width; ++i) {
        const float e = encoder[f * D + m * c.width + i], d = decoder[f * D + m * c.width + i];
        if (c.latent_uses_source(f, m)) {
          trained += d != 0.0f ? 1 : 0;
        } else {
          ASSERT_EQ(e, 0.0f) << "latent " << f << " source " << m;
          ASSERT_EQ(d, 0.0f) << "latent " << f << " source " << m;
          ++frozen;
        }
      }
  EXPECT_EQ(frozen, (3 + 5) * 2 * c.width);  // each exclusive latent, the other model's 2 blocks
  EXPECT_EQ(trained, (3 + 5) * 2 * c.width);
}

TEST(AcrossLayers, ModelNormsAndClassesMatchTheirDefinitions) {
  std::mt19937_64 rng(fresh_seed());
  const CrosscoderConfig c = two_models_two_blocks();
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  // Random decoder rows with some blocks shrunk, so that every class and peak occurs.
  std::normal_distribution<float> normal;
  std::vector<float> decoder = model.parameters().decoder_weight.download();
  const int D = c.sources * c.width;
  for (int f = 0; f < c.latents; ++f)
    for (int m = 0; m < c.sources; ++m) {
      const float shrink = (f + m) % 3 == 0 ? 0.02f : 1.0f + static_cast<float>(m);
      for (int i = 0; i < c.width; ++i) {
        float& v = decoder[f * D + m * c.width + i];
        if (c.latent_uses_source(f, m)) v = normal(rng) * shrink;
      }
    }
  model.parameters().decoder_weight.upload(decoder);
  const WeightMetrics w = weight_metrics(model, 0.9);
  ASSERT_EQ(w.models, 2);
  std::set<int> classes;
  for (int f = 0; f < c.latents; ++f) {
    double model_norm[2] = {0.0, 0.0}, largest = -1.0;
    int peak = -1;
    for (int m = 0; m < c.sources; ++m) {
      double squares = 0.0;
      for (int i = 0; i < c.width; ++i) squares += std::pow(decoder[f * D + m * c.width + i], 2.0);
      model_norm[c.source_models[m]] += squares;
      if (std::sqrt(squares) > largest) largest = std::sqrt(squares), peak = m;
    }
    const double a = std::sqrt(model_norm[0]), b = std::sqrt(model_norm[1]);
    EXPECT_NEAR(w.model_norm[f * 2 + 0], a, 1e-5 * (1 + a));
    EXPECT_NEAR(w.model_norm[f * 2 + 1], b, 1e-5 * (1 + b));
    EXPECT_NEAR(w.model_relative_norm[f * 2 + 1], b / (a + b), 1e-5);
    const int want = b / (a + b) >= 0.9 ? 1 : a / (a + b) >= 0.9 ? 0 : kSharedLatent;
    EXPECT_EQ(w.model_class[f], want) << "latent " << f;
    EXPECT_EQ(w.peak_source[f], peak) << "latent " << f;
    classes.insert(w.model_class[f]);
  }
  EXPECT_EQ(classes.size(), 3u) << "not every class occurred: the test checks less";
  // The JSON and the rankings carry them.
  DiffReport report = diff(model);
  const nlohmann::json json = nlohmann::json::parse(diff_report_json(report));
  EXPECT_EQ(json["latents"][25]["model_class"], "exclusive:1");
  EXPECT_EQ(json["summary"]["source_models"], nlohmann::json({0, 0, 1, 1}));
  EXPECT_EQ(latent_metric(report, "model_relative_norm_1")[7],
            static_cast<double>(w.model_relative_norm[7 * 2 + 1]));
}

}  // namespace
}  // namespace crosscoder
