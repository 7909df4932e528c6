// Steering: every intervention against a float64 computation from the reference forward pass,
// the clamp/scale identities, position filters, and bad input leaving the rows untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "crosscoder/crosscoder.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

constexpr int kSources = 2, kWidth = 8, kLatents = 24;

struct SteeringCase {
  Activation activation;
  bool batch_threshold;  // BatchTopK: learnt threshold (elementwise) or not (batch selection)
  const char* name;
};

class SteeringTest : public ::testing::TestWithParam<SteeringCase> {
 protected:
  SteeringTest() : rng_(std::random_device{}()) {}

  Crosscoder make_model() {
    CrosscoderConfig c;
    c.sources = kSources;
    c.width = kWidth;
    c.latents = kLatents;
    c.k = 5;
    c.activation = GetParam().activation;
    c.normalisation = Normalisation::mean_and_scale;
    Crosscoder model(c, make_backend(BackendKind::cpu), rng_());
    const std::vector<float> sample = testing::random_activations(64, kSources, kWidth, rng_);
    model.fit_normaliser(sample, 64);
    // Positive biases so that, with the other source at its mean, enough latents fire.
    std::normal_distribution<float> normal(0.3f, 0.3f);
    std::vector<float> bias(kLatents);
    for (float& b : bias) b = normal(rng_);
    model.parameters().encoder_bias.upload(bias);
    if (GetParam().batch_threshold) model.set_batch_threshold(0.2f);
    return model;
  }

  // Rows of one source (the steered model's activations), [T, d].
  std::vector<float> random_rows(int T) {
    const std::vector<float> all = testing::random_activations(T, kSources, kWidth, rng_);
    std::vector<float> rows(static_cast<std::size_t>(T) * kWidth);
    for (int t = 0; t < T; ++t)
      std::copy_n(all.begin() + (t * kSources + 1) * kWidth, kWidth, rows.begin() + t * kWidth);
    return rows;
  }

  // f[T, F] in float64 by the reference forward pass, with the other source at its mean.
  std::vector<double> reference_activations(const Crosscoder& model, const std::vector<float>& rows,
                                            int source, int T) {
    const CrosscoderConfig& c = model.config();
    std::vector<float> full(static_cast<std::size_t>(T) * c.input_width());
    for (int t = 0; t < T; ++t)
      for (int m = 0; m < kSources; ++m)
        for (int i = 0; i < kWidth; ++i)
          full[(t * kSources + m) * kWidth + i] =
              m == source ? rows[t * kWidth + i] : model.normaliser().mean[m * kWidth + i];
    const auto p = testing::ReferenceParameters::from(model);
    return testing::reference_forward(c, p, full, T, c.k, model.batch_threshold()).activation;
  }

  std::vector<RowInfo> prompt_rows(int T) {
    std::vector<RowInfo> info(static_cast<std::size_t>(T));
    for (int t = 0; t < T; ++t) info[t] = {t, true, t == T - 1};
    return info;
  }

  std::mt19937_64 rng_;
};

TEST_P(SteeringTest, ActivationsMatchTheReferenceForwardPass) {
  const Crosscoder model = make_model();
  const int T = 16, source = 1;
  const std::vector<float> rows = random_rows(T);
  std::vector<Intervention> list;
  for (int j = 0; j < kLatents; ++j) list.push_back({InterventionKind::scale, j, 2.0});
  const Steerer steerer(model, source, list);
  const std::vector<float> got = steerer.activations(rows.data(), T);
  const std::vector<double> expected = reference_activations(model, rows, source, T);
  int active = 0;
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < kLatents; ++j) {
      EXPECT_NEAR(got[t * kLatents + j], expected[t * kLatents + j], 1e-4) << t << ", " << j;
      active += expected[t * kLatents + j] > 0.0;
    }
  }
  EXPECT_GT(active, T) << "the test needs active latents";
}

