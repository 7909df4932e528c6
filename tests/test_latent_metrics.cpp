// Weight-only latent metrics against float64 loops on fresh random crosscoders.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/latent_metrics.hpp"

namespace crosscoder {
namespace {

double norm_of(const std::vector<float>& v, std::size_t offset, int width) {
  double s = 0.0;
  for (int i = 0; i < width; ++i) s += static_cast<double>(v[offset + i]) * v[offset + i];
  return std::sqrt(s);
}

TEST(LatentMetrics, MatchFloat64LoopsForThreeSourcesWithExclusiveBlocks) {
  std::mt19937_64 rng(std::random_device{}());
  CrosscoderConfig c;
  c.sources = 3;
  c.width = 7;
  c.latents = 30;
  c.k = 3;
  c.activation = Activation::topk;
  c.exclusive = {2, 3, 4};
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  // Random, un-normalised decoder rows with some sources shrunk, so every class occurs.
  std::normal_distribution<float> normal;
  std::vector<float> decoder = model.decoder_vectors();
  std::vector<float> encoder = model.parameters().encoder_weight.download();
  const int D = 21;
  for (int f = 0; f < c.shared_latents(); ++f)
    for (int m = 0; m < 3; ++m) {
      const float scale = (f % 4 == 0 && m == 1) ? 0.01f : (f % 4 == 1 && m != 2 ? 0.02f : 1.0f);
      for (int i = 0; i < 7; ++i) {
        decoder[f * D + m * 7 + i] = scale * normal(rng);
        encoder[f * D + m * 7 + i] = normal(rng);
      }
    }
  model.parameters().decoder_weight.upload(decoder);
  model.parameters().encoder_weight.upload(encoder);

  const WeightMetrics metrics = weight_metrics(model, 0.9);
  ASSERT_EQ(metrics.decoder_cosine.size(), 30u * 3u);
  EXPECT_TRUE(metrics.normalised_difference.empty());
  std::set<int> classes;
  for (int f = 0; f < 30; ++f) {
    double norms[3], total = 0.0;
    for (int m = 0; m < 3; ++m) {
      norms[m] = norm_of(decoder, f * D + m * 7, 7);
      total += norms[m];
    }
    for (int m = 0; m < 3; ++m) {
      EXPECT_NEAR(metrics.decoder_norm[f * 3 + m], norms[m], 1e-5 * (1 + norms[m]));
      EXPECT_NEAR(metrics.relative_norm[f * 3 + m], norms[m] / total, 1e-5);
    }
    int pair = 0;
    for (int m = 0; m < 3; ++m)
      for (int n = m + 1; n < 3; ++n, ++pair) {
        for (const auto& [values, got] : {std::pair{&decoder, &metrics.decoder_cosine},
                                          std::pair{&encoder, &metrics.encoder_cosine}}) {
          const double a = norm_of(*values, f * D + m * 7, 7),
                       b = norm_of(*values, f * D + n * 7, 7);
          double dot = 0.0;
          for (int i = 0; i < 7; ++i)
            dot += static_cast<double>((*values)[f * D + m * 7 + i]) * (*values)[f * D + n * 7 + i];
          const double want = a > 0 && b > 0 ? dot / (a * b) : 0.0;
          EXPECT_NEAR((*got)[f * 3 + pair], want, 1e-5) << "latent " << f << " pair " << pair;
        }
      }
    // The class by the rule written out: exclusive when r ≥ 0.9, shared when all r > 0.05.
    int want = kMixedLatent;
    double smallest = 1.0;
    for (int m = 0; m < 3; ++m) {
      if (norms[m] / total >= 0.9) want = m;
      smallest = std::min(smallest, norms[m] / total);
    }
    if (want == kMixedLatent && smallest > 0.05) want = kSharedLatent;
    EXPECT_EQ(metrics.latent_class[f], want) << "latent " << f;
    classes.insert(metrics.latent_class[f]);
    // Exclusive blocks classify as their owner.
    if (c.exclusive_owner(f) >= 0) {
      EXPECT_EQ(metrics.latent_class[f], c.exclusive_owner(f));
    }
  }
  EXPECT_GE(classes.size(), 4u) << "the test should see shared, mixed and exclusive latents";
  EXPECT_THROW(weight_metrics(model, 0.5), Error);
}

TEST(LatentMetrics, NormalisedDifferenceForTwoSources) {
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 3;
  c.latents = 4;
  c.k = 1;
  c.activation = Activation::topk;
  Crosscoder model(c, make_backend(BackendKind::cpu), 5);
  // Rows: only source 0; only source 1; equal; norms 2 and 1.
  const std::vector<float> decoder = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0,
                                      0, 1, 0, 1, 0, 0, 2, 0, 0, 0, 0, 1};
  model.parameters().decoder_weight.upload(decoder);
  const WeightMetrics metrics = weight_metrics(model);
  EXPECT_FLOAT_EQ(metrics.normalised_difference[0], 1.0f);
  EXPECT_FLOAT_EQ(metrics.normalised_difference[1], 0.0f);
  EXPECT_FLOAT_EQ(metrics.normalised_difference[2], 0.5f);
  EXPECT_FLOAT_EQ(metrics.normalised_difference[3], 0.75f);
  EXPECT_EQ(metrics.latent_class[0], 0);
  EXPECT_EQ(metrics.latent_class[1], 1);
  EXPECT_EQ(metrics.latent_class[2], kSharedLatent);
  EXPECT_FLOAT_EQ(metrics.decoder_cosine[2], 0.0f);  // orthogonal directions
}

// Minder et al.'s class thresholds on hand-computed normalised differences (values exact in
// binary), beside our relative-norm rule on the same norms.
TEST(LatentMetrics, MinderClassesByHand) {
  struct Case {
    double n0, n1;
    int minder, relative_norm;  // relative_norm at τ = 0.9
  };
  // normalised difference: 0 (only source 1), 0.375, 0.4375, 0.5, 0.5625, 0.875, 0.9375, 1.
  const Case cases[] = {{0.0, 1.0, 1, 1},
                        {0.75, 1.0, kMixedLatent, kSharedLatent},
                        {0.875, 1.0, kSharedLatent, kSharedLatent},
                        {2.0, 2.0, kSharedLatent, kSharedLatent},
                        {1.0, 0.875, kSharedLatent, kSharedLatent},
                        {1.0, 0.25, kMixedLatent, kSharedLatent},
                        {1.0, 0.125, 0, kSharedLatent},
                        {3.0, 0.0, 0, 0},
                        {0.0, 0.0, kMixedLatent, kMixedLatent}};
  for (const Case& c : cases) {
    const double norms[2] = {c.n0, c.n1};
    EXPECT_EQ(classify_minder(norms), c.minder) << c.n0 << ", " << c.n1;
    EXPECT_EQ(classify_by_norms(norms, 0.9), c.relative_norm) << c.n0 << ", " << c.n1;
  }
  // 0.0625 and 0.9375 of the larger norm: normalised difference 0.03125 and 0.96875.
  const double near_zero[2] = {0.0625, 1.0}, near_one[2] = {1.0, 0.0625};
  EXPECT_EQ(classify_minder(near_zero), 1);
  EXPECT_EQ(classify_minder(near_one), 0);
  const double three[3] = {1.0, 1.0, 1.0};
  EXPECT_THROW(classify_minder(three), Error);
  EXPECT_EQ(parse_class_rule("minder"), ClassRule::minder);
  EXPECT_EQ(to_string(ClassRule::relative_norm), "relative_norm");
  EXPECT_THROW(parse_class_rule("anthropic"), Error);
}

// weight_metrics with ClassRule::minder on a random two-source crosscoder against the
// diffing-toolkit's rule written out in float64: n = ((‖d_0‖ − ‖d_1‖)/max + 1)/2,
// exclusive:1 when n < 0.1, exclusive:0 when n > 0.9, shared when |n − 0.5| < 0.1.
TEST(LatentMetrics, MinderRuleOnARandomCrosscoderMatchesFloat64) {
  std::mt19937_64 rng(std::random_device{}());
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 5;
  c.latents = 200;
  c.k = 2;
  c.activation = Activation::topk;
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> shrink(0.0f, 1.0f);
  std::vector<float> decoder(200 * 10);
  for (int f = 0; f < 200; ++f)
    for (int m = 0; m < 2; ++m) {
      const float scale = shrink(rng);  // relative norms spread over the whole range
      for (int i = 0; i < 5; ++i) decoder[f * 10 + m * 5 + i] = scale * normal(rng);
    }
  model.parameters().decoder_weight.upload(decoder);
  const WeightMetrics metrics = weight_metrics(model, 0.9, ClassRule::minder);
  EXPECT_EQ(metrics.class_rule, ClassRule::minder);
  std::set<int> seen;
  int differ = 0;
  for (int f = 0; f < 200; ++f) {
    const double n0 = norm_of(decoder, f * 10, 5), n1 = norm_of(decoder, f * 10 + 5, 5);
    const double n = ((n0 - n1) / std::max(n0, n1) + 1.0) / 2.0;
    if (std::abs(n - 0.1) < 1e-5 || std::abs(n - 0.9) < 1e-5 || std::abs(n - 0.4) < 1e-5 ||
        std::abs(n - 0.6) < 1e-5)
      continue;  // a float32 norm could fall on either side of a threshold
    const int want = n < 0.1                   ? 1
                     : n > 0.9                 ? 0
                     : std::abs(n - 0.5) < 0.1 ? kSharedLatent
                                               : kMixedLatent;
    EXPECT_EQ(metrics.latent_class[f], want) << "latent " << f << ", n = " << n;
    seen.insert(want);
    const double norms[2] = {n0, n1};
    differ += classify_by_norms(norms, 0.9) != want;
  }
  EXPECT_EQ(seen.size(), 4u) << "the test should see every class";
  EXPECT_GT(differ, 0) << "the two rules should disagree on some latents";
  c.sources = 3;
  c.exclusive = {};
  Crosscoder three(c, make_backend(BackendKind::cpu), rng());
  EXPECT_THROW(weight_metrics(three, 0.9, ClassRule::minder), Error);
}

}  // namespace
}  // namespace crosscoder
