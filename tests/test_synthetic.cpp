#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "crosscoder/error.hpp"
#include "crosscoder/synthetic.hpp"

namespace crosscoder {
namespace {

std::uint64_t fresh_seed() {
  std::random_device device;
  return (static_cast<std::uint64_t>(device()) << 32) | device();
}

double dot(std::span<const float> a, std::span<const float> b) {
  double sum = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a[i]) * b[i];
  return sum;
}

// A config with nothing but the planted features: no offset, no noise, no tool.
SyntheticConfig bare_config(int shared, std::vector<int> exclusive) {
  SyntheticConfig c;
  c.sources = static_cast<int>(exclusive.size());
  c.shared_features = shared;
  c.exclusive_features = std::move(exclusive);
  c.source_scale.assign(c.exclusive_features.size(), 1.0);
  c.mean_offset_norm = 0.0;
  c.noise_std = 0.0;
  c.plant_tool_feature = false;
  return c;
}

// The generator's ground truth in raw space, [N, M, d].
std::vector<float> truth_decoder(const SyntheticPair& pair) {
  std::vector<float> out;
  for (std::int64_t f = 0; f < pair.features(); ++f) {
    for (double x : pair.raw_direction(f)) out.push_back(static_cast<float>(x));
  }
  return out;
}

std::vector<float> random_vectors(std::mt19937_64& rng, std::size_t count, std::size_t width) {
  std::normal_distribution<float> normal;  // test-only data; portability not needed here
  std::vector<float> out(count * width);
  for (float& x : out) x = normal(rng);
  return out;
}

// ---- generator ---------------------------------------------------------------------------

TEST(SyntheticPair, DefaultLayoutAndToolFeature) {
  const SyntheticPair pair(SyntheticConfig{});
  ASSERT_EQ(pair.features(), 96 + 24 + 24);
  EXPECT_EQ(pair.feature_group(0), -1);
  EXPECT_EQ(pair.feature_group(95), -1);
  EXPECT_EQ(pair.feature_group(96), 0);
  EXPECT_EQ(pair.feature_group(119), 0);
  EXPECT_EQ(pair.feature_group(120), 1);
  EXPECT_EQ(pair.tool_feature(), 120);
  EXPECT_NEAR(pair.frequency(120), 0.2 * 0.5 + 0.8 * 0.002, 1e-15);
  EXPECT_DOUBLE_EQ(pair.source_scale(1), 3.0);
  for (int m = 0; m < 2; ++m) {
    const auto mean = pair.source_mean(m);
    EXPECT_NEAR(std::sqrt(dot(mean, mean)), 0.5, 1e-6);
  }
  // Zipf: the commonest and rarest non-tool features sit exactly at the configured ends.
  std::vector<double> rates;
  for (std::int64_t f = 0; f < pair.features(); ++f) {
    if (f != pair.tool_feature()) rates.push_back(pair.frequency(f));
  }
  EXPECT_NEAR(*std::max_element(rates.begin(), rates.end()), 0.08, 1e-15);
  EXPECT_NEAR(*std::min_element(rates.begin(), rates.end()), 0.003, 1e-15);

  SyntheticConfig no_tool;
  no_tool.plant_tool_feature = false;
  EXPECT_EQ(SyntheticPair(no_tool).tool_feature(), -1);
}

TEST(SyntheticPair, SameSeedAndStreamReproduce) {
  SyntheticConfig config;
  config.seed = 12345;
  const SyntheticPair a(config), b(config);
  const std::int64_t rows = 300;
  const std::size_t D = 2 * 64, N = static_cast<std::size_t>(a.features());
  std::vector<float> xa(rows * D), xb(rows * D), ca(rows * N), cb(rows * N);
  std::vector<std::int8_t> la(rows), lb(rows);
  a.sample(rows, 7, xa.data(), la.data(), ca.data());
  b.sample(rows, 7, xb.data(), lb.data(), cb.data());
  EXPECT_EQ(xa, xb);
  EXPECT_EQ(la, lb);
  EXPECT_EQ(ca, cb);
  for (std::int64_t f = 0; f < a.features(); ++f) {
    EXPECT_EQ(a.frequency(f), b.frequency(f));
    for (int m = 0; m < 2; ++m) {
      const auto da = a.direction(f, m), db = b.direction(f, m);
      EXPECT_TRUE(std::equal(da.begin(), da.end(), db.begin()));
    }
  }
  // The BatchSource view is the same stream, addressed by step.
  SyntheticPair source(config);
  std::vector<float> xf(rows * D);
  std::vector<std::int8_t> lf(rows);
  source.fill(7, rows, xf.data(), lf.data());
  EXPECT_EQ(xf, xa);
  EXPECT_EQ(lf, la);
  EXPECT_EQ(source.identity(), a.identity());
}

TEST(SyntheticPair, DifferentSeedOrStreamDiffers) {
  SyntheticConfig config;
  config.seed = 1;
  const SyntheticPair a(config);
  config.seed = 2;
  const SyntheticPair b(config);
  const std::int64_t rows = 200;
  std::vector<float> x1(rows * 128), x2(rows * 128), x3(rows * 128);
  a.sample(rows, 0, x1.data());
  b.sample(rows, 0, x2.data());
  a.sample(rows, 1, x3.data());
  EXPECT_NE(x1, x2);
  EXPECT_NE(x1, x3);
  EXPECT_NE(a.identity(), b.identity());
  const auto da = a.direction(0, 0), db = b.direction(0, 0);
  EXPECT_FALSE(std::equal(da.begin(), da.end(), db.begin()));
}

TEST(SyntheticPair, FiringRatesLabelsAndMagnitudesMatchTheConfig) {
  for (FrequencyProfile profile : {FrequencyProfile::zipf, FrequencyProfile::log_uniform}) {
    SyntheticConfig config;
    config.seed = fresh_seed();
    config.frequency_profile = profile;
    SCOPED_TRACE("seed " + std::to_string(config.seed));
    const SyntheticPair pair(config);
    const auto N = static_cast<std::size_t>(pair.features());
    const std::int64_t chunk = 10000, chunks = 20;  // 200k rows
    std::vector<double> fired(N, 0.0), magnitude(N, 0.0), tool_fired(2, 0.0), rows_by_label(2, 0);
    std::vector<float> x(chunk * 128), codes(chunk * N);
    std::vector<std::int8_t> labels(chunk);
    for (std::int64_t c = 0; c < chunks; ++c) {
      pair.sample(chunk, static_cast<std::uint64_t>(c), x.data(), labels.data(), codes.data());
      for (std::int64_t b = 0; b < chunk; ++b) {
        ASSERT_TRUE(labels[b] == 0 || labels[b] == 1);
        rows_by_label[labels[b]] += 1;
        for (std::size_t f = 0; f < N; ++f) {
          const float a = codes[b * N + f];
          ASSERT_GE(a, 0.0f);
          if (a == 0.0f) continue;
          fired[f] += 1;
          magnitude[f] += a;
          if (static_cast<std::int64_t>(f) == pair.tool_feature()) tool_fired[labels[b]] += 1;
        }
      }
    }
    const double n = static_cast<double>(chunk * chunks);
    const auto binomial_sigma = [](double p, double count) {
      return std::sqrt(p * (1 - p) / count);
    };
    for (std::size_t f = 0; f < N; ++f) {
      const double p = pair.frequency(static_cast<std::int64_t>(f));
      if (static_cast<std::int64_t>(f) != pair.tool_feature()) {
        EXPECT_GE(p, config.min_frequency * (1 - 1e-12));
        EXPECT_LE(p, config.max_frequency * (1 + 1e-12));
      }
      EXPECT_NEAR(fired[f] / n, p, 5 * binomial_sigma(p, n)) << "feature " << f;
      // Lognormal with log-std 0.5: std/mean = sqrt(e^0.25 − 1).
      if (fired[f] >= 200) {
        const double mean = pair.magnitude_mean(static_cast<std::int64_t>(f));
        EXPECT_NEAR(magnitude[f] / fired[f], mean,
                    5 * mean * std::sqrt(std::exp(0.25) - 1) / std::sqrt(fired[f]))
            << "feature " << f;
      }
    }
    EXPECT_NEAR(rows_by_label[1] / n, 0.2, 5 * binomial_sigma(0.2, n));
    EXPECT_NEAR(tool_fired[1] / rows_by_label[1], 0.5, 5 * binomial_sigma(0.5, rows_by_label[1]));
    EXPECT_NEAR(tool_fired[0] / rows_by_label[0], 0.002,
                5 * binomial_sigma(0.002, rows_by_label[0]));
  }
}

TEST(SyntheticPair, ExclusiveFeaturesLeaveOtherSourcesExactlyZero) {
  for (int owner = 0; owner < 2; ++owner) {
    SyntheticConfig config =
        bare_config(0, owner == 0 ? std::vector<int>{1, 0} : std::vector<int>{0, 1});
    config.source_scale = {2.0, 3.0};
    config.max_frequency = config.min_frequency = 0.5;
    config.seed = fresh_seed();
    const SyntheticPair pair(config);
    const int other = 1 - owner;
    for (float v : pair.direction(0, other)) EXPECT_EQ(v, 0.0f);
    const auto dir = pair.direction(0, owner);
    EXPECT_NEAR(dot(dir, dir), 1.0, 1e-6);

    const std::int64_t rows = 1000;
    std::vector<float> x(rows * 128), codes(rows);
    pair.sample(rows, 3, x.data(), nullptr, codes.data());
    int active = 0;
    for (std::int64_t b = 0; b < rows; ++b) {
      active += codes[b] > 0.0f;
      for (int i = 0; i < 64; ++i) {
        EXPECT_EQ(x[b * 128 + other * 64 + i], 0.0f);
        EXPECT_NEAR(x[b * 128 + owner * 64 + i], pair.source_scale(owner) * codes[b] * dir[i],
                    1e-5);
      }
    }
    EXPECT_GT(active, 300);
  }

  // In the default pair, too: zero blocks and x rebuilt from the codes when noise and offset
  // are off.
  SyntheticConfig config;
  config.mean_offset_norm = 0.0;
  config.noise_std = 0.0;
  config.seed = fresh_seed();
  const SyntheticPair pair(config);
  for (std::int64_t f = 0; f < pair.features(); ++f) {
    const int group = pair.feature_group(f);
    for (int m = 0; m < 2; ++m) {
      const auto dir = pair.direction(f, m);
      if (group >= 0 && group != m) {
        EXPECT_TRUE(std::all_of(dir.begin(), dir.end(), [](float v) { return v == 0.0f; }));
      } else {
        EXPECT_NEAR(dot(dir, dir), 1.0, 1e-6);
      }
    }
  }
  const std::int64_t rows = 500;
  const auto N = static_cast<std::size_t>(pair.features());
  std::vector<float> x(rows * 128), codes(rows * N);
  pair.sample(rows, 0, x.data(), nullptr, codes.data());
  for (std::int64_t b = 0; b < rows; ++b) {
    for (int m = 0; m < 2; ++m) {
      for (int i = 0; i < 64; ++i) {
        double expected = 0.0;
        for (std::size_t f = 0; f < N; ++f) {
          expected += static_cast<double>(codes[b * N + f]) *
                      pair.direction(static_cast<std::int64_t>(f), m)[i];
        }
        expected *= pair.source_scale(m);
        EXPECT_NEAR(x[b * 128 + m * 64 + i], expected, 1e-5 * (1 + std::abs(expected)));
      }
    }
  }
}

TEST(SyntheticPair, SharedDirectionsAgreeUpToTheJitter) {
  for (double jitter : {0.0, 0.05, 0.3}) {
    SyntheticConfig config;
    config.shared_direction_jitter = jitter;
    config.seed = fresh_seed();
    const SyntheticPair pair(config);
    const double j2 = jitter * jitter;
    double sum = 0.0;
    for (std::int64_t f = 0; f < config.shared_features; ++f) {
      const double cosine = dot(pair.direction(f, 0), pair.direction(f, 1));
      // cos = (1 + j²·g₀·g₁)/(1 + j²) with |g₀·g₁| ≤ 1.
      EXPECT_LE(cosine, 1.0 + 1e-6);
      EXPECT_GE(cosine, (1 - j2) / (1 + j2) - 1e-6);
      sum += cosine;
    }
    // g₀·g₁ has mean 0 and std 1/sqrt(d − 1); the mean over 96 features is tight.
    const double expected = 1 / (1 + j2);
    EXPECT_NEAR(sum / config.shared_features, expected,
                1e-6 + 5 * j2 / (1 + j2) / std::sqrt(63.0 * config.shared_features))
        << "jitter " << jitter;
  }
}

TEST(SyntheticPair, SourceScaleShowsInTheSquareNorm) {
  // Identical directions in both sources: source 1 is exactly 3× source 0.
  SyntheticConfig config = bare_config(20, {0, 0});
  config.shared_direction_jitter = 0.0;
  config.source_scale = {1.0, 3.0};
  config.seed = fresh_seed();
  {
    const SyntheticPair pair(config);
    const std::int64_t rows = 2000;
    std::vector<float> x(rows * 128);
    pair.sample(rows, 0, x.data());
    for (std::int64_t b = 0; b < rows; ++b) {
      for (int i = 0; i < 64; ++i) {
        EXPECT_NEAR(x[b * 128 + 64 + i], 3.0 * x[b * 128 + i],
                    1e-5 * (1 + std::abs(x[b * 128 + i])));
      }
    }
    EXPECT_NEAR(pair.expected_square_norm(1) / pair.expected_square_norm(0), 9.0, 1e-4);
  }

  // Default pair: the empirical E‖x_m‖² matches the exact expectation, within 6 standard errors.
  SyntheticConfig defaults;
  defaults.seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(defaults.seed));
  const SyntheticPair pair(defaults);
  const std::int64_t rows = 100000;
  std::vector<float> x(rows * 128);
  pair.sample(rows, 11, x.data());
  for (int m = 0; m < 2; ++m) {
    double sum = 0.0, sum_squares = 0.0;
    for (std::int64_t b = 0; b < rows; ++b) {
      double square = 0.0;
      for (int i = 0; i < 64; ++i) square += std::pow(x[b * 128 + m * 64 + i], 2);
      sum += square;
      sum_squares += square * square;
    }
    const double mean = sum / rows;
    const double standard_error = std::sqrt((sum_squares / rows - mean * mean) / rows);
    EXPECT_NEAR(mean, pair.expected_square_norm(m), 6 * standard_error) << "source " << m;
  }
  EXPECT_GT(pair.expected_square_norm(1), 4 * pair.expected_square_norm(0));
}

