// Every Backend operation against a plain float64 loop on fresh random inputs, over every
// usable backend (in the style of ggml's test-backend-ops): the reference the CUDA backend's
// kernels are held to, and the CPU backend's own check. Tolerances are relative to the size of
// the quantity (float32 rounding of sums of a few hundred terms).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "backend_params.hpp"
#ifdef CROSSCODER_TEST_EMULATED_CUDA
#define CROSSCODER_CUDA_EMULATION 1
#include "device_primitives.hpp"
#endif
#include "crosscoder/crosscoder.hpp"

namespace crosscoder {
namespace {

class BackendOps : public ::testing::TestWithParam<BackendKind> {
 protected:
  BackendOps() : backend_(testing::make_test_backend(GetParam())), rng_(std::random_device{}()) {}

  std::vector<float> normal(std::size_t n, float scale = 1.0f) {
    std::normal_distribution<float> draw(0.0f, scale);
    std::vector<float> x(n);
    for (float& v : x) v = draw(rng_);
    return x;
  }
  DeviceArray<float> upload(const std::vector<float>& host) {
    return DeviceArray<float>(backend_, std::span<const float>(host));
  }

  // Random CSR codes: each row a random number of distinct latents (some rows empty), positive
  // and zero values, latents in random order within the row.
  SparseCodes random_codes(std::int64_t rows, std::int64_t latents, HostSparseCodes& host) {
    std::uniform_int_distribution<std::int64_t> count(0, std::min<std::int64_t>(latents, 9));
    std::uniform_real_distribution<float> magnitude(0.1f, 2.0f);
    host = HostSparseCodes{};
    host.rows = rows;
    host.row_ptr.push_back(0);
    std::vector<std::int32_t> order(static_cast<std::size_t>(latents));
    for (std::int64_t b = 0; b < rows; ++b) {
      for (std::int32_t f = 0; f < latents; ++f) order[f] = f;
      std::shuffle(order.begin(), order.end(), rng_);
      const std::int64_t n = count(rng_);
      for (std::int64_t i = 0; i < n; ++i) {
        host.latent.push_back(order[i]);
        host.value.push_back(rng_() % 7 == 0 ? 0.0f : magnitude(rng_));
      }
      host.row_ptr.push_back(static_cast<std::int64_t>(host.latent.size()));
    }
    SparseCodes codes;
    codes.rows = rows;
    codes.nnz = static_cast<std::int64_t>(host.latent.size());
    codes.row_ptr =
        DeviceArray<std::int64_t>(backend_, std::span<const std::int64_t>(host.row_ptr));
    codes.latent = DeviceArray<std::int32_t>(backend_, std::span<const std::int32_t>(host.latent));
    codes.value = DeviceArray<float>(backend_, std::span<const float>(host.value));
    return codes;
  }

  // The inputs of a sparse backward pass (its outputs left for the test to set).
  static SparseBackwardRequest backward_inputs(const DeviceArray<float>& upstream,
                                               const DeviceArray<float>& decoder,
                                               const DeviceArray<float>& xn, std::int64_t latents,
                                               std::int64_t width) {
    SparseBackwardRequest request;
    request.grad_out = upstream.data();
    request.decoder = decoder.data();
    request.xn = xn.data();
    request.latents = latents;
    request.width = width;
    return request;
  }

  std::shared_ptr<Backend> backend_;
  std::mt19937_64 rng_;
};

// |got − want| ≤ tolerance·(1 + |want|) elementwise.
void expect_close(const std::vector<float>& got, const std::vector<double>& want, double tolerance,
                  const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], tolerance * (1.0 + std::abs(want[i]))) << what << " at " << i;
  }
}

TEST_P(BackendOps, NormaliseAndDenormalise) {
  const std::int64_t rows = 37;
  const int M = 3, d = 11, D = M * d;
  const std::vector<float> x = normal(rows * D, 3.0f), mean = normal(D);
  // One scale per column (the per-channel normaliser's form; per-source scales are repeated).
  std::vector<float> scale = normal(D);
  for (float& s : scale) s = 0.25f + std::abs(s);
  auto dx = upload(x), dmean = upload(mean), dscale = upload(scale);
  DeviceArray<float> xn(backend_, x.size()), back(backend_, x.size());
  for (const bool with_mean : {false, true}) {
    backend_->ops().normalise(dx.data(), rows, M, d, dscale.data(),
                              with_mean ? dmean.data() : nullptr, xn.data());
    std::vector<double> want(x.size());
    for (std::int64_t b = 0; b < rows; ++b)
      for (int j = 0; j < D; ++j)
        want[b * D + j] =
            (static_cast<double>(x[b * D + j]) - (with_mean ? mean[j] : 0.0)) * scale[j];
    expect_close(xn.download(), want, 1e-6, "normalise");
    backend_->ops().denormalise(xn.data(), rows, M, d, dscale.data(),
                                with_mean ? dmean.data() : nullptr, back.data());
    expect_close(back.download(), std::vector<double>(x.begin(), x.end()), 1e-5, "denormalise");
  }
}

