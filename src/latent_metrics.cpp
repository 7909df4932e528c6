#include "crosscoder/latent_metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "crosscoder/error.hpp"
#include "enum_names.hpp"

namespace crosscoder {
namespace {

constexpr detail::EnumName<ClassRule> kClassRuleNames[] = {
    {ClassRule::relative_norm, "relative_norm"}, {ClassRule::minder, "minder"}};

// ((n_0 − n_1)/max(n_0, n_1) + 1)/2; 0.5 when both are zero.
double normalised_difference_of(double n0, double n1) {
  const double largest = std::max(n0, n1);
  return largest > 0.0 ? ((n0 - n1) / largest + 1.0) / 2.0 : 0.5;
}

}  // namespace

std::string_view to_string(ClassRule rule) noexcept {
  return detail::enum_name(kClassRuleNames, rule);
}

ClassRule parse_class_rule(std::string_view text) {
  return detail::parse_enum(kClassRuleNames, text, "class rule");
}

int classify_minder(std::span<const double> norms) {
  if (norms.size() != 2) {
    throw Error(fmt::format("class rule minder needs exactly two sources, got {}", norms.size()));
  }
  if (!(std::max(norms[0], norms[1]) > 0.0)) return kMixedLatent;
  const double n = normalised_difference_of(norms[0], norms[1]);
  if (n < 0.1) return 1;
  if (n > 0.9) return 0;
  return std::abs(n - 0.5) < 0.1 ? kSharedLatent : kMixedLatent;
}

int classify_by_norms(std::span<const double> norms, double exclusive_threshold) {
  double total = 0.0;
  for (double n : norms) total += n;
  if (!(total > 0.0)) return kMixedLatent;
  if (norms.size() == 1) return kSharedLatent;
  double smallest = 1.0;
  for (std::size_t m = 0; m < norms.size(); ++m) {
    const double r = norms[m] / total;
    if (r >= exclusive_threshold) return static_cast<int>(m);
    smallest = std::min(smallest, r);
  }
  const double shared_floor = (1.0 - exclusive_threshold) / static_cast<double>(norms.size() - 1);
  return smallest > shared_floor ? kSharedLatent : kMixedLatent;
}

namespace {

// Cosine between two d-vectors, in float64; 0 when either is zero.
float cosine(const float* a, const float* b, int width) {
  double dot = 0.0, aa = 0.0, bb = 0.0;
  for (int i = 0; i < width; ++i) {
    dot += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return aa > 0.0 && bb > 0.0 ? static_cast<float>(dot / std::sqrt(aa * bb)) : 0.0f;
}

}  // namespace

WeightMetrics weight_metrics(const Crosscoder& model, double exclusive_threshold, ClassRule rule) {
  if (!(exclusive_threshold > 0.5 && exclusive_threshold <= 1.0)) {
    throw Error(fmt::format("weight metrics: exclusive threshold must be in (0.5, 1], got {}",
                            exclusive_threshold));
  }
  const CrosscoderConfig& c = model.config();
  if (rule == ClassRule::minder && c.sources != 2) {
    throw Error(fmt::format(
        "weight metrics: class rule minder needs a crosscoder of two sources, this one has {}",
        c.sources));
  }
  const int M = c.sources, d = c.width;
  const std::int64_t F = c.latents, D = c.input_width();
  const std::int64_t pairs = static_cast<std::int64_t>(M) * (M - 1) / 2;
  WeightMetrics out;
  out.sources = M;
  out.latents = F;
  out.exclusive_threshold = exclusive_threshold;
  out.class_rule = rule;
  out.decoder_norm = model.decoder_norms();
  out.relative_norm = model.relative_decoder_norms();
  const std::vector<float> decoder = model.decoder_vectors();
  const std::vector<float> encoder = model.parameters().encoder_weight.download();  // [F, D]
  out.decoder_cosine.resize(static_cast<std::size_t>(F * pairs));
  out.encoder_cosine.resize(static_cast<std::size_t>(F * pairs));
  out.latent_class.resize(static_cast<std::size_t>(F));
  if (M == 2) out.normalised_difference.resize(static_cast<std::size_t>(F));
  std::vector<double> norms(static_cast<std::size_t>(M));
  for (std::int64_t f = 0; f < F; ++f) {
    std::int64_t pair = 0;
    for (int m = 0; m < M; ++m) {
      for (int n = m + 1; n < M; ++n, ++pair) {
        out.decoder_cosine[f * pairs + pair] =
            cosine(&decoder[f * D + m * d], &decoder[f * D + n * d], d);
        out.encoder_cosine[f * pairs + pair] =
            cosine(&encoder[f * D + m * d], &encoder[f * D + n * d], d);
      }
      norms[m] = out.decoder_norm[f * M + m];
    }
    out.latent_class[f] = rule == ClassRule::minder ? classify_minder(norms)
                                                    : classify_by_norms(norms, exclusive_threshold);
    if (M == 2)
      out.normalised_difference[f] =
          static_cast<float>(normalised_difference_of(norms[0], norms[1]));
  }
  if (!c.source_models.empty()) {
    const int K = c.models();
    out.models = K;
    out.source_models = c.source_models;
    out.model_norm.assign(static_cast<std::size_t>(F * K), 0.0f);
    out.model_relative_norm.assign(out.model_norm.size(), 0.0f);
    out.model_class.resize(static_cast<std::size_t>(F));
    out.peak_source.resize(static_cast<std::size_t>(F));
    std::vector<double> squares(static_cast<std::size_t>(K));
    for (std::int64_t f = 0; f < F; ++f) {
      std::fill(squares.begin(), squares.end(), 0.0);
      int peak = 0;
      for (int m = 0; m < M; ++m) {
        const double n = out.decoder_norm[f * M + m];
        squares[static_cast<std::size_t>(c.model_of(m))] += n * n;
        if (n > out.decoder_norm[f * M + peak]) peak = m;
      }
      double total = 0.0;
      for (double& s : squares) total += (s = std::sqrt(s));
      for (int k = 0; k < K; ++k) {
        out.model_norm[f * K + k] = static_cast<float>(squares[k]);
        out.model_relative_norm[f * K + k] =
            total > 0.0 ? static_cast<float>(squares[k] / total) : 0.0f;
      }
      out.model_class[f] = classify_by_norms(squares, exclusive_threshold);
      out.peak_source[f] = peak;
    }
  }
  return out;
}

}  // namespace crosscoder