TEST(SyntheticPair, BadConfigsNameTheField) {
  const auto expect_error = [](const std::string& field, auto&& change) {
    SyntheticConfig config;
    change(config);
    try {
      SyntheticPair pair(config);
      ADD_FAILURE() << "no error for " << field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  expect_error("sources", [](SyntheticConfig& c) { c.sources = 0; });
  expect_error("width", [](SyntheticConfig& c) { c.width = 0; });
  expect_error("shared_features", [](SyntheticConfig& c) { c.shared_features = -1; });
  expect_error("exclusive_features", [](SyntheticConfig& c) { c.exclusive_features = {24}; });
  expect_error("exclusive_features", [](SyntheticConfig& c) { c.exclusive_features = {-1, 3}; });
  expect_error("shared_direction_jitter",
               [](SyntheticConfig& c) { c.shared_direction_jitter = -0.1; });
  expect_error("source_scale", [](SyntheticConfig& c) { c.source_scale = {1.0}; });
  expect_error("source_scale", [](SyntheticConfig& c) { c.source_scale = {1.0, 0.0}; });
  expect_error("mean_offset_norm", [](SyntheticConfig& c) { c.mean_offset_norm = NAN; });
  expect_error("max_frequency", [](SyntheticConfig& c) { c.max_frequency = 0.0; });
  expect_error("max_frequency", [](SyntheticConfig& c) { c.max_frequency = 1.5; });
  expect_error("min_frequency", [](SyntheticConfig& c) { c.min_frequency = 0.0; });
  expect_error("min_frequency", [](SyntheticConfig& c) { c.min_frequency = 0.1; });
  expect_error("magnitude_mean_min", [](SyntheticConfig& c) { c.magnitude_mean_min = 0.0; });
  expect_error("magnitude_mean_max", [](SyntheticConfig& c) { c.magnitude_mean_max = 0.5; });
  expect_error("magnitude_log_std", [](SyntheticConfig& c) { c.magnitude_log_std = -1.0; });
  expect_error("noise_std", [](SyntheticConfig& c) { c.noise_std = -0.02; });
  expect_error("label_fraction", [](SyntheticConfig& c) { c.label_fraction = 1.2; });
  expect_error("tool_rate_positive", [](SyntheticConfig& c) { c.tool_rate_positive = NAN; });
  expect_error("tool_rate_negative", [](SyntheticConfig& c) { c.tool_rate_negative = -0.1; });
  expect_error("plant_tool_feature", [](SyntheticConfig& c) { c.exclusive_features = {24, 0}; });

  const SyntheticPair pair(SyntheticConfig{});
  EXPECT_THROW(pair.sample(-1, 0, nullptr), Error);
  EXPECT_THROW(pair.sample(1, 0, nullptr), Error);
  EXPECT_NO_THROW(pair.sample(0, 0, nullptr));
  EXPECT_THROW(pair.direction(pair.features(), 0), Error);
  EXPECT_THROW(pair.direction(0, 2), Error);
}

// ---- evaluation ----------------------------------------------------------------------------

TEST(Recovery, GroundTruthDecoderIsFullyRecoveredAndClassified) {
  SyntheticConfig config;
  config.seed = fresh_seed();
  const SyntheticPair pair(config);
  const auto N = static_cast<std::size_t>(pair.features());
  const std::size_t D = 128, extra = 57, L = N + extra;
  // Truth latents at shuffled positions among random ones, each with an arbitrary positive
  // length (cosine ignores it).
  std::mt19937_64 rng(config.seed);
  std::vector<std::size_t> position(L);
  std::iota(position.begin(), position.end(), 0);
  std::shuffle(position.begin(), position.end(), rng);
  std::vector<float> decoder = random_vectors(rng, L, D);
  const std::vector<float> truth = truth_decoder(pair);
  for (std::size_t f = 0; f < N; ++f) {
    const float length = 0.5f + static_cast<float>(f % 5);
    for (std::size_t i = 0; i < D; ++i) decoder[position[f] * D + i] = length * truth[f * D + i];
  }

  const RecoveryReport report = evaluate_recovery(pair, decoder.data(), L);
  EXPECT_EQ(report.total.planted, static_cast<std::int64_t>(N));
  EXPECT_EQ(report.total.eligible, static_cast<std::int64_t>(N));
  EXPECT_EQ(report.total.recovered, static_cast<std::int64_t>(N));
  EXPECT_EQ(report.total.classified, static_cast<std::int64_t>(N));
  EXPECT_DOUBLE_EQ(report.recovery_rate, 1.0);
  EXPECT_DOUBLE_EQ(report.classification_rate, 1.0);
  EXPECT_EQ(report.matched_latents, static_cast<std::int64_t>(N));
  EXPECT_EQ(report.shared.planted, 96);
  EXPECT_EQ(report.shared.classified, 96);
  ASSERT_EQ(report.exclusive.size(), 2u);
  EXPECT_EQ(report.exclusive[0].classified, 24);
  EXPECT_EQ(report.exclusive[1].classified, 24);
  for (std::size_t f = 0; f < N; ++f) {
    EXPECT_NEAR(report.best_cosine[f], 1.0, 1e-6);
    EXPECT_EQ(report.best_latent[f], static_cast<std::int64_t>(position[f]));
    EXPECT_EQ(report.matched_group[f], pair.feature_group(static_cast<std::int64_t>(f)));
  }
  EXPECT_EQ(report.tool_feature, 120);
  EXPECT_EQ(report.tool_best_latent, static_cast<std::int64_t>(position[120]));
  EXPECT_NEAR(report.tool_best_cosine, 1.0, 1e-6);
  EXPECT_TRUE(report.tool_recovered);
  EXPECT_TRUE(report.tool_classified);

  const std::string text = format_recovery_report(report);
  EXPECT_NE(text.find("recovered 144/144"), std::string::npos) << text;
  EXPECT_NE(text.find("exclusive to 1"), std::string::npos) << text;
  EXPECT_NE(text.find("tool feature 120"), std::string::npos) << text;
}

TEST(Recovery, DirectionsTurnedPastTheThresholdAreNotRecovered) {
  SyntheticConfig config;
  config.seed = fresh_seed();
  const SyntheticPair pair(config);
  const auto N = static_cast<std::size_t>(pair.features());
  const std::size_t D = 128;
  std::mt19937_64 rng(config.seed);
  const std::vector<float> truth = truth_decoder(pair);
  const std::vector<float> noise = random_vectors(rng, N, D);

  // Latent f = cos θ·t̂_f + sin θ·ĝ_f with ĝ_f ⊥ t̂_f, so its cosine with feature f is cos θ.
  const auto turned = [&](double cosine) {
    std::vector<float> out(N * D);
    for (std::size_t f = 0; f < N; ++f) {
      std::vector<double> t(truth.begin() + f * D, truth.begin() + (f + 1) * D);
      std::vector<double> g(noise.begin() + f * D, noise.begin() + (f + 1) * D);
      const auto normalise = [](std::vector<double>& v) {
        const double n = std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0));
        for (double& x : v) x /= n;
      };
      normalise(t);
      const double along = std::inner_product(g.begin(), g.end(), t.begin(), 0.0);
      for (std::size_t i = 0; i < D; ++i) g[i] -= along * t[i];
      normalise(g);
      for (std::size_t i = 0; i < D; ++i) {
        out[f * D + i] = static_cast<float>(cosine * t[i] + std::sqrt(1 - cosine * cosine) * g[i]);
      }
    }
    return out;
  };

  const std::vector<float> far = turned(0.85);
  const RecoveryReport missed = evaluate_recovery(pair, far.data(), N);
  EXPECT_EQ(missed.total.recovered, 0);
  EXPECT_EQ(missed.recovery_rate, 0.0);
  EXPECT_FALSE(missed.tool_recovered);
  for (std::size_t f = 0; f < N; ++f) {
    EXPECT_NEAR(missed.best_cosine[f], 0.85, 1e-5);
    EXPECT_EQ(missed.best_latent[f], static_cast<std::int64_t>(f));
  }

  const std::vector<float> near = turned(0.95);
  const RecoveryReport found = evaluate_recovery(pair, near.data(), N);
  EXPECT_EQ(found.total.recovered, static_cast<std::int64_t>(N));
  // A stricter threshold rejects them again.
  EXPECT_EQ(evaluate_recovery(pair, near.data(), N, 0.96).total.recovered, 0);
}

