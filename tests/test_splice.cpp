// Splicing against the float64 reference forward pass (reference_crosscoder.hpp) on fresh
// random inputs: every SpliceKind, paired and unpaired, TopK, BatchTopK with and without the
// learnt threshold and ReLU, dedicated partitions, a normaliser with means; position filters,
// hooks, and bad input refused by name with the rows untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/splice.hpp"
#include "expect_error.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

std::uint64_t fresh_seed() {
  return (static_cast<std::uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
}

struct SpliceCase {
  Activation activation;
  bool learnt_threshold;  // batchtopk: inference with θ (else the top B·k of the call's rows)
};

class Splicing : public ::testing::TestWithParam<SpliceCase> {};

TEST_P(Splicing, EveryKindMatchesTheFloat64Reference) {
  const SpliceCase the_case = GetParam();
  std::mt19937_64 rng(fresh_seed());
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 6;
  c.latents = 24;
  c.k = 4;
  c.activation = the_case.activation;
  c.exclusive = {3, 4};
  c.normalisation = Normalisation::mean_and_scale;
  const int B = 7, M = 2, d = 6, D = 12, F = 24;
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  std::normal_distribution<float> normal(0.0f, 0.2f);
  std::vector<float> bias(D), encoder_bias(F);
  for (float& v : bias) v = normal(rng);
  for (float& v : encoder_bias) v = normal(rng);
  // Source 1's exclusive latents fire often enough for add_latents_of to have something to add.
  for (int j = F - 4; j < F; ++j) encoder_bias[j] += 1.5f;
  model.parameters().decoder_bias.upload(bias);
  model.parameters().encoder_bias.upload(encoder_bias);

  // Rows away from every selection boundary, so float32 and float64 select the same latents.
  std::vector<float> x;
  testing::ReferenceParameters p;
  testing::ReferenceForward paired_ref, unpaired_ref;
  std::vector<float> unpaired_input;
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 200) << "could not draw rows away from selection boundaries";
    x = testing::random_activations(B, M, d, rng);
    model.fit_normaliser(x, B);
    p = testing::ReferenceParameters::from(model);
    double threshold = -1.0;
    if (the_case.learnt_threshold) {
      threshold = 0.3;
      model.set_batch_threshold(static_cast<float>(threshold));
    }
    unpaired_input = x;
    for (int b = 0; b < B; ++b)  // source 1 at its mean, as the unpaired splice of source 0
      for (int i = 0; i < d; ++i) unpaired_input[b * D + d + i] = static_cast<float>(p.mean[d + i]);
    paired_ref = testing::reference_forward(c, p, x, B, c.k, threshold);
    unpaired_ref = testing::reference_forward(c, p, unpaired_input, B, c.k, threshold);
    double margin = std::min(testing::selection_margin(c, p, paired_ref, B, c.k),
                             testing::selection_margin(c, p, unpaired_ref, B, c.k));
    if (the_case.learnt_threshold) {
      for (const auto* ref : {&paired_ref, &unpaired_ref})
        for (int b = 0; b < B; ++b)
          for (int f = 0; f < F; ++f) {
            double w = 0.0;
            for (int m = 0; m < M; ++m) {
              double s = 0.0;
              for (int i = 0; i < d; ++i) s += std::pow(p.decoder[f * D + m * d + i], 2.0);
              w += std::sqrt(s);
            }
            margin = std::min(margin, std::abs(std::max(ref->pre[b * F + f], 0.0) * w - threshold));
          }
    }
    if (margin > 1e-3) break;
  }
  std::vector<RowInfo> info(B);
  for (int b = 0; b < B; ++b) info[b].position = b;
  const int s = 0, other = 1;
  const auto own_rows = [&] {
    std::vector<float> rows(static_cast<std::size_t>(B * d));
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < d; ++i) rows[b * d + i] = x[b * D + s * d + i];
    return rows;
  };
  const auto raw_direction = [&](int j, int m, int i) {
    return p.decoder[j * D + m * d + i] / p.scale[m * d + i];
  };
  std::vector<int> exclusive_to_other, shared;
  for (int j = 0; j < F; ++j) {
    if (c.exclusive_owner(j) == other) exclusive_to_other.push_back(j);
    if (c.exclusive_owner(j) < 0) shared.push_back(j);
  }
  std::vector<float> mean(static_cast<std::size_t>(d));
  for (float& v : mean) v = normal(rng);

  for (const SpliceKind kind :
       {SpliceKind::reconstruction, SpliceKind::reconstruction_plus_error, SpliceKind::zero,
        SpliceKind::mean, SpliceKind::add_latents_of, SpliceKind::decoder_of}) {
    for (const bool paired : {true, false}) {
      const testing::ReferenceForward& ref = paired ? paired_ref : unpaired_ref;
      SpliceOptions options;
      options.kind = kind;
      options.other_source = other;
      if (kind == SpliceKind::mean) options.mean = mean;
      Splicer splicer(model, s, options);
      std::vector<float> rows = own_rows();
      if (!paired && kind == SpliceKind::add_latents_of) {
        EXPECT_THROW(splicer.apply(rows.data(), B, d, info.data()), Error);
        continue;
      }
      if (paired) {
        splicer.apply_paired(rows.data(), B, d, info.data(), x);
      } else {
        splicer.apply(rows.data(), B, d, info.data());
      }
      const std::vector<int>& listed =
          kind == SpliceKind::add_latents_of ? exclusive_to_other : shared;
      double touched = 0.0;
      for (int b = 0; b < B; ++b)
        for (int i = 0; i < d; ++i) {
          const int column = s * d + i;
          const double own = x[b * D + column];
          const double reconstruction =
              ref.recon[b * D + column] / p.scale[column] + p.mean[column];
          double want = 0.0;
          switch (kind) {
            case SpliceKind::reconstruction:
              want = reconstruction;
              break;
            case SpliceKind::reconstruction_plus_error:
              want = own;
              break;
            case SpliceKind::zero:
              want = 0.0;
              break;
            case SpliceKind::mean:
              want = mean[i];
              break;
            case SpliceKind::add_latents_of:
              want = own;
              for (int j : listed) want += ref.activation[b * F + j] * raw_direction(j, other, i);
              break;
            case SpliceKind::decoder_of:
              want = reconstruction;
              for (int j : listed)
                want += ref.activation[b * F + j] *
                        (raw_direction(j, other, i) - raw_direction(j, s, i));
              break;
          }
          touched += std::abs(want - own);
          ASSERT_NEAR(rows[b * d + i], want, 1e-4 * (1.0 + std::abs(want)))
              << to_string(kind) << (paired ? " paired" : " unpaired") << " row " << b << " column "
              << i;
        }
      if (kind != SpliceKind::reconstruction_plus_error) {
        EXPECT_GT(touched, 1e-3) << to_string(kind) << ": the splice changed nothing";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Activations, Splicing,
                         ::testing::Values(SpliceCase{Activation::topk, false},
                                           SpliceCase{Activation::batchtopk, true},
                                           SpliceCase{Activation::batchtopk, false},
                                           SpliceCase{Activation::relu, false}),
                         [](const auto& param_info) {
                           return std::string(to_string(param_info.param.activation)) +
                                  (param_info.param.learnt_threshold ? "_threshold" : "");
                         });

TEST(SplicingHooks, FiltersHooksAndRefusals) {
  std::mt19937_64 rng(fresh_seed());
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 5;
  c.latents = 16;
  c.k = 3;
  c.activation = Activation::topk;
  Crosscoder model(c, make_backend(BackendKind::cpu), rng());
  const std::vector<float> x = testing::random_activations(4, 2, 5, rng);
  model.fit_normaliser(x, 4);
  std::vector<float> rows(x.begin(), x.begin() + 20);  // four rows of source 0's width
  const std::vector<float> before = rows;
  std::vector<RowInfo> info(4);
  for (int b = 0; b < 4; ++b) info[b].position = b;
  info[3].last_prompt = true;

  // Only the last prompt token is spliced (zeroed), through the hook, at its layer only.
  SpliceOptions zero;
  zero.kind = SpliceKind::zero;
  zero.positions.mode = PositionMode::last_prompt;
  Splicer splicer(model, 0, zero);
  ActivationHook hook = splicer.hook(2);
  hook(1, rows.data(), 4, 5, info.data());
  EXPECT_EQ(rows, before);
  hook(2, rows.data(), 4, 5, info.data());
  for (int i = 0; i < 15; ++i) EXPECT_EQ(rows[i], before[i]);
  for (int i = 15; i < 20; ++i) EXPECT_EQ(rows[i], 0.0f);

  // The paired hook hands its rows to apply_paired: the identity splice then gives the rows back.
  SpliceOptions identity;
  identity.kind = SpliceKind::reconstruction_plus_error;
  Splicer through(model, 1, identity);
  std::vector<float> second(20);
  for (int b = 0; b < 4; ++b)
    for (int i = 0; i < 5; ++i) second[b * 5 + i] = x[b * 10 + 5 + i];
  const std::vector<float> second_before = second;
  int calls = 0;
  ActivationHook paired_hook = through.hook(0, [&](int, int n, const RowInfo*) {
    ++calls;
    return std::span<const float>(x.data(), static_cast<std::size_t>(n) * 10);
  });
  paired_hook(0, second.data(), 4, 5, info.data());
  EXPECT_EQ(calls, 1);
  for (int i = 0; i < 20; ++i) EXPECT_NEAR(second[i], second_before[i], 1e-5);

  SpliceOptions o;
  testing::expect_error([&] { Splicer(model, 2, o); }, "source 2 out of range");
  o.kind = SpliceKind::add_latents_of;
  o.other_source = 0;
  testing::expect_error([&] { Splicer(model, 0, o); }, "needs another source");
  o.other_source = 1;
  testing::expect_error([&] { Splicer(model, 0, o); }, "has no dedicated latents");
  o.latents = {3, 16};
  testing::expect_error([&] { Splicer(model, 0, o); }, "latent 16 out of range");
  o = {};
  o.kind = SpliceKind::mean;
  o.mean = {1.0f, 2.0f};
  testing::expect_error([&] { Splicer(model, 0, o); }, "mean of 5 values");
  EXPECT_EQ(parse_splice_kind("decoder_of"), SpliceKind::decoder_of);
  testing::expect_error([&] { parse_splice_kind("ablate"); }, "unknown splice kind \"ablate\"");

  // A NaN leaves every row untouched.
  Splicer reconstruct(model, 0, SpliceOptions{});
  std::vector<float> bad = before;
  bad[7] = std::nanf("");
  const std::vector<float> bad_before = bad;
  testing::expect_error([&] { reconstruct.apply(bad.data(), 4, 5, info.data()); },
                        "row 1 (position 1)");
  for (int i = 0; i < 20; ++i) {
    if (i != 7) {
      EXPECT_EQ(bad[i], bad_before[i]);
    }
  }
  testing::expect_error([&] { reconstruct.apply(bad.data(), 4, 6, info.data()); },
                        "rows of width 6");
  testing::expect_error(
      [&] { reconstruct.apply_paired(rows.data(), 4, 5, info.data(), std::span(x).first(10)); },
      "paired activations hold 10 values");
}

}  // namespace
}  // namespace crosscoder