TEST_P(BackendOps, EncodeIsTheDenseProductPlusBiasRectifiedOnRequest) {
  const std::int64_t rows = 29, D = 70, F = 53;
  const std::vector<float> x = normal(rows * D), w = normal(F * D, 0.2f), bias = normal(F);
  auto dx = upload(x), dw = upload(w), db = upload(bias);
  for (const bool rectify : {false, true}) {
    DeviceArray<float> pre(backend_, static_cast<std::size_t>(rows * F));
    backend_->ops().encode(dx.data(), rows, D, dw.data(), db.data(), F, rectify, pre.data());
    std::vector<double> want(static_cast<std::size_t>(rows * F));
    std::int64_t negative = 0;
    for (std::int64_t b = 0; b < rows; ++b)
      for (std::int64_t f = 0; f < F; ++f) {
        double total = bias[f];
        for (std::int64_t j = 0; j < D; ++j)
          total += static_cast<double>(x[b * D + j]) * w[f * D + j];
        negative += total < 0.0 ? 1 : 0;
        want[b * F + f] = rectify ? std::max(total, 0.0) : total;
      }
    ASSERT_GT(negative, rows * F / 4);  // the rectification has work to do
    expect_close(pre.download(), want, 1e-5, rectify ? "encode, rectified" : "encode");
  }
}

// The reduced-precision GEMMs, by normalised error ‖got − want‖ / ‖want‖ against float64 with
// the bias left out (it is added in float32 either way). Operands rounded to a p-bit mantissa
// err by about 2^−(p+1) each, and the errors of D products partly cancel: float32 (23 bits)
// 1e-6, TF32 (10 bits) 2e-3, bfloat16 (7 bits) 1e-2. The CPU backend computes float32 for all.
TEST_P(BackendOps, EncodeInEachMatmulPrecision) {
  const std::int64_t rows = 33, D = 256, F = 45;
  const std::vector<float> x = normal(rows * D), w = normal(F * D, 0.2f);
  const std::vector<float> zero_bias(static_cast<std::size_t>(F), 0.0f);
  auto dx = upload(x), dw = upload(w), db = upload(zero_bias);
  std::vector<double> want(static_cast<std::size_t>(rows * F));
  for (std::int64_t b = 0; b < rows; ++b)
    for (std::int64_t f = 0; f < F; ++f) {
      double total = 0.0;
      for (std::int64_t j = 0; j < D; ++j)
        total += static_cast<double>(x[b * D + j]) * w[f * D + j];
      want[b * F + f] = total;
    }
  const std::pair<MatmulPrecision, double> cases[] = {{MatmulPrecision::float32, 1e-6},
                                                      {MatmulPrecision::tf32, 2e-3},
                                                      {MatmulPrecision::bfloat16, 1e-2}};
  for (const auto& [precision, tolerance] : cases) {
    SCOPED_TRACE(std::string(to_string(precision)));
    backend_->set_matmul_precision(precision);
    DeviceArray<float> pre(backend_, static_cast<std::size_t>(rows * F));
    backend_->ops().encode(dx.data(), rows, D, dw.data(), db.data(), F, false, pre.data());
    const std::vector<float> got = pre.download();
    double error = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      error += (got[i] - want[i]) * (got[i] - want[i]);
      norm += want[i] * want[i];
    }
    EXPECT_LT(std::sqrt(error / norm), tolerance);
    if (backend_->kind() == BackendKind::cpu) {
      EXPECT_EQ(backend_->matmul_precision(), MatmulPrecision::float32);
    } else {
      EXPECT_EQ(backend_->matmul_precision(), precision);
      // The reduced precision is really in effect: its error is far above float32's.
      if (precision != MatmulPrecision::float32) {
        EXPECT_GT(std::sqrt(error / norm), 1e-5);
      }
    }
  }
  backend_->set_matmul_precision(MatmulPrecision::float32);
  EXPECT_THROW(parse_matmul_precision("fp8"), Error);
  EXPECT_EQ(parse_matmul_precision("bf16"), MatmulPrecision::bfloat16);
}

