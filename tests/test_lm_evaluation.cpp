// Language-model scores: cross-entropy and KL against a direct float64 (long double) softmax on
// fresh random logits, token-weighted means over sequences, bootstrap intervals, CE loss
// recovered, and bad input refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include "crosscoder/error.hpp"
#include "crosscoder/lm_evaluation.hpp"
#include "expect_error.hpp"

namespace crosscoder {
namespace {

std::vector<long double> softmax(const float* row, int vocab) {
  std::vector<long double> p(static_cast<std::size_t>(vocab));
  long double total = 0.0L;
  for (int v = 0; v < vocab; ++v) total += p[v] = std::exp(static_cast<long double>(row[v]));
  for (long double& value : p) value /= total;
  return p;
}

TEST(LanguageModelScores, MeansMatchADirectSoftmaxAndIntervalsBracketThem) {
  std::mt19937_64 rng(std::random_device{}());
  const int V = 11, sequences = 12;
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_int_distribution<int> length(3, 9), token(0, V - 1);
  LanguageModelScores scores({"clean", "spliced", "zero"});
  long double ce_sum[3] = {0, 0, 0}, kl_sum[3] = {0, 0, 0};
  long double tokens = 0;
  for (int q = 0; q < sequences; ++q) {
    const int T = length(rng);
    std::vector<std::int32_t> targets(static_cast<std::size_t>(T));
    for (auto& t : targets) t = token(rng);
    targets[0] = -1;  // skipped, like padding
    std::vector<std::vector<float>> logits(3, std::vector<float>(static_cast<std::size_t>(T * V)));
    for (auto& l : logits)
      for (float& v : l) v = normal(rng);
    for (int c = 0; c < 3; ++c) {
      if (c == 0) {
        scores.add(q, c, logits[0], V, targets);
      } else {
        scores.add(q, c, logits[c], V, targets, logits[0]);
      }
      for (int t = 1; t < T; ++t) {
        const auto p = softmax(logits[0].data() + t * V, V);
        const auto r = softmax(logits[c].data() + t * V, V);
        ce_sum[c] -= std::log(r[static_cast<std::size_t>(targets[t])]);
        for (int v = 0; v < V; ++v) kl_sum[c] += p[v] * std::log(p[v] / r[v]);
      }
    }
    tokens += T - 1;
  }
  const LanguageModelReport report = scores.result(2000, 7);
  ASSERT_EQ(report.sequences, sequences);
  for (int c = 0; c < 3; ++c) {
    const ConditionScores& s = report.conditions[c];
    EXPECT_EQ(s.tokens, static_cast<std::int64_t>(tokens));
    EXPECT_EQ(s.sequences, sequences);
    const double ce = static_cast<double>(ce_sum[c] / tokens);
    EXPECT_NEAR(s.cross_entropy.value, ce, 1e-9 * ce) << s.name;
    EXPECT_LT(s.cross_entropy.low, s.cross_entropy.value) << s.name;
    EXPECT_GT(s.cross_entropy.high, s.cross_entropy.value) << s.name;
    EXPECT_EQ(s.has_kl, c > 0);
    if (c > 0) {
      const double kl = static_cast<double>(kl_sum[c] / tokens);
      EXPECT_NEAR(s.kl.value, kl, 1e-9 * kl) << s.name;
      EXPECT_LT(s.kl.low, s.kl.high);
    }
  }
  // Deterministic for a seed; another seed moves the interval, not the value.
  const LanguageModelReport again = scores.result(2000, 7), other = scores.result(2000, 8);
  EXPECT_EQ(again.conditions[1].cross_entropy.low, report.conditions[1].cross_entropy.low);
  EXPECT_NE(other.conditions[1].cross_entropy.low, report.conditions[1].cross_entropy.low);
  EXPECT_EQ(other.conditions[1].cross_entropy.value, report.conditions[1].cross_entropy.value);
}

TEST(LanguageModelScores, RecoveredIsTheRatioOfTheMeans) {
  std::mt19937_64 rng(std::random_device{}());
  const int V = 7, T = 6;
  std::normal_distribution<float> noise(0.0f, 0.3f);
  LanguageModelScores scores({"clean", "spliced", "zero"});
  for (int q = 0; q < 30; ++q) {
    std::vector<std::int32_t> targets(T);
    for (auto& t : targets) t = static_cast<std::int32_t>(rng() % V);
    // The target's logit is 4 (clean), 2 (spliced) or 0 (zero: uniform) above the rest.
    for (int c = 0; c < 3; ++c) {
      std::vector<float> logits(static_cast<std::size_t>(T * V));
      for (int t = 0; t < T; ++t)
        for (int v = 0; v < V; ++v)
          logits[t * V + v] = (v == targets[t] ? 4.0f - 2.0f * static_cast<float>(c) : 0.0f) +
                              (c < 2 ? noise(rng) : 0.0f);
      scores.add(q, c, logits, V, targets);
    }
  }
  const LanguageModelReport report = scores.result(500, 1);
  const double clean = report.condition("clean").cross_entropy.value;
  const double spliced = report.condition("spliced").cross_entropy.value;
  const double zero = report.condition("zero").cross_entropy.value;
  EXPECT_NEAR(zero, std::log(7.0), 1e-12);
  ASSERT_LT(clean, spliced);
  ASSERT_LT(spliced, zero);
  const Interval recovered = report.recovered("spliced");
  EXPECT_DOUBLE_EQ(recovered.value, (zero - spliced) / (zero - clean));
  EXPECT_GT(recovered.value, 0.0);
  EXPECT_LT(recovered.value, 1.0);
  EXPECT_LE(recovered.low, recovered.value);
  EXPECT_GE(recovered.high, recovered.value);
  EXPECT_THROW(report.recovered("spliced", "clean", "mean"), Error);
}

TEST(LanguageModelScores, BadInputIsRefusedByName) {
  testing::expect_error([] { LanguageModelScores({}); }, "no conditions");
  testing::expect_error([] { LanguageModelScores({"a", "a"}); }, "'a' given twice");
  LanguageModelScores scores({"clean", "zero"});
  const std::vector<float> logits = {0.5f, 1.0f, -1.0f, 2.0f};
  const std::vector<std::int32_t> targets = {1, 0};
  testing::expect_error([&] { scores.add(0, 2, logits, 2, targets); }, "condition 2 out of range");
  testing::expect_error([&] { scores.add(0, 0, logits, 3, targets); },
                        "4 logits and 0 reference logits for 2");
  const std::vector<std::int32_t> outside = {1, 2};
  testing::expect_error([&] { scores.add(0, 0, logits, 2, outside); }, "target 2 at token 1");
  const std::vector<float> nan = {0.5f, std::nanf(""), 0.0f, 1.0f};
  testing::expect_error([&] { scores.add(0, 0, nan, 2, targets); }, "a logit is nan");
  testing::expect_error([&] { scores.result(); }, "no sequence was added");
  scores.add(0, 0, logits, 2, targets, logits);
  EXPECT_EQ(scores.result(10).conditions[0].kl.value, 0.0);  // identical logits
  testing::expect_error([&] { scores.result(0); }, "0 resamples");
}

}  // namespace
}  // namespace crosscoder