TEST(Recovery, BestCosinesMatchAFloat64Reference) {
  SyntheticConfig config;
  config.seed = fresh_seed();
  config.width = 16;  // small d: random latents reach sizeable cosines
  config.shared_features = 30;
  config.exclusive_features = {10, 12};
  const SyntheticPair pair(config);
  const auto N = static_cast<std::size_t>(pair.features());
  const std::size_t D = 32, L = 5000;  // more than one block of 4096 latents
  std::mt19937_64 rng(config.seed);
  std::vector<float> decoder = random_vectors(rng, L, D);
  for (std::size_t l = 0; l < L; l += 97) {
    std::fill(decoder.begin() + l * D, decoder.begin() + (l + 1) * D, 0.0f);
  }
  const RecoveryReport report = evaluate_recovery(pair, decoder.data(), L, 0.5, 0.0);

  for (std::size_t f = 0; f < N; ++f) {
    const std::vector<double> t = pair.raw_direction(static_cast<std::int64_t>(f));
    double t_norm = 0.0;
    for (double x : t) t_norm += x * x;
    t_norm = std::sqrt(t_norm);
    double best = -2.0;
    std::int64_t best_latent = -1;
    for (std::size_t l = 0; l < L; ++l) {
      double dot_product = 0.0, norm = 0.0;
      for (std::size_t i = 0; i < D; ++i) {
        dot_product += t[i] * decoder[l * D + i];
        norm += static_cast<double>(decoder[l * D + i]) * decoder[l * D + i];
      }
      const double cosine = norm > 0.0 ? dot_product / (std::sqrt(norm) * t_norm) : 0.0;
      if (cosine > best) {
        best = cosine;
        best_latent = static_cast<std::int64_t>(l);
      }
    }
    EXPECT_NEAR(report.best_cosine[f], best, 1e-12) << "feature " << f;
    EXPECT_EQ(report.best_latent[f], best_latent) << "feature " << f;
    EXPECT_EQ(static_cast<bool>(report.recovered[f]), best >= 0.5);
  }
}