TEST_P(BackendOps, SparseDecodeAndItsBackward) {
  // F = 5: many entries per latent (the CUDA backend's groups are long); 301: about one each.
  for (const std::int64_t F : {std::int64_t{5}, std::int64_t{23}, std::int64_t{301}}) {
    SCOPED_TRACE("F = " + std::to_string(F));
    const std::int64_t rows = 41, D = 19;
    HostSparseCodes host;
    const SparseCodes codes = random_codes(rows, F, host);
    const std::vector<float> decoder = normal(F * D), bias = normal(D), upstream = normal(rows * D);
    auto ddec = upload(decoder), dbias = upload(bias), dup = upload(upstream);

    DeviceArray<float> out(backend_, static_cast<std::size_t>(rows * D));
    backend_->ops().decode(codes, ddec.data(), dbias.data(), D, out.data());
    std::vector<double> want(static_cast<std::size_t>(rows * D));
    for (std::int64_t b = 0; b < rows; ++b)
      for (std::int64_t j = 0; j < D; ++j) {
        double total = bias[j];
        for (std::int64_t e = host.row_ptr[b]; e < host.row_ptr[b + 1]; ++e)
          total += static_cast<double>(host.value[e]) * decoder[host.latent[e] * D + j];
        want[b * D + j] = total;
      }
    expect_close(out.download(), want, 1e-5, "decode");

    // Backward: d_value[e] = decoder[latent]·upstream[row]; d_decoder accumulates onto what is
    // there (start from random values to check that it adds).
    const std::vector<float> start = normal(F * D);
    auto d_decoder = upload(start);
    DeviceArray<float> d_value(backend_, static_cast<std::size_t>(codes.nnz));
    backend_->ops().decoder_backward(codes, dup.data(), ddec.data(), D, d_value.data(),
                                     d_decoder.data());
    std::vector<double> want_value(static_cast<std::size_t>(codes.nnz));
    std::vector<double> want_decoder(start.begin(), start.end());
    for (std::int64_t b = 0; b < rows; ++b)
      for (std::int64_t e = host.row_ptr[b]; e < host.row_ptr[b + 1]; ++e) {
        const std::int32_t f = host.latent[e];
        double dot = 0.0;
        for (std::int64_t j = 0; j < D; ++j) {
          dot += static_cast<double>(decoder[f * D + j]) * upstream[b * D + j];
          want_decoder[f * D + j] += static_cast<double>(host.value[e]) * upstream[b * D + j];
        }
        want_value[e] = dot;
      }
    expect_close(d_value.download(), want_value, 1e-5, "decoder_backward d_value");
    expect_close(d_decoder.download(), want_decoder, 1e-5, "decoder_backward d_decoder");

    // Without d_decoder only d_value is produced.
    DeviceArray<float> d_value_only(backend_, static_cast<std::size_t>(codes.nnz));
    backend_->ops().decoder_backward(codes, dup.data(), ddec.data(), D, d_value_only.data(),
                                     nullptr);
    expect_close(d_value_only.download(), want_value, 1e-5, "decoder_backward d_value only");
  }
}

TEST_P(BackendOps, SquaredErrorPerSourceAndItsGradient) {
  const std::int64_t rows = 45;
  const int M = 2, d = 13, D = M * d;
  const std::vector<float> recon = normal(rows * D), target = normal(rows * D);
  auto dr = upload(recon), dt = upload(target);
  DeviceArray<float> grad(backend_, recon.size());
  std::vector<double> sse(M);
  backend_->ops().squared_error(dr.data(), dt.data(), rows, M, d, 0.375f, grad.data(), sse.data());
  std::vector<double> want_sse(M, 0.0), want_grad(recon.size());
  for (std::int64_t b = 0; b < rows; ++b)
    for (int j = 0; j < D; ++j) {
      const double diff = static_cast<double>(recon[b * D + j]) - target[b * D + j];
      want_sse[j / d] += diff * diff;
      want_grad[b * D + j] = 0.375 * diff;
    }
  for (int m = 0; m < M; ++m) EXPECT_NEAR(sse[m], want_sse[m], 1e-6 * want_sse[m]) << m;
  expect_close(grad.download(), want_grad, 1e-6, "squared_error gradient");
}

TEST_P(BackendOps, ReductionsAndElementwise) {
  const std::int64_t rows = 300, width = 37, n = 100'003;  // n spans several fixed chunks
  const std::vector<float> x = normal(rows * width, 2.0f), y = normal(n, 3.0f);
  auto dx = upload(x), dy = upload(y);
  std::vector<double> sums(width);
  backend_->ops().column_sums(dx.data(), rows, width, sums.data());
  for (std::int64_t j = 0; j < width; ++j) {
    double want = 0.0;
    for (std::int64_t b = 0; b < rows; ++b) want += x[b * width + j];
    EXPECT_NEAR(sums[j], want, 1e-9 * (1.0 + std::abs(want))) << "column " << j;
  }
  double want_squares = 0.0;
  for (float v : y) want_squares += static_cast<double>(v) * v;
  EXPECT_NEAR(backend_->ops().sum_of_squares(dy.data(), n), want_squares, 1e-10 * want_squares);
  backend_->ops().clamp_min(dy.data(), n, 0.5f);
  std::vector<double> clamped(y.begin(), y.end());
  for (double& v : clamped) v = std::max(v, 0.5);
  expect_close(dy.download(), clamped, 0.0, "clamp_min");
}

