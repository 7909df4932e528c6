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
  for (double fve : result.fve) EXPECT_GT(fve, 0.95);
  EXPECT_NEAR(result.l0, options.model.k, 1.0);  // the learnt threshold keeps L0 near k
}

}  // namespace
}  // namespace crosscoder