TEST(Recovery, ClassificationSpaceFollowsNormScale) {
  // With scales {1, 20}, a shared feature's raw decoder has r_1 = 20/21 > 0.9: raw-space norms
  // call it exclusive; norms rescaled to normalised space (× 1/scale) call it shared.
  SyntheticConfig config;
  config.source_scale = {1.0, 20.0};
  config.seed = fresh_seed();
  const SyntheticPair pair(config);
  const std::vector<float> truth = truth_decoder(pair);
  const auto N = static_cast<std::size_t>(pair.features());

  const RecoveryReport raw = evaluate_recovery(pair, truth.data(), N);
  EXPECT_EQ(raw.total.recovered, static_cast<std::int64_t>(N));
  EXPECT_EQ(raw.shared.classified, 0);
  EXPECT_EQ(raw.matched_group[0], 1);
  EXPECT_EQ(raw.exclusive[0].classified, 24);

  RecoveryOptions options;
  options.norm_scale = {1.0, 1.0 / 20.0};
  const RecoveryReport normalised = evaluate_recovery(pair, truth.data(), N, options);
  EXPECT_EQ(normalised.total.classified, static_cast<std::int64_t>(N));
  EXPECT_DOUBLE_EQ(normalised.classification_rate, 1.0);
}

TEST(Recovery, RareFeaturesAreIneligible) {
  const SyntheticPair pair(SyntheticConfig{});
  const std::vector<float> truth = truth_decoder(pair);
  const auto N = static_cast<std::size_t>(pair.features());
  std::int64_t common = 0;
  for (std::int64_t f = 0; f < pair.features(); ++f) common += pair.frequency(f) >= 0.01;
  const RecoveryReport report = evaluate_recovery(pair, truth.data(), N, 0.9, 0.01);
  EXPECT_EQ(report.total.eligible, common);
  EXPECT_EQ(report.total.recovered, common);
  EXPECT_LT(common, pair.features());
  for (std::int64_t f = 0; f < pair.features(); ++f) {
    EXPECT_EQ(static_cast<bool>(report.eligible[f]), pair.frequency(f) >= 0.01);
  }
}

