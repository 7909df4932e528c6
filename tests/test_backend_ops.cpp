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
  std::vector<float> scale = {0.5f, 2.0f, 1.25f};
  auto dx = upload(x), dmean = upload(mean), dscale = upload(scale);
  DeviceArray<float> xn(backend_, x.size()), back(backend_, x.size());
  for (const bool with_mean : {false, true}) {
    backend_->normalise(dx.data(), rows, M, d, dscale.data(), with_mean ? dmean.data() : nullptr,
                        xn.data());
    std::vector<double> want(x.size());
    for (std::int64_t b = 0; b < rows; ++b)
      for (int j = 0; j < D; ++j)
        want[b * D + j] =
            (static_cast<double>(x[b * D + j]) - (with_mean ? mean[j] : 0.0)) * scale[j / d];
    expect_close(xn.download(), want, 1e-6, "normalise");
    backend_->denormalise(xn.data(), rows, M, d, dscale.data(), with_mean ? dmean.data() : nullptr,
                          back.data());
    expect_close(back.download(), std::vector<double>(x.begin(), x.end()), 1e-5, "denormalise");
  }
}

TEST_P(BackendOps, EncodeIsTheDenseProductPlusBias) {
  const std::int64_t rows = 29, D = 70, F = 53;
  const std::vector<float> x = normal(rows * D), w = normal(F * D, 0.2f), bias = normal(F);
  auto dx = upload(x), dw = upload(w), db = upload(bias);
  DeviceArray<float> pre(backend_, static_cast<std::size_t>(rows * F));
  backend_->encode(dx.data(), rows, D, dw.data(), db.data(), F, pre.data());
  std::vector<double> want(static_cast<std::size_t>(rows * F));
  for (std::int64_t b = 0; b < rows; ++b)
    for (std::int64_t f = 0; f < F; ++f) {
      double total = bias[f];
      for (std::int64_t j = 0; j < D; ++j)
        total += static_cast<double>(x[b * D + j]) * w[f * D + j];
      want[b * F + f] = total;
    }
  expect_close(pre.download(), want, 1e-5, "encode");
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
    backend_->encode(dx.data(), rows, D, dw.data(), db.data(), F, pre.data());
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
  const std::int64_t rows = 41, F = 23, D = 19;
  HostSparseCodes host;
  const SparseCodes codes = random_codes(rows, F, host);
  const std::vector<float> decoder = normal(F * D), bias = normal(D), upstream = normal(rows * D);
  auto ddec = upload(decoder), dbias = upload(bias), dup = upload(upstream);

  DeviceArray<float> out(backend_, static_cast<std::size_t>(rows * D));
  backend_->decode(codes, ddec.data(), dbias.data(), D, out.data());
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
  backend_->decoder_backward(codes, dup.data(), ddec.data(), D, d_value.data(), d_decoder.data());
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
  backend_->decoder_backward(codes, dup.data(), ddec.data(), D, d_value_only.data(), nullptr);
  expect_close(d_value_only.download(), want_value, 1e-5, "decoder_backward d_value only");
}

TEST_P(BackendOps, SparseEncoderBackwardAccumulates) {
  const std::int64_t rows = 33, F = 17, D = 26;
  HostSparseCodes host;
  const SparseCodes codes = random_codes(rows, F, host);
  const std::vector<float> xn = normal(rows * D),
                           d_pre = normal(static_cast<std::size_t>(codes.nnz));
  const std::vector<float> start_w = normal(F * D), start_b = normal(F);
  auto dxn = upload(xn), dpre = upload(d_pre), dw = upload(start_w), db = upload(start_b);
  backend_->encoder_backward(codes, dpre.data(), dxn.data(), D, dw.data(), db.data());
  std::vector<double> want_w(start_w.begin(), start_w.end()),
      want_b(start_b.begin(), start_b.end());
  for (std::int64_t b = 0; b < rows; ++b)
    for (std::int64_t e = host.row_ptr[b]; e < host.row_ptr[b + 1]; ++e) {
      const std::int32_t f = host.latent[e];
      want_b[f] += d_pre[e];
      for (std::int64_t j = 0; j < D; ++j)
        want_w[f * D + j] += static_cast<double>(d_pre[e]) * xn[b * D + j];
    }
  expect_close(dw.download(), want_w, 1e-5, "encoder_backward d_encoder");
  expect_close(db.download(), want_b, 1e-5, "encoder_backward d_bias");
}

TEST_P(BackendOps, SquaredErrorPerSourceAndItsGradient) {
  const std::int64_t rows = 45;
  const int M = 2, d = 13, D = M * d;
  const std::vector<float> recon = normal(rows * D), target = normal(rows * D);
  auto dr = upload(recon), dt = upload(target);
  DeviceArray<float> grad(backend_, recon.size());
  std::vector<double> sse(M);
  backend_->squared_error(dr.data(), dt.data(), rows, M, d, 0.375f, grad.data(), sse.data());
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
  backend_->column_sums(dx.data(), rows, width, sums.data());
  for (std::int64_t j = 0; j < width; ++j) {
    double want = 0.0;
    for (std::int64_t b = 0; b < rows; ++b) want += x[b * width + j];
    EXPECT_NEAR(sums[j], want, 1e-9 * (1.0 + std::abs(want))) << "column " << j;
  }
  double want_squares = 0.0;
  for (float v : y) want_squares += static_cast<double>(v) * v;
  EXPECT_NEAR(backend_->sum_of_squares(dy.data(), n), want_squares, 1e-10 * want_squares);
  backend_->clamp_min(dy.data(), n, 0.5f);
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
  backend_->latent_totals(codes, F, sums.data(), counts.data());
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
  backend_->decoder_norms(ddec.data(), F, M, d, norms.data());
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
  backend_->add_scaled_blocks(dsource.data(), dfactor.data(), F, M, d, dtarget.data());
  std::vector<double> want(static_cast<std::size_t>(F * D));
  for (std::int64_t f = 0; f < F; ++f)
    for (int j = 0; j < D; ++j)
      want[f * D + j] =
          target[f * D + j] + static_cast<double>(factor[f * M + j / d]) * source[f * D + j];
  expect_close(dtarget.download(), want, 1e-6, "add_scaled_blocks");
}

