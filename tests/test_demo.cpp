// The demonstration at its defaults must find what "fine-tuning added": the acceptance test of
// the crosscoder core (docs/demo numbers come from the same run).
#include <gtest/gtest.h>

#include "crosscoder/crosscoder.hpp"

namespace crosscoder {
namespace {

TEST(Demo, DefaultsRecoverThePlantedFeaturesAndRankTheToolFeatureFirst) {
  DemoOptions options = default_demo_options();
  options.show_progress = false;
  const DemoResult result = run_demo(options, make_backend(BackendKind::cpu));
  SCOPED_TRACE(format_demo_result(result, options));
  EXPECT_GE(result.recovery.recovery_rate, 0.9);
  EXPECT_GE(result.recovery.classification_rate, 0.9);
  EXPECT_TRUE(result.recovery.tool_recovered);
  EXPECT_TRUE(result.recovery.tool_classified);
  EXPECT_EQ(result.tool_rank, 1);
  EXPECT_EQ(result.tool_overall_rank, 1) << "the tool latent tops the Cohen's d ranking";
  // The latents matching features planted exclusive to source 1 (what "fine-tuning added")
  // are classified exclusive:1 by the relative-norm rule that `crosscoder diff` uses: every
  // latent that is a clean copy of its feature (cosine ≥ 0.99), and most of the rest. (A latent
  // that also absorbs part of a shared feature, cosine 0.93–0.99, gets relative norms of
  // 0.7–0.85 and is classified shared: 1–3 of the 24 in the runs seen.)
  SyntheticPair pair(options.data);
  std::int64_t clean = 0, recovered = 0, classified = 0;
  for (std::int64_t f = 0; f < pair.features(); ++f) {
    if (pair.feature_group(f) != 1 || !result.recovery.recovered[f]) continue;
    const bool exclusive = result.recovery.matched_group[f] == 1;
    ++recovered;
    classified += exclusive ? 1 : 0;
    if (result.recovery.best_cosine[f] >= 0.99) {
      ++clean;
      EXPECT_TRUE(exclusive) << "feature " << f << " → latent " << result.recovery.best_latent[f];
    }
  }
  EXPECT_GE(clean, 20) << "of 24 features planted exclusive to source 1";
  EXPECT_GE(static_cast<double>(classified) / static_cast<double>(recovered), 0.85)
      << classified << " of " << recovered;
  for (double fve : result.fve) EXPECT_GT(fve, 0.95);
  EXPECT_NEAR(result.l0, options.model.k, 1.0);  // the learnt threshold keeps L0 near k
}

}  // namespace
}  // namespace crosscoder