TEST_P(BackendOps, LatentTotalsAndDecoderNorms) {
  const std::int64_t rows = 50, F = 31;
  HostSparseCodes host;
  const SparseCodes codes = random_codes(rows, F, host);
  std::vector<float> sums(F);
  std::vector<std::int64_t> counts(F);
  backend_->ops().latent_totals(codes, F, sums.data(), counts.data());
  std::vector<double> want_sums(F, 0.0);
  std::vector<std::int64_t> want_counts(F, 0);
  for (std::size_t e = 0; e < host.latent.size(); ++e) {
    want_sums[host.latent[e]] += host.value[e];
    ++want_counts[host.latent[e]];
  }
  expect_close(sums, want_sums, 1e-6, "latent_totals sums");
  EXPECT_EQ(counts, want_counts);

  const int M = 3, d = 9;
  const std::vector<float> decoder = normal(F * M * d);
  auto ddec = upload(decoder);
  std::vector<float> norms(static_cast<std::size_t>(F * M));
  backend_->ops().decoder_norms(ddec.data(), F, M, d, norms.data());
  std::vector<double> want(static_cast<std::size_t>(F * M));
  for (std::int64_t f = 0; f < F; ++f)
    for (int m = 0; m < M; ++m) {
      double total = 0.0;
      for (int i = 0; i < d; ++i) total += std::pow(decoder[(f * M + m) * d + i], 2);
      want[f * M + m] = std::sqrt(total);
    }
  expect_close(norms, want, 1e-6, "decoder_norms");
}

TEST_P(BackendOps, AddScaledBlocksPerLatentAndSource) {
  const std::int64_t F = 37;
  const int M = 3, d = 45, D = M * d;
  const std::vector<float> source = normal(F * D), target = normal(F * D);
  std::vector<float> factor = normal(F * M);
  for (std::size_t i = 0; i < factor.size(); i += 5) factor[i] = 0.0f;  // skipped blocks
  auto dsource = upload(source), dtarget = upload(target), dfactor = upload(factor);
  backend_->ops().add_scaled_blocks(dsource.data(), dfactor.data(), F, M, d, dtarget.data());
  std::vector<double> want(static_cast<std::size_t>(F * D));
  for (std::int64_t f = 0; f < F; ++f)
    for (int j = 0; j < D; ++j)
      want[f * D + j] =
          target[f * D + j] + static_cast<double>(factor[f * M + j / d]) * source[f * D + j];
  expect_close(dtarget.download(), want, 1e-6, "add_scaled_blocks");
}

// The float64 reference of adam_update and constrained_sum_of_squares under a row constraint.
struct AdamReference {
  std::vector<double> p, m, v;
  double constrained_squares = 0.0;
};

AdamReference adam_reference(const std::vector<float>& parameter,
                             const std::vector<float>& gradient, const std::vector<float>& m,
                             const std::vector<float>& v, const AdamStep& step,
                             const std::vector<std::uint8_t>& trainable) {
  const std::int64_t n = static_cast<std::int64_t>(parameter.size());
  const RowConstraint& c = step.rows;
  const std::int64_t width = c.row_width > 0 ? c.row_width : n;
  const int blocks = c.row_width > 0 ? c.blocks : 1;
  const std::int64_t block_width = width / blocks;
  AdamReference out{std::vector<double>(parameter.begin(), parameter.end()),
                    std::vector<double>(m.begin(), m.end()),
                    std::vector<double>(v.begin(), v.end())};
  const double c1 = 1.0 - std::pow(static_cast<double>(step.beta1), static_cast<double>(step.step));
  const double c2 = 1.0 - std::pow(static_cast<double>(step.beta2), static_cast<double>(step.step));
  for (std::int64_t row = 0; row < n / width; ++row) {
    const auto live = [&](std::int64_t j) {
      return trainable.empty() || trainable[row * blocks + j / block_width] != 0;
    };
    double dot = 0.0, squared = 0.0;
    for (std::int64_t j = 0; j < width; ++j) {
      if (!live(j)) continue;
      dot += static_cast<double>(gradient[row * width + j]) * parameter[row * width + j];
      squared += std::pow(static_cast<double>(parameter[row * width + j]), 2);
    }
    const double along = c.remove_parallel && squared > 0.0 ? dot / squared : 0.0;
    double updated_squared = 0.0;
    for (std::int64_t j = 0; j < width; ++j) {
      if (!live(j)) continue;
      const std::int64_t i = row * width + j;
      const double constrained = gradient[i] - along * parameter[i];
      out.constrained_squares += constrained * constrained;
      const double g = step.gradient_scale * constrained;
      double mi = step.beta1 * out.m[i] + (1.0 - step.beta1) * g;
      double vi = step.beta2 * out.v[i] + (1.0 - step.beta2) * g * g;
      if (std::abs(mi) < 1e-30) mi = 0.0;
      if (vi < 1e-30) vi = 0.0;
      out.m[i] = mi;
      out.v[i] = vi;
      out.p[i] -= step.learning_rate / c1 * mi / (std::sqrt(vi) / std::sqrt(c2) + step.epsilon);
      updated_squared += out.p[i] * out.p[i];
    }
    if (!c.unit_norm || updated_squared == 0.0) continue;
    for (std::int64_t j = 0; j < width; ++j)
      if (live(j)) out.p[row * width + j] /= std::sqrt(updated_squared);
  }
  return out;
}