TEST_P(SteeringTest, EachInterventionMatchesItsFloat64Definition) {
  const Crosscoder model = make_model();
  const int T = 12, source = 1;
  const std::vector<float> rows = random_rows(T);
  const std::vector<double> f = reference_activations(model, rows, source, T);
  const std::vector<float> decoder = model.raw_decoder_vectors();
  const auto direction = [&](int j, int i) {
    return static_cast<double>(decoder[j * kSources * kWidth + source * kWidth + i]);
  };
  // The latent most often active in these rows, so scale and clamp have something to act on.
  int j = 0, best = -1;
  for (int l = 0; l < kLatents; ++l) {
    int count = 0;
    for (int t = 0; t < T; ++t) count += f[t * kLatents + l] > 0.0;
    if (count > best) best = count, j = l;
  }
  ASSERT_GT(best, 0);
  const int other = (j + 7) % kLatents;
  const std::vector<RowInfo> info = prompt_rows(T);
  for (InterventionKind kind : {InterventionKind::add, InterventionKind::scale,
                                InterventionKind::clamp, InterventionKind::project_out}) {
    SCOPED_TRACE(std::string(to_string(kind)));
    const double alpha = kind == InterventionKind::clamp ? 3.5 : 4.0;
    Steerer steerer(model, source, {{kind, j, alpha}});
    std::vector<float> steered = rows;
    steerer.apply(steered.data(), T, kWidth, info.data());
    for (int t = 0; t < T; ++t) {
      const double a = f[t * kLatents + j];
      double dot = 0.0, norm = 0.0;
      for (int i = 0; i < kWidth; ++i) {
        dot += rows[t * kWidth + i] * direction(j, i);
        norm += direction(j, i) * direction(j, i);
      }
      for (int i = 0; i < kWidth; ++i) {
        const double x = rows[t * kWidth + i];
        double expected = x;
        switch (kind) {
          case InterventionKind::add:
            expected = x + alpha * direction(j, i);
            break;
          case InterventionKind::scale:
            expected = x + (alpha - 1.0) * a * direction(j, i);
            break;
          case InterventionKind::clamp:
            expected = x + (alpha - a) * direction(j, i);
            break;
          case InterventionKind::project_out:
            expected = x - dot / norm * direction(j, i);
            break;
        }
        EXPECT_NEAR(steered[t * kWidth + i], expected, 1e-4 * (1.0 + std::abs(expected)))
            << "row " << t << ", index " << i;
      }
    }
  }
  // A list composes in order; f_j comes from the unmodified rows.
  Steerer both(model, source,
               {{InterventionKind::add, other, 1.5}, {InterventionKind::scale, j, 3.0}});
  std::vector<float> steered = rows;
  both.apply(steered.data(), T, kWidth, info.data());
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < kWidth; ++i)
      EXPECT_NEAR(steered[t * kWidth + i],
                  rows[t * kWidth + i] + 1.5 * direction(other, i) +
                      2.0 * f[t * kLatents + j] * direction(j, i),
                  1e-4 * (1.0 + std::abs(rows[t * kWidth + i])));
}

TEST_P(SteeringTest, ScaleByOneIsAnExactNoOpAndZeroRemovesTheLatent) {
  const Crosscoder model = make_model();
  const int T = 10, source = 1;
  const std::vector<float> rows = random_rows(T);
  const std::vector<RowInfo> info = prompt_rows(T);
  std::vector<float> same = rows;
  std::vector<Intervention> identity;
  for (int j = 0; j < kLatents; ++j) identity.push_back({InterventionKind::scale, j, 1.0});
  Steerer(model, source, identity).apply(same.data(), T, kWidth, info.data());
  EXPECT_EQ(same, rows) << "α = 1 must not change a single bit";

  // α = 0 leaves x − f_j·d_j: the reconstruction error plus every other latent's contribution.
  const std::vector<double> f = reference_activations(model, rows, source, T);
  const std::vector<float> decoder = model.raw_decoder_vectors();
  for (int j = 0; j < kLatents; j += 5) {
    std::vector<float> removed = rows;
    Steerer(model, source, {{InterventionKind::scale, j, 0.0}})
        .apply(removed.data(), T, kWidth, info.data());
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < kWidth; ++i)
        EXPECT_NEAR(removed[t * kWidth + i],
                    rows[t * kWidth + i] -
                        f[t * kLatents + j] * decoder[j * kSources * kWidth + source * kWidth + i],
                    1e-4);
  }
}

