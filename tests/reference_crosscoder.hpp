#pragma once
// A plain float64 reference of the crosscoder's forward pass and loss, written with loops and
// no cleverness, to check the library's optimised implementation against.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "crosscoder/model.hpp"
#include "crosscoder/trainer.hpp"

namespace crosscoder::testing {

struct ReferenceParameters {
  std::vector<double> encoder, encoder_bias, decoder, decoder_bias, threshold;  // library layouts
  std::vector<double> scale, mean;  // scale per column [D], whatever the normaliser's kind

  static ReferenceParameters from(const Crosscoder& model) {
    const auto widen = [](const std::vector<float>& v) {
      return std::vector<double>(v.begin(), v.end());
    };
    const CrosscoderParameters& p = model.parameters();
    ReferenceParameters r;
    r.encoder = widen(p.encoder_weight.download());
    r.encoder_bias = widen(p.encoder_bias.download());
    r.decoder = widen(p.decoder_weight.download());
    r.decoder_bias = widen(p.decoder_bias.download());
    r.threshold = widen(p.threshold.download());
    r.scale = widen(model.normaliser().column_scales(model.config().sources, model.config().width));
    r.mean = widen(model.normaliser().mean);
    return r;
  }
};

struct ReferenceForward {
  std::vector<double> xn, pre, activation, recon;  // [B,D], [B,F], [B,F] dense, [B,D]
  std::vector<std::vector<int>> active;            // per row, the selected latents
  double min_selected_score = -1.0;
};

/// What the loss's detached parts are fixed to (AuxK residual), taken from a base forward.
struct ReferenceAux {
  bool enabled = false;
  std::vector<std::uint8_t> dead;  // [F]
  int aux_k = 0;
  std::vector<double> residual;  // [B,D] detached e = x − x̂
  double denominator = 0.0;      // detached (1/B) Σ_b ‖e_b − ē‖²
};

inline std::vector<int> top_of_row(const std::vector<double>& score, int F, int k,
                                   const std::vector<std::uint8_t>* allowed) {
  std::vector<int> order;
  for (int f = 0; f < F; ++f) {
    if (!allowed || (*allowed)[f]) order.push_back(f);
  }
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
  order.resize(std::min<std::size_t>(order.size(), static_cast<std::size_t>(k)));
  return order;
}

inline ReferenceForward reference_forward(const CrosscoderConfig& c, const ReferenceParameters& p,
                                          const std::vector<float>& x, int B, int k,
                                          double batch_threshold = -1.0) {
  const int M = c.sources, d = c.width, F = c.latents, D = M * d;
  ReferenceForward out;
  out.xn.assign(static_cast<std::size_t>(B) * D, 0.0);
  for (int b = 0; b < B; ++b)
    for (int m = 0; m < M; ++m)
      for (int i = 0; i < d; ++i) {
        const int j = m * d + i;
        out.xn[b * D + j] = (x[b * D + j] - p.mean[j]) * p.scale[j];
      }
  out.pre.assign(static_cast<std::size_t>(B) * F, 0.0);
  for (int b = 0; b < B; ++b)
    for (int f = 0; f < F; ++f) {
      double sum = p.encoder_bias[f];
      for (int j = 0; j < D; ++j) sum += out.xn[b * D + j] * p.encoder[f * D + j];
      out.pre[b * F + f] = sum;
    }
  std::vector<double> weight(F, 0.0);
  for (int f = 0; f < F; ++f)
    for (int m = 0; m < M; ++m) {
      double s = 0.0;
      for (int i = 0; i < d; ++i) s += p.decoder[f * D + m * d + i] * p.decoder[f * D + m * d + i];
      weight[f] += std::sqrt(s);
    }
  out.active.assign(B, {});
  out.activation.assign(static_cast<std::size_t>(B) * F, 0.0);
  const auto relu = [](double v) { return v > 0.0 ? v : 0.0; };
  if (c.activation == Activation::batchtopk && batch_threshold < 0.0) {
    std::vector<std::pair<double, int>> all;  // (score, flat index)
    for (int i = 0; i < B * F; ++i) all.push_back({relu(out.pre[i]) * weight[i % F], i});
    std::stable_sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.first > b.first; });
    for (int n = 0; n < B * k; ++n) {
      const int i = all[n].second;
      out.active[i / F].push_back(i % F);
      if (all[n].first > 0.0 &&
          (out.min_selected_score < 0.0 || all[n].first < out.min_selected_score))
        out.min_selected_score = all[n].first;
    }
  } else {
    for (int b = 0; b < B; ++b) {
      std::vector<double> row(out.pre.begin() + b * F, out.pre.begin() + (b + 1) * F);
      if (c.activation == Activation::topk) {
        std::vector<double> score(F);
        for (int f = 0; f < F; ++f) score[f] = relu(row[f]);
        out.active[b] = top_of_row(score, F, k, nullptr);
      } else {
        for (int f = 0; f < F; ++f) {
          bool keep = false;
          if (c.activation == Activation::relu) keep = row[f] > 0.0;
          if (c.activation == Activation::jumprelu) keep = row[f] > p.threshold[f];
          if (c.activation == Activation::batchtopk)
            keep = relu(row[f]) * weight[f] > batch_threshold;
          if (keep) out.active[b].push_back(f);
        }
      }
    }
  }
  for (int b = 0; b < B; ++b)
    for (int f : out.active[b]) out.activation[b * F + f] = relu(out.pre[b * F + f]);
  out.recon.assign(static_cast<std::size_t>(B) * D, 0.0);
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < D; ++j) {
      double sum = p.decoder_bias[j];
      for (int f = 0; f < F; ++f) sum += out.activation[b * F + f] * p.decoder[f * D + j];
      out.recon[b * D + j] = sum;
    }
  return out;
}