TEST_P(BackendOps, AdamUpdateUnderEveryRowConstraint) {
  const std::int64_t rows = 12, blocks = 3, width = 3 * 17, n = rows * width;
  std::vector<float> parameter = normal(n);
  std::fill(parameter.begin() + 5 * width, parameter.begin() + 6 * width, 0.0f);  // a zero row
  std::vector<float> gradient = normal(n, 0.1f), m = normal(n, 0.01f), v = normal(n, 0.001f);
  for (float& x : v) x = std::abs(x);
  m[3] = 1e-31f;  // with no gradient, decays below the flush threshold: exactly 0 after the step
  gradient[3] = 0.0f;
  v[3] = 1e-31f;
  std::vector<std::uint8_t> trainable(static_cast<std::size_t>(rows * blocks), 1);
  for (std::size_t i = 1; i < trainable.size(); i += 4) trainable[i] = 0;
  trainable[0] = 1;  // element 3 (block 0 of row 0) stays trainable
  DeviceArray<std::uint8_t> device_trainable(backend_, std::span<const std::uint8_t>(trainable));

  struct Case {
    const char* name;
    bool rows, remove_parallel, unit_norm, masked;
  };
  for (const Case& c :
       {Case{"plain", false, false, false, false}, Case{"unit rows", true, false, true, false},
        Case{"projected unit rows", true, true, true, false},
        Case{"projected only", true, true, false, false},
        Case{"frozen blocks", true, false, false, true},
        Case{"frozen blocks, projected unit rows", true, true, true, true}}) {
    SCOPED_TRACE(c.name);
    auto dp = upload(parameter), dg = upload(gradient), dm = upload(m), dv = upload(v);
    AdamStep step;
    step.learning_rate = 3e-3f;
    step.beta1 = 0.8f;
    step.beta2 = 0.99f;
    step.epsilon = 1e-6f;
    step.step = 4;
    step.gradient_scale = 0.5f;
    if (c.rows) {
      step.rows.row_width = width;
      step.rows.remove_parallel = c.remove_parallel;
      step.rows.unit_norm = c.unit_norm;
      if (c.masked) {
        step.rows.trainable = device_trainable.data();
        step.rows.blocks = static_cast<int>(blocks);
      }
    }
    const AdamReference want = adam_reference(parameter, gradient, m, v, step,
                                              c.masked ? trainable : std::vector<std::uint8_t>{});
    const double squares =
        backend_->ops().constrained_sum_of_squares(dg.data(), dp.data(), n, step.rows);
    EXPECT_NEAR(squares, want.constrained_squares, 1e-6 * want.constrained_squares);
    backend_->ops().adam_update(dp.data(), dg.data(), dm.data(), dv.data(), n, step);
    expect_close(dm.download(), want.m, 1e-6, "adam m");
    expect_close(dv.download(), want.v, 1e-6, "adam v");
    expect_close(dp.download(), want.p, 2e-5, "adam parameter");
    expect_close(dg.download(), std::vector<double>(gradient.begin(), gradient.end()), 0.0,
                 "the gradient is left as it was");
    if (!c.remove_parallel) {  // projected, element 3's gradient is no longer zero
      EXPECT_EQ(dm.download()[3], 0.0f);
      EXPECT_EQ(dv.download()[3], 0.0f);
    }
    if (c.masked) {  // frozen blocks: parameter and moments bit-for-bit unchanged
      const std::vector<float> got_p = dp.download(), got_m = dm.download();
      for (std::int64_t i = 0; i < n; ++i) {
        if (trainable[(i / width) * blocks + (i % width) / (width / blocks)] != 0) continue;
        ASSERT_EQ(got_p[i], parameter[i]) << i;
        ASSERT_EQ(got_m[i], m[i]) << i;
      }
    }
  }
  auto dp = upload(parameter), dg = upload(gradient), dm = upload(m), dv = upload(v);
  AdamStep bad;
  bad.rows.row_width = 7;  // does not divide 612
  EXPECT_THROW(backend_->ops().adam_update(dp.data(), dg.data(), dm.data(), dv.data(), n, bad),
               Error);
  bad.rows.row_width = width;
  bad.rows.blocks = 4;  // does not divide 51
  EXPECT_THROW(backend_->ops().adam_update(dp.data(), dg.data(), dm.data(), dv.data(), n, bad),
               Error);
  EXPECT_THROW(backend_->ops().constrained_sum_of_squares(dg.data(), dp.data(), n, bad.rows),
               Error);
  AdamStep no_width;
  no_width.rows.unit_norm = true;
  EXPECT_THROW(backend_->ops().adam_update(dp.data(), dg.data(), dm.data(), dv.data(), n, no_width),
               Error);
}