TEST(Recovery, ThreeSourcesAndOneSource) {
  SyntheticConfig config = bare_config(2, {1, 1, 1});
  config.seed = fresh_seed();
  const SyntheticPair pair(config);
  std::vector<float> decoder = truth_decoder(pair);
  // Feature 1's latent loses source 2: r = (½, ½, 0) is neither shared nor exclusive.
  std::fill(decoder.begin() + 1 * 192 + 128, decoder.begin() + 2 * 192, 0.0f);
  RecoveryOptions options;
  options.cosine_threshold = 0.8;  // that latent keeps cosine sqrt(2/3) ≈ 0.816
  const RecoveryReport report = evaluate_recovery(pair, decoder.data(), 5, options);
  EXPECT_EQ(report.total.recovered, 5);
  EXPECT_EQ(report.matched_group[0], -1);
  EXPECT_EQ(report.matched_group[1], kMixedGroup);
  for (int m = 0; m < 3; ++m) {
    EXPECT_EQ(report.matched_group[2 + m], m);
    EXPECT_EQ(report.exclusive[m].classified, 1);
  }
  EXPECT_EQ(report.shared.classified, 1);
  EXPECT_NEAR(report.best_cosine[1], std::sqrt(2.0 / 3.0), 1e-6);

  const SyntheticPair single(bare_config(3, {2}));
  const std::vector<float> single_truth = truth_decoder(single);
  const RecoveryReport one = evaluate_recovery(single, single_truth.data(), 5);
  EXPECT_EQ(one.total.classified, 5);
}