TEST_P(SteeringTest, ClampKeepsTheReconstructionErrorExactly) {
  const Crosscoder model = make_model();
  const int T = 10, source = 1, j = 3;
  const double value = 2.25;
  const std::vector<float> rows = random_rows(T);
  const std::vector<double> f = reference_activations(model, rows, source, T);
  const std::vector<float> decoder = model.raw_decoder_vectors();
  const std::vector<float> bias = model.parameters().decoder_bias.download();
  const std::vector<RowInfo> info = prompt_rows(T);
  std::vector<float> clamped = rows;
  Steerer(model, source, {{InterventionKind::clamp, j, value}})
      .apply(clamped.data(), T, kWidth, info.data());
  const Normaliser& n = model.normaliser();
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < kWidth; ++i) {
      // x̂ in raw units from the codes, and x̂' with f_j replaced by `value`.
      const int col = source * kWidth + i;
      double recon = bias[col] / n.scale[source] + n.mean[col];
      for (int l = 0; l < kLatents; ++l)
        recon += f[t * kLatents + l] * decoder[l * kSources * kWidth + col];
      const double recon_clamped =
          recon + (value - f[t * kLatents + j]) * decoder[j * kSources * kWidth + col];
      EXPECT_NEAR(clamped[t * kWidth + i] - recon_clamped, rows[t * kWidth + i] - recon, 1e-4);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Activations, SteeringTest,
    ::testing::Values(SteeringCase{Activation::relu, false, "relu"},
                      SteeringCase{Activation::jumprelu, false, "jumprelu"},
                      SteeringCase{Activation::topk, false, "topk"},
                      SteeringCase{Activation::batchtopk, true, "batchtopk_threshold"},
                      SteeringCase{Activation::batchtopk, false, "batchtopk_batch"}),
    [](const auto& test) { return std::string(test.param.name); });

class SteeringFilters : public ::testing::Test {
 protected:
  SteeringFilters()
      : rng_(std::random_device{}()),
        model_(
            [] {
              CrosscoderConfig c;
              c.sources = 2;
              c.width = 4;
              c.latents = 10;
              c.k = 2;
              c.activation = Activation::relu;
              return c;
            }(),
            make_backend(BackendKind::cpu), 5) {
    const std::vector<float> sample = testing::random_activations(32, 2, 4, rng_);
    model_.fit_normaliser(sample, 32);
  }
  std::mt19937_64 rng_;
  Crosscoder model_;
};