TEST_P(BackendOps, ReconstructFusesTheDecoderWithTheSquaredError) {
  // Many entries per latent (F = 5), a third of the [rows, F] entries filled over 12 latents (the
  // CPU backend decodes such crowded codes with a GEMM), and about one entry a latent (F = 301).
  for (const std::int64_t F :
       {std::int64_t{5}, std::int64_t{12}, std::int64_t{29}, std::int64_t{301}}) {
    SCOPED_TRACE("F = " + std::to_string(F));
    const std::int64_t rows = 39;
    const int M = 2, d = 23, D = M * d;
    HostSparseCodes host;
    const SparseCodes codes = random_codes(rows, F, host);
    const std::vector<float> decoder = normal(F * D), bias = normal(D),
                             target = normal(rows * D, 2.0f);
    auto ddec = upload(decoder), dbias = upload(bias), dtarget = upload(target);
    for (const bool with_bias : {true, false}) {
      SCOPED_TRACE(with_bias ? "with bias" : "without bias");
      DeviceArray<float> recon(backend_, target.size()), grad(backend_, target.size());
      std::vector<double> sse(M), energy(M);
      ReconstructionRequest request;
      request.decoder = ddec.data();
      request.bias = with_bias ? dbias.data() : nullptr;
      request.target = dtarget.data();
      request.sources = M;
      request.width = d;
      request.gradient_scale = -0.625f;
      request.recon = recon.data();
      request.grad = grad.data();
      request.squared_error = sse.data();
      request.target_energy = energy.data();
      backend_->ops().reconstruct(codes, request);
      std::vector<double> want_recon(target.size()), want_grad(target.size()), want_sse(M, 0.0),
          want_energy(M, 0.0);
      for (std::int64_t b = 0; b < rows; ++b)
        for (std::int64_t j = 0; j < D; ++j) {
          double total = with_bias ? bias[j] : 0.0;
          for (std::int64_t e = host.row_ptr[b]; e < host.row_ptr[b + 1]; ++e)
            total += static_cast<double>(host.value[e]) * decoder[host.latent[e] * D + j];
          const double difference = total - target[b * D + j];
          want_recon[b * D + j] = total;
          want_grad[b * D + j] = -0.625 * difference;
          want_sse[j / d] += difference * difference;
          want_energy[j / d] += static_cast<double>(target[b * D + j]) * target[b * D + j];
        }
      expect_close(recon.download(), want_recon, 1e-5, "reconstruct recon");
      expect_close(grad.download(), want_grad, 1e-5, "reconstruct gradient");
      for (int m = 0; m < M; ++m) {
        EXPECT_NEAR(sse[m], want_sse[m], 1e-5 * want_sse[m]) << m;
        EXPECT_NEAR(energy[m], want_energy[m], 1e-9 * want_energy[m]) << m;
      }
      // Optional outputs left out: no gradient, no energy.
      request.grad = nullptr;
      request.target_energy = nullptr;
      std::vector<double> sse_only(M);
      request.squared_error = sse_only.data();
      backend_->ops().reconstruct(codes, request);
      for (int m = 0; m < M; ++m) EXPECT_NEAR(sse_only[m], want_sse[m], 1e-5 * want_sse[m]) << m;
    }
  }
}