/// The training loss of the library's definition (docs/training.md), with the active sets and
/// AuxK's detached parts taken from `fixed` so that finite differences see a smooth function.
inline double reference_loss(const CrosscoderConfig& c, const TrainConfig& t,
                             const ReferenceParameters& p, const std::vector<float>& x, int B,
                             const ReferenceForward& fixed, const ReferenceAux& aux) {
  const int M = c.sources, d = c.width, F = c.latents, D = M * d;
  ReferenceForward f = reference_forward(c, p, x, B, c.k);  // for xn and pre
  const auto relu = [](double v) { return v > 0.0 ? v : 0.0; };
  std::vector<double> act(static_cast<std::size_t>(B) * F, 0.0);
  for (int b = 0; b < B; ++b)
    for (int l : fixed.active[b]) act[b * F + l] = relu(f.pre[b * F + l]);
  double loss = 0.0;
  // Matryoshka: Σ_i w_i·MSE of the reconstruction from prefix i's latents (w_i = 1/G unless
  // given); otherwise the one full reconstruction with weight 1.
  std::vector<int> ends = c.matryoshka_prefix_ends();
  std::vector<double> weights;
  for (std::size_t i = 0; i < ends.size(); ++i)
    weights.push_back(t.matryoshka_weights.empty() ? 1.0 / static_cast<double>(ends.size())
                                                   : t.matryoshka_weights[i]);
  if (ends.empty()) {
    ends = {F};
    weights = {1.0};
  }
  for (std::size_t i = 0; i < ends.size(); ++i)
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < D; ++j) {
        double sum = p.decoder_bias[j];
        for (int l = 0; l < ends[i]; ++l) sum += act[b * F + l] * p.decoder[l * D + j];
        loss += weights[i] * (sum - f.xn[b * D + j]) * (sum - f.xn[b * D + j]) / B;
      }
  if (c.activation == Activation::relu) {
    for (int l = 0; l < F; ++l) {
      double weight = 0.0;
      for (int m = 0; m < M; ++m) {
        double s = 0.0;
        for (int i = 0; i < d; ++i)
          s += p.decoder[l * D + m * d + i] * p.decoder[l * D + m * d + i];
        weight += std::sqrt(s);
      }
      for (int b = 0; b < B; ++b) loss += t.l1_coefficient * act[b * F + l] * weight / B;
    }
  }
  // TrainConfig::partition_l1: a plain L1 with one coefficient per partition (shared first).
  if (!t.partition_l1.empty()) {
    for (int l = 0; l < F; ++l)
      for (int b = 0; b < B; ++b)
        loss += t.partition_l1[c.exclusive_owner(l) + 1] * act[b * F + l] / B;
  }
  if (aux.enabled && aux.denominator > 0.0) {
    double aux_sse = 0.0;
    for (int b = 0; b < B; ++b) {
      std::vector<double> score(F);
      for (int l = 0; l < F; ++l) score[l] = relu(fixed.pre[b * F + l]);
      const std::vector<int> chosen = top_of_row(score, F, aux.aux_k, &aux.dead);
      for (int j = 0; j < D; ++j) {
        double sum = 0.0;
        for (int l : chosen) sum += relu(f.pre[b * F + l]) * p.decoder[l * D + j];
        aux_sse += (sum - aux.residual[b * D + j]) * (sum - aux.residual[b * D + j]);
      }
    }
    loss += t.auxk_coefficient * (aux_sse / B) / aux.denominator;
  }
  return loss;
}