TEST(Recovery, BadArgumentsNameTheParameter) {
  const SyntheticPair pair(SyntheticConfig{});
  const std::vector<float> truth = truth_decoder(pair);
  const auto N = static_cast<std::size_t>(pair.features());
  const auto expect_error = [&](const std::string& name, const RecoveryOptions& options,
                                const float* decoder) {
    try {
      evaluate_recovery(pair, decoder, N, options);
      ADD_FAILURE() << "no error for " << name;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  };
  RecoveryOptions o;
  o.cosine_threshold = 0.0;
  expect_error("cosine_threshold", o, truth.data());
  o = {};
  o.min_frequency = -1.0;
  expect_error("min_frequency", o, truth.data());
  o = {};
  o.exclusive_threshold = 0.5;
  expect_error("exclusive_threshold", o, truth.data());
  o = {};
  o.norm_scale = {1.0};
  expect_error("norm_scale", o, truth.data());
  o.norm_scale = {1.0, -1.0};
  expect_error("norm_scale", o, truth.data());
  expect_error("decoder", {}, nullptr);
  std::vector<float> bad = truth;
  bad[5 * 128 + 3] = NAN;
  expect_error("decoder", {}, bad.data());

  const RecoveryReport empty = evaluate_recovery(pair, nullptr, 0);
  EXPECT_EQ(empty.total.recovered, 0);
  EXPECT_EQ(empty.best_latent[0], -1);
}

}  // namespace
}  // namespace crosscoder