TEST_P(BackendOps, SparseBackwardFusesDecoderActivationAndEncoder) {
  // F above the codes' latent count: empty latents. In the second shape few latents carry many
  // entries each, as AuxK's dead latents do, and the CPU backend takes its GEMM path.
  struct Shape {
    std::int64_t rows, F, D, used_latents;
  };
  for (const Shape& shape : {Shape{43, 27, 31, 23}, Shape{70, 12, 300, 9}}) {
    const std::int64_t rows = shape.rows, F = shape.F, D = shape.D;
    SCOPED_TRACE("D = " + std::to_string(D));
    HostSparseCodes host;
    const SparseCodes codes = random_codes(rows, shape.used_latents, host);
    const std::vector<float> decoder = normal(F * D), upstream = normal(rows * D),
                             xn = normal(rows * D);
    const std::vector<float> offset = normal(F, 0.3f);
    auto ddec = upload(decoder), dup = upload(upstream), dxn = upload(xn), doffset = upload(offset);
    // The float64 reference: d_value, then ∂L/∂pre gated on value > 0, then the gradient rows.
    const auto reference = [&](bool with_offset, const std::vector<float>& start_dec,
                               const std::vector<float>& start_enc,
                               const std::vector<float>& start_bias, std::vector<double>& d_value,
                               std::vector<double>& d_dec, std::vector<double>& d_enc,
                               std::vector<double>& d_bias) {
      d_value.assign(static_cast<std::size_t>(codes.nnz), 0.0);
      d_dec.assign(start_dec.begin(), start_dec.end());
      d_enc.assign(start_enc.begin(), start_enc.end());
      d_bias.assign(start_bias.begin(), start_bias.end());
      for (std::int64_t b = 0; b < rows; ++b)
        for (std::int64_t e = host.row_ptr[b]; e < host.row_ptr[b + 1]; ++e) {
          const std::int32_t f = host.latent[e];
          double dot = 0.0;
          for (std::int64_t j = 0; j < D; ++j)
            dot += static_cast<double>(decoder[f * D + j]) * upstream[b * D + j];
          d_value[e] = dot;
          const double d_pre = host.value[e] > 0.0f ? dot + (with_offset ? offset[f] : 0.0) : 0.0;
          d_bias[f] += d_pre;
          for (std::int64_t j = 0; j < D; ++j) {
            d_dec[f * D + j] += static_cast<double>(host.value[e]) * upstream[b * D + j];
            d_enc[f * D + j] += d_pre * xn[b * D + j];
          }
        }
    };
    const auto inputs = [&] { return backward_inputs(dup, ddec, dxn, F, D); };
    for (const bool accumulate : {false, true}) {
      SCOPED_TRACE(accumulate ? "accumulating" : "overwriting");
      const std::vector<float> start_dec = normal(F * D), start_enc = normal(F * D),
                               start_bias = normal(F);
      auto d_dec = upload(start_dec), d_enc = upload(start_enc), d_bias = upload(start_bias);
      DeviceArray<float> d_value(backend_, static_cast<std::size_t>(codes.nnz));
      SparseBackwardRequest request = inputs();
      request.value_gradient_offset = accumulate ? nullptr : doffset.data();
      request.accumulate = accumulate;
      request.d_decoder = d_dec.data();
      request.d_encoder = d_enc.data();
      request.d_bias = d_bias.data();
      request.d_value = d_value.data();
      backend_->ops().sparse_backward(codes, request);
      const std::vector<float> zeros_fd(static_cast<std::size_t>(F * D), 0.0f), zeros_f(F, 0.0f);
      std::vector<double> want_value, want_dec, want_enc, want_bias;
      reference(!accumulate, accumulate ? start_dec : zeros_fd, accumulate ? start_enc : zeros_fd,
                accumulate ? start_bias : zeros_f, want_value, want_dec, want_enc, want_bias);
      // float32 rounding grows with the row: ∂L/∂pre is a dot product over D columns, and the
      // encoder's gradient sums many such terms, whose total may cancel.
      const double tolerance = 1e-5 * std::max(1.0, static_cast<double>(D) / 30.0);
      expect_close(d_value.download(), want_value, tolerance, "sparse_backward d_value");
      expect_close(d_dec.download(), want_dec, 1e-5, "sparse_backward d_decoder");
      expect_close(d_enc.download(), want_enc, tolerance, "sparse_backward d_encoder");
      expect_close(d_bias.download(), want_bias, tolerance, "sparse_backward d_bias");
    }
    // Without a decoder gradient, and with no entries at all: the encoder rows are still written.
    auto d_enc = upload(normal(F * D)), d_bias = upload(normal(F));
    SparseBackwardRequest request = inputs();
    request.d_encoder = d_enc.data();
    request.d_bias = d_bias.data();
    SparseCodes empty;
    empty.rows = rows;
    empty.row_ptr = DeviceArray<std::int64_t>(backend_, static_cast<std::size_t>(rows + 1));
    empty.row_ptr.zero();
    empty.latent = DeviceArray<std::int32_t>(backend_, 0);
    empty.value = DeviceArray<float>(backend_, 0);
    backend_->ops().sparse_backward(empty, request);
    expect_close(d_enc.download(), std::vector<double>(F * D, 0.0), 0.0, "no entries: d_encoder");
    expect_close(d_bias.download(), std::vector<double>(F, 0.0), 0.0, "no entries: d_bias");
    // Codes naming a latent beyond F are an error, not a write out of bounds.
    request.latents = 1;
    EXPECT_THROW(backend_->ops().sparse_backward(codes, request), Error);
  }
}