TEST_F(SteeringFilters, PositionsSelectTheRowsToSteer) {
  const int T = 6;
  std::vector<RowInfo> info(T);
  for (int t = 0; t < T; ++t) info[t] = {10 + t, t < 4, t == 3};  // 4 prompt rows, 2 generated
  std::normal_distribution<float> normal;
  std::vector<float> rows(T * 4);
  for (float& v : rows) v = normal(rng_);
  const auto touched = [&](PositionFilter filter) {
    Steerer steerer(model_, 0, {{InterventionKind::add, 2, 1.0}}, filter);
    std::vector<float> out = rows;
    steerer.apply(out.data(), T, 4, info.data());
    std::vector<int> changed;
    for (int t = 0; t < T; ++t)
      if (!std::equal(out.begin() + t * 4, out.begin() + t * 4 + 4, rows.begin() + t * 4))
        changed.push_back(t);
    // A once-only filter never fires twice.
    std::vector<float> again = out;
    steerer.apply(again.data(), T, 4, info.data());
    if (filter.once) {
      EXPECT_EQ(again, out);
    }
    return changed;
  };
  EXPECT_EQ(touched({PositionMode::all, {}, false}), (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(touched({PositionMode::last_prompt, {}, false}), (std::vector<int>{3}));
  EXPECT_EQ(touched({PositionMode::prompt, {}, true}), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(touched({PositionMode::generated, {}, false}), (std::vector<int>{4, 5}));
  EXPECT_EQ(touched({PositionMode::listed, {11, 15}, false}), (std::vector<int>{1, 5}));
  // reset() re-arms a once-only filter.
  Steerer once(model_, 0, {{InterventionKind::add, 2, 1.0}}, {PositionMode::all, {}, true});
  std::vector<float> a = rows;
  once.apply(a.data(), T, 4, info.data());
  once.reset();
  std::vector<float> b = rows;
  once.apply(b.data(), T, 4, info.data());
  EXPECT_EQ(a, b);
  // A hook steers at its layer only.
  Steerer hooked(model_, 0, {{InterventionKind::add, 2, 1.0}});
  const ActivationHook hook = hooked.hook(3);
  std::vector<float> c = rows;
  hook(2, c.data(), T, 4, info.data());
  EXPECT_EQ(c, rows);
  hook(3, c.data(), T, 4, info.data());
  EXPECT_EQ(c, a);
}

TEST_F(SteeringFilters, MaxActivationUnitsAndPairedRows) {
  const int T = 3;
  std::vector<RowInfo> info(T);
  std::normal_distribution<float> normal;
  std::vector<float> rows(T * 4);
  for (float& v : rows) v = normal(rng_);
  Steerer steerer(model_, 1, {{InterventionKind::add, 4, 2.0, true}});
  std::vector<float> out = rows;
  EXPECT_THROW(steerer.apply(out.data(), T, 4, info.data()), Error);
  EXPECT_EQ(out, rows);
  std::vector<double> max_activation(10, 0.5);
  steerer.set_max_activations(max_activation);
  steerer.apply(out.data(), T, 4, info.data());
  const std::span<const float> d = steerer.direction(4);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(out[t * 4 + i], rows[t * 4 + i] + 1.0 * d[i], 1e-5);

  // Paired rows feed the other source into the encoder and change f_j accordingly.
  std::vector<Intervention> all;
  for (int j = 0; j < 10; ++j) all.push_back({InterventionKind::scale, j, 0.0});
  const Steerer alone(model_, 1, all);
  std::vector<float> paired(T * 8);
  for (float& v : paired) v = 3.0f * normal(rng_);
  for (int t = 0; t < T; ++t) std::copy_n(rows.begin() + t * 4, 4, paired.begin() + t * 8 + 4);
  const std::vector<float> f_alone = alone.activations(rows.data(), T);
  const std::vector<float> f_paired = alone.activations(rows.data(), T, paired);
  const HostSparseCodes codes = model_.encode(paired, T);  // the whole crosscoder's view
  std::vector<float> dense(T * 10, 0.0f);
  for (int t = 0; t < T; ++t)
    for (std::int64_t e = codes.row_ptr[t]; e < codes.row_ptr[t + 1]; ++e)
      dense[t * 10 + codes.latent[e]] = codes.value[e];
  for (int i = 0; i < T * 10; ++i) EXPECT_NEAR(f_paired[i], dense[i], 1e-4);
  EXPECT_NE(f_alone, f_paired);
}

TEST_F(SteeringFilters, PairedHookMatchesApplyPaired) {
  // paired_hook asks for the other model's rows of the same tokens and steers exactly as
  // apply_paired with them; at another layer it neither asks nor steers.
  const int T = 5, source = 1;
  std::vector<RowInfo> info(T);
  for (int t = 0; t < T; ++t) info[t] = {t, true, t == T - 1};
  std::normal_distribution<float> normal;
  std::vector<float> rows(T * 4), other(T * 4);
  for (float& v : rows) v = normal(rng_);
  for (float& v : other) v = 2.0f * normal(rng_);
  std::vector<Intervention> all;
  for (int j = 0; j < 10; ++j) all.push_back({InterventionKind::scale, j, 3.0});
  const auto fill = [&](const RowInfo* at, int n, int d, std::span<float> paired) {
    ASSERT_EQ(d, 4);
    ASSERT_EQ(paired.size(), static_cast<std::size_t>(n) * 8);
    for (int r = 0; r < n; ++r)  // source 0's block: the other model's row at that position
      std::copy_n(other.begin() + at[r].position * 4, 4, paired.begin() + r * 8);
  };
  int asked = 0;
  Steerer hooked(model_, source, all);
  const ActivationHook hook =
      hooked.paired_hook(2, [&](const RowInfo* at, int n, int d, std::span<float> paired) {
        ++asked;
        fill(at, n, d, paired);
      });
  std::vector<float> by_hook = rows;
  hook(1, by_hook.data(), T, 4, info.data());
  EXPECT_EQ(asked, 0);
  EXPECT_EQ(by_hook, rows);
  hook(2, by_hook.data(), T, 4, info.data());
  EXPECT_EQ(asked, 1);

  Steerer direct(model_, source, all);
  std::vector<float> paired(T * 8, 0.0f);
  fill(info.data(), T, 4, paired);
  std::vector<float> by_apply = rows;
  direct.apply_paired(by_apply.data(), T, 4, info.data(), paired);
  EXPECT_EQ(by_hook, by_apply);
  std::vector<float> unpaired = rows;
  direct.apply(unpaired.data(), T, 4, info.data());
  EXPECT_NE(by_hook, unpaired);  // the other model's rows did enter the encoder
  EXPECT_NE(by_hook, rows);
  EXPECT_THROW(direct.paired_hook(2, nullptr), Error);
}

TEST_F(SteeringFilters, BadInputIsRefusedAndLeavesRowsUntouched) {
  const auto message = [](const std::function<void()>& action) {
    try {
      action();
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { Steerer(model_, 2, {}); }).find("source 2 out of range [0, 2)"),
            std::string::npos);
  EXPECT_NE(message([&] {
              Steerer(model_, 0, {{InterventionKind::scale, 10, 2.0}});
            }).find("latent 10, out of range [0, 10)"),
            std::string::npos);
  EXPECT_NE(message([&] {
              Steerer(model_, 0, {{InterventionKind::add, 1, std::nan("")}});
            }).find("strength nan"),
            std::string::npos);
  Steerer steerer(model_, 0, {{InterventionKind::add, 1, 1.0}});
  std::vector<float> rows(2 * 5, 1.0f);
  std::vector<RowInfo> info(2);
  const std::vector<float> before = rows;
  EXPECT_NE(message([&] {
              steerer.apply(rows.data(), 2, 5, info.data());
            }).find("rows of width 5 but the crosscoder's width is 4"),
            std::string::npos);
  std::vector<float> with_nan(8, 1.0f);
  with_nan[6] = NAN;
  const std::vector<float> nan_before = with_nan;
  EXPECT_NE(message([&] { steerer.apply(with_nan.data(), 2, 4, info.data()); }).find("row 1"),
            std::string::npos);
  EXPECT_EQ(rows, before);
  for (int i = 0; i < 8; ++i) {
    if (i != 6) {
      EXPECT_EQ(with_nan[i], nan_before[i]) << "row 0 must not be steered either";
    }
  }
}

}  // namespace
}  // namespace crosscoder

namespace crosscoder {
namespace {

TEST(Capture, HookAppendsTheSelectedRowsOfItsLayerToTheWriter) {
  const auto directory = std::filesystem::temp_directory_path() /
                         ("crosscoder-capture-" + std::to_string(std::random_device{}()));
  ActivationWriterOptions options;
  options.source_names = {"base", "tuned"};
  options.width = 3;
  options.shard_rows = 4;
  std::mt19937_64 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  std::vector<float> expected[2];
  {
    ActivationWriter writer(directory, options);
    const ActivationHook base = capture_hook(writer, 0, 2, {PositionMode::last_prompt, {}, false});
    const ActivationHook tuned = capture_hook(writer, 1, 2, {PositionMode::last_prompt, {}, false});
    for (int prompt = 0; prompt < 6; ++prompt) {
      const int T = 2 + prompt % 3;
      std::vector<RowInfo> info(static_cast<std::size_t>(T));
      for (int t = 0; t < T; ++t) info[t] = {t, true, t == T - 1};
      for (int source = 0; source < 2; ++source) {
        std::vector<float> rows(static_cast<std::size_t>(T) * 3);
        for (float& v : rows) v = normal(rng);
        const ActivationHook& hook = source == 0 ? base : tuned;
        hook(1, rows.data(), T, 3, info.data());  // another layer: ignored
        hook(2, rows.data(), T, 3, info.data());
        expected[source].insert(expected[source].end(), rows.end() - 3, rows.end());
      }
    }
    std::vector<float> wrong(8);
    std::vector<RowInfo> info(2);
    EXPECT_THROW(base(2, wrong.data(), 2, 4, info.data()), Error);
    EXPECT_THROW(capture_hook(writer, 2, 0), Error);
    writer.close();
  }
  const ActivationDataset data = ActivationDataset::open({directory / "manifest.json"});
  ASSERT_EQ(data.rows(), 6);
  for (int source = 0; source < 2; ++source) {
    std::vector<float> got(18);
    data.read_source(source, 0, 6, got.data());
    EXPECT_EQ(got, expected[source]);
  }
  std::filesystem::remove_all(directory);
}

}  // namespace
}  // namespace crosscoder