/// How far the pre-activations are from changing any selection or crossing a kink: finite
/// differences are only meaningful when this is well above the step and the float32 error.
/// `aux_k` is AuxK's per-row selection size (0 when AuxK is off).
inline double selection_margin(const CrosscoderConfig& c, const ReferenceParameters& p,
                               const ReferenceForward& f, int B, int aux_k) {
  const int F = c.latents;
  double margin = 1e300;
  for (int i = 0; i < B * F; ++i) {
    margin = std::min(margin, std::abs(f.pre[i]));  // the ReLU kink
    if (c.activation == Activation::jumprelu)
      margin = std::min(margin, std::abs(f.pre[i] - p.threshold[i % F]));
  }
  // The gap between the last selected and the first rejected score at a selection boundary.
  const auto gap_at = [](std::vector<double> scores, int selected) {
    if (selected <= 0 || selected >= static_cast<int>(scores.size())) return 1e300;
    std::sort(scores.begin(), scores.end(), std::greater<>());
    return scores[selected - 1] - scores[selected];
  };
  for (int b = 0; b < B; ++b) {
    std::vector<double> row;
    for (int l = 0; l < F; ++l) row.push_back(std::max(f.pre[b * F + l], 0.0));
    if (c.activation == Activation::topk) margin = std::min(margin, gap_at(row, c.k));
    margin = std::min(margin, gap_at(row, aux_k));
  }
  if (c.activation == Activation::batchtopk) {
    std::vector<double> weight(F, 0.0), all;
    const int d = c.width, D = c.sources * d;
    for (int l = 0; l < F; ++l)
      for (int m = 0; m < c.sources; ++m) {
        double s = 0.0;
        for (int i = 0; i < d; ++i)
          s += p.decoder[l * D + m * d + i] * p.decoder[l * D + m * d + i];
        weight[l] += std::sqrt(s);
      }
    for (int i = 0; i < B * F; ++i) all.push_back(std::max(f.pre[i], 0.0) * weight[i % F]);
    margin = std::min(margin, gap_at(all, B * c.k));
  }
  return margin;
}

/// AuxK's detached parts at the given forward pass, with every latent dead.
inline ReferenceAux reference_aux_all_dead(const CrosscoderConfig& c, const ReferenceForward& f,
                                           int B, int aux_k) {
  const int D = c.sources * c.width;
  ReferenceAux aux;
  aux.enabled = true;
  aux.dead.assign(c.latents, 1);
  aux.aux_k = aux_k;
  aux.residual.resize(static_cast<std::size_t>(B) * D);
  std::vector<double> mean(D, 0.0);
  for (int i = 0; i < B * D; ++i) {
    aux.residual[i] = f.xn[i] - f.recon[i];
    mean[i % D] += aux.residual[i] / B;
  }
  double centred = 0.0;
  for (int i = 0; i < B * D; ++i)
    centred += (aux.residual[i] - mean[i % D]) * (aux.residual[i] - mean[i % D]);
  aux.denominator = centred / B;
  return aux;
}

/// Fresh random activations [B, M, d], non-zero and of mixed scale per source.
inline std::vector<float> random_activations(int B, int M, int d, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(B) * M * d);
  for (int b = 0; b < B; ++b)
    for (int m = 0; m < M; ++m)
      for (int i = 0; i < d; ++i)
        x[(b * M + m) * d + i] = normal(rng) * static_cast<float>(1 + 2 * m) + 0.3f;
  return x;
}

}  // namespace crosscoder::testing