TEST_P(BackendOps, DecoderConstraintProjectsGradientsAndRenormalisesRows) {
  const std::int64_t F = 21, D = 30;
  std::vector<float> decoder = normal(F * D);
  std::fill(decoder.begin() + 5 * D, decoder.begin() + 6 * D, 0.0f);  // a zero row stays zero
  const std::vector<float> gradient = normal(F * D);
  auto ddec = upload(decoder), dgrad = upload(gradient);
  backend_->constrain_decoder(ddec.data(), dgrad.data(), F, D);
  std::vector<double> want_grad(gradient.begin(), gradient.end()), want_dec(F * D);
  for (std::int64_t f = 0; f < F; ++f) {
    double dot = 0.0, squared = 0.0;
    for (std::int64_t j = 0; j < D; ++j) {
      dot += static_cast<double>(gradient[f * D + j]) * decoder[f * D + j];
      squared += std::pow(decoder[f * D + j], 2);
    }
    for (std::int64_t j = 0; j < D; ++j) {
      if (squared > 0.0) want_grad[f * D + j] -= dot / squared * decoder[f * D + j];
      want_dec[f * D + j] = squared > 0.0 ? decoder[f * D + j] / std::sqrt(squared) : 0.0;
    }
  }
  expect_close(dgrad.download(), want_grad, 1e-5, "constrain_decoder gradient");
  backend_->constrain_decoder(ddec.data(), nullptr, F, D);
  expect_close(ddec.download(), want_dec, 1e-6, "constrain_decoder rows");
}

TEST_P(BackendOps, AdamUpdateWithClippingFlushAndUnitRows) {
  const std::int64_t rows = 12, width = 40, n = rows * width;
  const std::vector<float> parameter = normal(n);
  std::vector<float> gradient = normal(n, 0.1f), m = normal(n, 0.01f), v = normal(n, 0.001f);
  for (float& x : v) x = std::abs(x);
  m[3] = 1e-31f;  // with no gradient, decays below the flush threshold: exactly 0 after the step
  gradient[3] = 0.0f;
  v[3] = 1e-31f;
  for (const std::int64_t unit_rows : {std::int64_t{0}, width}) {
    auto dp = upload(parameter), dg = upload(gradient), dm = upload(m), dv = upload(v);
    AdamStep step;
    step.learning_rate = 3e-3f;
    step.beta1 = 0.8f;
    step.beta2 = 0.99f;
    step.epsilon = 1e-6f;
    step.step = 4;
    step.gradient_scale = 0.5f;
    step.unit_norm_rows = unit_rows;
    backend_->adam_update(dp.data(), dg.data(), dm.data(), dv.data(), n, step);
    std::vector<double> want_p(n), want_m(n), want_v(n);
    const double c1 = 1.0 - std::pow(0.8, 4), c2 = 1.0 - std::pow(0.99, 4);
    for (std::int64_t i = 0; i < n; ++i) {
      const double g = 0.5 * gradient[i];
      double mi = 0.8 * m[i] + 0.2 * g, vi = 0.99 * v[i] + 0.01 * g * g;
      if (std::abs(mi) < 1e-30) mi = 0.0;
      if (vi < 1e-30) vi = 0.0;
      want_m[i] = mi;
      want_v[i] = vi;
      want_p[i] = parameter[i] - 3e-3 / c1 * mi / (std::sqrt(vi) / std::sqrt(c2) + 1e-6);
    }
    if (unit_rows > 0) {
      for (std::int64_t r = 0; r < rows; ++r) {
        double squared = 0.0;
        for (std::int64_t j = 0; j < width; ++j)
          squared += want_p[r * width + j] * want_p[r * width + j];
        for (std::int64_t j = 0; j < width; ++j) want_p[r * width + j] /= std::sqrt(squared);
      }
    }
    expect_close(dm.download(), want_m, 1e-6, "adam m");
    expect_close(dv.download(), want_v, 1e-6, "adam v");
    expect_close(dp.download(), want_p, 2e-5,
                 unit_rows ? "adam parameter (unit rows)" : "adam parameter");
    EXPECT_EQ(dm.download()[3], 0.0f);
    EXPECT_EQ(dv.download()[3], 0.0f);
  }
  auto dp = upload(parameter), dg = upload(gradient), dm = upload(m), dv = upload(v);
  AdamStep bad;
  bad.unit_norm_rows = 7;  // does not divide 480
  EXPECT_THROW(backend_->adam_update(dp.data(), dg.data(), dm.data(), dv.data(), n, bad), Error);
}

CROSSCODER_INSTANTIATE_FOR_BACKENDS(BackendOps);

}  // namespace
}  // namespace crosscoder