TEST_P(BackendOps, SparseBackwardRowStatisticsDescribeTheRowsItLeaves) {
  // D in 1, 2 or 3 blocks; F above the codes' latent count, so some latents have none. With
  // D = 390 the codes crowd onto 10 latents, which the CPU backend multiplies as a dense block.
  for (const std::int64_t D : {30, 390}) {
    SCOPED_TRACE("D = " + std::to_string(D));
    const std::int64_t rows = 37, F = 23;
    HostSparseCodes host;
    const SparseCodes codes = random_codes(rows, D == 30 ? F - 3 : 10, host);
    const std::vector<float> decoder = normal(F * D), upstream = normal(rows * D),
                             xn = normal(rows * D);
    auto ddec = upload(decoder), dup = upload(upstream), dxn = upload(xn);
    std::vector<bool> has_entries(static_cast<std::size_t>(F), false);
    for (std::int32_t f : host.latent) has_entries[static_cast<std::size_t>(f)] = true;
    const auto request_for = [&](DeviceArray<float>& d_dec, DeviceArray<float>& d_enc,
                                 DeviceArray<float>& d_bias, DeviceArray<double>& statistics,
                                 int blocks) {
      SparseBackwardRequest request = backward_inputs(dup, ddec, dxn, F, D);
      request.d_decoder = d_dec.data();
      request.d_encoder = d_enc.data();
      request.d_bias = d_bias.data();
      request.row_statistics = statistics.data();
      request.statistics_blocks = blocks;
      return request;
    };
    for (const int blocks : {1, 2, 3}) {
      for (const bool accumulate : {false, true}) {
        SCOPED_TRACE(std::to_string(blocks) +
                     (accumulate ? " blocks, accumulating" : " blocks, overwriting"));
        auto d_dec = upload(normal(F * D)), d_enc = upload(normal(F * D)),
             d_bias = upload(normal(F));
        const std::vector<float> sentinel = normal(F * blocks * 4);
        DeviceArray<double> statistics(backend_, std::span<const double>(std::vector<double>(
                                                     sentinel.begin(), sentinel.end())));
        SparseBackwardRequest request = request_for(d_dec, d_enc, d_bias, statistics, blocks);
        request.accumulate = accumulate;
        backend_->ops().sparse_backward(codes, request);
        // The reference: the sums over the rows the pass left, in float64.
        const std::vector<float> enc = d_enc.download(), dec = d_dec.download();
        const std::vector<double> got = statistics.download();
        const std::int64_t width = D / blocks;
        for (std::int64_t f = 0; f < F; ++f) {
          for (int m = 0; m < blocks; ++m) {
            double want[4] = {0.0, 0.0, 0.0, 0.0};
            for (std::int64_t j = m * width; j < (m + 1) * width; ++j) {
              const double e = enc[f * D + j], g = dec[f * D + j], d = decoder[f * D + j];
              want[0] += e * e;
              want[1] += g * g;
              want[2] += g * d;
              want[3] += d * d;
            }
            for (int i = 0; i < 4; ++i) {
              const std::size_t at = static_cast<std::size_t>((f * blocks + m) * 4 + i);
              if (accumulate && !has_entries[static_cast<std::size_t>(f)]) {
                EXPECT_EQ(got[at], static_cast<double>(sentinel[at])) << "untouched latent " << f;
              } else if (!accumulate && !has_entries[static_cast<std::size_t>(f)]) {
                EXPECT_EQ(got[at], 0.0) << "latent " << f << " without entries";
              } else {
                EXPECT_NEAR(got[at], want[i], 1e-9 * (1.0 + std::abs(want[i])))
                    << "latent " << f << " block " << m << " sum " << i;
              }
            }
          }
        }
      }
    }
    // Blocks that do not divide the row are an error naming them.
    DeviceArray<double> statistics(backend_, static_cast<std::size_t>(F * 4 * 4));
    auto d_dec = upload(normal(F * D)), d_enc = upload(normal(F * D)), d_bias = upload(normal(F));
    EXPECT_THROW(
        backend_->ops().sparse_backward(codes, request_for(d_dec, d_enc, d_bias, statistics, 4)),
        Error);
  }
}

CROSSCODER_INSTANTIATE_FOR_BACKENDS(BackendOps);

#ifdef CROSSCODER_TEST_EMULATED_CUDA
// The alignment the encoder GEMM tells cuBLASLt it may assume of an operand (device_primitives):
// the largest power of two up to 256 dividing the address, so a row tile of the batch at
// first · D floats is never claimed to be better aligned than it is.
TEST(cuda_primitives, OperandAlignmentIsTheLargestPowerOfTwoDividingTheAddress) {
  alignas(256) static float block[1024];
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_int_distribution<int> offset(0, 959);
  for (int trial = 0; trial < 200; ++trial) {
    const int floats = offset(rng);
    const float* pointer = block + floats;
    const auto address = reinterpret_cast<std::uintptr_t>(pointer);
    std::uint32_t want = 1;  // the plain definition: largest 2^i ≤ 256 with address % 2^i == 0
    for (std::uint32_t candidate = 2; candidate <= 256; candidate *= 2)
      if (address % candidate == 0) want = candidate;
    EXPECT_EQ(cuda_emulated::operand_alignment(pointer), want) << floats << " floats in";
  }
  EXPECT_EQ(cuda_emulated::operand_alignment(block), 256u);
  EXPECT_EQ(cuda_emulated::operand_alignment(block + 7 * 26), 8u);  // a 7-row tile of D = 26
}
#endif

}  // namespace
}  // namespace crosscoder
