#include "crosscoder/trainer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "crosscoder/error.hpp"
#include "validation.hpp"

namespace crosscoder {

// ---- TrainConfig ----------------------------------------------------------------------------

void TrainConfig::validate() const {
  const auto require = [](bool ok, const char* field, auto value) {
    if (!ok) throw Error(fmt::format("train config: {} out of range: {}", field, value));
  };
  require(steps >= 1, "steps", steps);
  require(batch_size >= 1, "batch_size", batch_size);
  require(learning_rate > 0.0f && std::isfinite(learning_rate), "learning_rate", learning_rate);
  require(beta1 >= 0.0f && beta1 < 1.0f, "beta1", beta1);
  require(beta2 >= 0.0f && beta2 < 1.0f, "beta2", beta2);
  require(epsilon > 0.0f, "epsilon", epsilon);
  require(warmup_steps >= 0, "warmup_steps", warmup_steps);
  require(decay_fraction >= 0.0f && decay_fraction <= 1.0f, "decay_fraction", decay_fraction);
  require(l1_coefficient >= 0.0f, "l1_coefficient", l1_coefficient);
  require(l0_coefficient >= 0.0f, "l0_coefficient", l0_coefficient);
  require(auxk_coefficient >= 0.0f, "auxk_coefficient", auxk_coefficient);
  require(aux_k >= 0, "aux_k", aux_k);
  require(dead_after_tokens >= 0, "dead_after_tokens", dead_after_tokens);
  require(k_initial >= 0, "k_initial", k_initial);
  require(k_anneal_steps >= 0, "k_anneal_steps", k_anneal_steps);
  require(threshold_momentum >= 0.0f && threshold_momentum < 1.0f, "threshold_momentum",
          threshold_momentum);
  require(normaliser_rows >= 0, "normaliser_rows", normaliser_rows);
}

std::string TrainConfig::to_json() const {
  return nlohmann::json{{"steps", steps},
                        {"batch_size", batch_size},
                        {"learning_rate", learning_rate},
                        {"beta1", beta1},
                        {"beta2", beta2},
                        {"epsilon", epsilon},
                        {"warmup_steps", warmup_steps},
                        {"decay_fraction", decay_fraction},
                        {"gradient_clip", gradient_clip},
                        {"l1_coefficient", l1_coefficient},
                        {"l0_coefficient", l0_coefficient},
                        {"auxk_coefficient", auxk_coefficient},
                        {"aux_k", aux_k},
                        {"dead_after_tokens", dead_after_tokens},
                        {"k_initial", k_initial},
                        {"k_anneal_steps", k_anneal_steps},
                        {"threshold_momentum", threshold_momentum},
                        {"normaliser_rows", normaliser_rows},
                        {"seed", seed}}
      .dump();
}

TrainConfig TrainConfig::from_json(std::string_view text) {
  TrainConfig config;
  try {
    const nlohmann::json json = nlohmann::json::parse(text);
    const auto read = [&](const char* name, auto& field) {
      if (!json.contains(name)) throw Error(fmt::format("train config: missing field '{}'", name));
      field = json.at(name).get<std::decay_t<decltype(field)>>();
    };
    read("steps", config.steps);
    read("batch_size", config.batch_size);
    read("learning_rate", config.learning_rate);
    read("beta1", config.beta1);
    read("beta2", config.beta2);
    read("epsilon", config.epsilon);
    read("warmup_steps", config.warmup_steps);
    read("decay_fraction", config.decay_fraction);
    read("gradient_clip", config.gradient_clip);
    read("l1_coefficient", config.l1_coefficient);
    read("l0_coefficient", config.l0_coefficient);
    read("auxk_coefficient", config.auxk_coefficient);
    read("aux_k", config.aux_k);
    read("dead_after_tokens", config.dead_after_tokens);
    read("k_initial", config.k_initial);
    read("k_anneal_steps", config.k_anneal_steps);
    read("threshold_momentum", config.threshold_momentum);
    read("normaliser_rows", config.normaliser_rows);
    read("seed", config.seed);
  } catch (const nlohmann::json::exception& error) {
    throw Error(fmt::format("train config: invalid JSON: {}", error.what()));
  }
  config.validate();
  return config;
}

// ---- Trainer --------------------------------------------------------------------------------

namespace {

struct ParameterSlot {
  DeviceArray<float>* parameter;
  DeviceArray<float>* gradient;
};

std::vector<ParameterSlot> slots(CrosscoderParameters& p, Gradients& g) {
  std::vector<ParameterSlot> list = {{&p.encoder_weight, &g.encoder_weight},
                                     {&p.encoder_bias, &g.encoder_bias},
                                     {&p.decoder_weight, &g.decoder_weight},
                                     {&p.decoder_bias, &g.decoder_bias}};
  if (!p.threshold.empty()) list.push_back({&p.threshold, &g.threshold});
  return list;
}

}  // namespace

Trainer::Trainer(Crosscoder& model, const TrainConfig& config)
    : model_(model), config_(config), backend_(model.backend()) {
  config_.validate();
  const CrosscoderConfig& c = model_.config();
  if (config_.k_initial > 0 && config_.k_initial >= c.latents) {
    throw Error(fmt::format("train config: k_initial ({}) must be below latents ({})",
                            config_.k_initial, c.latents));
  }
  CrosscoderParameters& p = model_.parameters();
  const auto like = [&](const DeviceArray<float>& a) {
    return DeviceArray<float>(backend_, a.size());
  };
  gradients_.encoder_weight = like(p.encoder_weight);
  gradients_.encoder_bias = like(p.encoder_bias);
  gradients_.decoder_weight = like(p.decoder_weight);
  gradients_.decoder_bias = like(p.decoder_bias);
  gradients_.threshold = like(p.threshold);
  for (const ParameterSlot& slot : slots(p, gradients_)) {
    Moments moments{like(*slot.parameter), like(*slot.parameter)};
    moments.m.zero();
    moments.v.zero();
    moments_.push_back(std::move(moments));
  }
  tokens_since_fired_.assign(static_cast<std::size_t>(c.latents), 0);
  fired_this_step_.assign(static_cast<std::size_t>(c.latents), 0);
}

float Trainer::learning_rate_at(std::int64_t t) const noexcept {
  double rate = config_.learning_rate;
  if (config_.warmup_steps > 0 && t <= config_.warmup_steps) {
    rate *= static_cast<double>(t) / static_cast<double>(config_.warmup_steps);
  }
  const auto decay_steps = static_cast<std::int64_t>(
      std::floor(config_.decay_fraction * static_cast<double>(config_.steps)));
  const std::int64_t decay_start = config_.steps - decay_steps;
  if (decay_steps > 0 && t > decay_start) {
    rate *= static_cast<double>(config_.steps - t + 1) / static_cast<double>(decay_steps + 1);
  }
  return static_cast<float>(rate);
}

int Trainer::k_at(std::int64_t t) const noexcept {
  const int k = model_.config().k;
  if (config_.k_initial <= 0 || config_.k_anneal_steps <= 0 || t >= config_.k_anneal_steps)
    return k;
  const double fraction = static_cast<double>(t) / static_cast<double>(config_.k_anneal_steps);
  return static_cast<int>(std::lround(config_.k_initial + fraction * (k - config_.k_initial)));
}

DeviceArray<float>& Trainer::scratch(const std::string& name, std::int64_t size) {
  DeviceArray<float>& buffer = scratch_[name];
  if (buffer.size() != static_cast<std::size_t>(size)) {
    buffer = DeviceArray<float>(backend_, static_cast<std::size_t>(size));
  }
  return buffer;
}

StepReport Trainer::compute_gradients(std::span<const float> x, std::int64_t rows) {
  return forward_backward(x, rows);
}

namespace {

// ∂L/∂a → ∂L/∂pre for entries whose value went through max(·, 0): zero where it clipped.
void zero_where_inactive(std::vector<float>& gradient, const std::vector<float>& values) {
  for (std::size_t e = 0; e < gradient.size(); ++e) {
    if (!(values[e] > 0.0f)) gradient[e] = 0.0f;
  }
}

}  // namespace

StepReport Trainer::forward_backward(std::span<const float> x, std::int64_t rows) {
  const CrosscoderConfig& c = model_.config();
  detail::check_batch(x, rows, c.sources, c.width, "training batch");
  if (rows < 1) throw Error("training batch: needs at least one row");
  if (!model_.normaliser().fitted) {
    const std::int64_t fit_rows =
        config_.normaliser_rows > 0 ? std::min(config_.normaliser_rows, rows) : rows;
    model_.fit_normaliser(x.first(static_cast<std::size_t>(fit_rows * c.input_width())), fit_rows);
  }
  Backend& be = *backend_;
  const std::int64_t B = rows;
  const std::int64_t D = c.input_width();
  const std::int64_t F = c.latents;
  CrosscoderParameters& p = model_.parameters();

  StepReport report;
  report.step = step_ + 1;
  report.k = k_at(report.step);

  // Forward: normalise, encode, select, decode.
  DeviceArray<float>& raw = scratch("raw", B * D);
  raw.upload(x);
  Batch batch{B, scratch("xn", B * D), scratch("pre", B * F), scratch("recon", B * D),
              scratch("grad_recon", B * D)};
  model_.preactivations(raw.data(), B, batch.xn.data(), batch.pre.data());
  const SelectionRequest request =
      model_.selection_request(report.k, /*training=*/true, scratch("score_weights", F));
  SparseCodes codes = be.select(batch.pre.data(), B, F, request, &last_min_selected_score_);
  be.decode(codes, p.decoder_weight.data(), p.decoder_bias.data(), D, batch.recon.data());

  for (const ParameterSlot& slot : slots(p, gradients_)) slot.gradient->zero();
  reconstruction_terms(batch, report);
  report.l0 = static_cast<double>(codes.nnz) / static_cast<double>(B);

  // Backward through the decoder; b_dec's gradient is the column sums of the upstream gradient.
  DeviceArray<float> d_value(backend_, static_cast<std::size_t>(codes.nnz));
  be.decoder_backward(codes, batch.grad_recon.data(), p.decoder_weight.data(), D, d_value.data(),
                      gradients_.decoder_weight.data());
  std::vector<double> bias_gradient(static_cast<std::size_t>(D));
  be.column_sums(batch.grad_recon.data(), B, D, bias_gradient.data());
  gradients_.decoder_bias.upload(std::vector<float>(bias_gradient.begin(), bias_gradient.end()));

  // The activation's own terms turn ∂L/∂a into ∂L/∂pre. These elementwise steps run on host
  // copies of the [nnz] arrays (cheap next to the GEMM; fused kernels arrive with CUDA).
  const std::vector<float> values = codes.value.download();
  std::vector<float> d_pre = d_value.download();
  std::vector<float> latent_sums(static_cast<std::size_t>(F));
  be.latent_totals(codes, F, latent_sums.data(), fired_this_step_.data());
  switch (c.activation) {
    case Activation::relu:
      l1_terms(batch, codes, latent_sums, d_pre, report);
      break;
    case Activation::jumprelu:
      zero_where_inactive(d_pre, values);
      jumprelu_terms(batch, codes.nnz, report);
      break;
    case Activation::topk:
    case Activation::batchtopk:
      zero_where_inactive(d_pre, values);
      break;
  }
  d_value.upload(d_pre);
  be.encoder_backward(codes, d_value.data(), batch.xn.data(), D, gradients_.encoder_weight.data(),
                      gradients_.encoder_bias.data());
  if ((c.activation == Activation::topk || c.activation == Activation::batchtopk) &&
      config_.auxk_coefficient > 0.0f) {
    auxk_terms(batch, report);
  }

  report.loss = report.reconstruction + report.sparsity + report.auxk;
  std::int64_t dead_now = 0;
  for (std::int64_t f = 0; f < F; ++f) {
    const std::int64_t since = fired_this_step_[f] > 0 ? 0 : tokens_since_fired_[f] + B;
    dead_now += since >= config_.dead_after_tokens ? 1 : 0;
  }
  report.dead_fraction = static_cast<double>(dead_now) / static_cast<double>(F);
  return report;
}

void Trainer::reconstruction_terms(Batch& batch, StepReport& report) {
  // Σ_m (1/B) Σ_b ‖x̂_bm − x_bm‖², its gradient 2(x̂ − x)/B, and FVE per source.
  const CrosscoderConfig& c = model_.config();
  Backend& be = *backend_;
  const std::int64_t B = batch.rows, D = c.input_width();
  const int M = c.sources;
  std::vector<double> sse(static_cast<std::size_t>(M));
  be.squared_error(batch.recon.data(), batch.xn.data(), B, M, c.width, 2.0f / static_cast<float>(B),
                   batch.grad_recon.data(), sse.data());
  // Σ_b ‖x_bm − mean_m‖² = Σ_b ‖x_bm‖² − B‖mean_m‖², per source.
  std::vector<double> column_sums(static_cast<std::size_t>(D));
  be.column_sums(batch.xn.data(), B, D, column_sums.data());
  std::vector<double> energy(static_cast<std::size_t>(M));
  DeviceArray<float>& zeros = scratch("zeros", B * D);
  zeros.zero();
  be.squared_error(zeros.data(), batch.xn.data(), B, M, c.width, 0.0f, nullptr, energy.data());
  report.mse.resize(static_cast<std::size_t>(M));
  report.fve.resize(static_cast<std::size_t>(M));
  for (int m = 0; m < M; ++m) {
    for (int i = 0; i < c.width; ++i) {
      const double mean = column_sums[m * c.width + i] / static_cast<double>(B);
      energy[m] -= static_cast<double>(B) * mean * mean;
    }
    report.mse[m] = sse[m] / static_cast<double>(B);
    report.reconstruction += report.mse[m];
    report.fve[m] = energy[m] > 0.0 ? 1.0 - sse[m] / energy[m] : 0.0;
  }
}

void Trainer::l1_terms(const Batch& batch, const SparseCodes& codes,
                       const std::vector<float>& latent_sums, std::vector<float>& d_pre,
                       StepReport& report) {
  // (λ/B) Σ_b Σ_f a_bf · w_f with w_f = Σ_m ‖d_{f,m}‖ (Anthropic 2024).
  const CrosscoderConfig& c = model_.config();
  const std::int64_t F = c.latents;
  const int M = c.sources;
  const std::vector<float> norms = model_.decoder_norms();
  const double lambda_over_b = config_.l1_coefficient / static_cast<double>(batch.rows);
  std::vector<float> weight(static_cast<std::size_t>(F), 0.0f);
  for (std::int64_t f = 0; f < F; ++f) {
    for (int m = 0; m < M; ++m) weight[f] += norms[f * M + m];
    report.sparsity += lambda_over_b * latent_sums[f] * weight[f];
  }
  const std::vector<float> values = codes.value.download();
  const std::vector<std::int32_t> latents = codes.latent.download();
  for (std::size_t e = 0; e < d_pre.size(); ++e) {
    d_pre[e] =
        values[e] > 0.0f ? d_pre[e] + static_cast<float>(lambda_over_b * weight[latents[e]]) : 0.0f;
  }
  // ∂/∂d_{f,m} of (λ/B)·S_f·‖d_{f,m}‖ = (λ/B)·S_f·d_{f,m}/‖d_{f,m}‖, S_f = Σ_b a_bf: one
  // factor per (latent, source), applied to the decoder rows where they are.
  std::vector<float> factor(static_cast<std::size_t>(F * M), 0.0f);
  for (std::int64_t f = 0; f < F; ++f) {
    if (latent_sums[f] == 0.0f) continue;
    for (int m = 0; m < M; ++m) {
      const float norm = norms[f * M + m];
      if (norm != 0.0f)
        factor[f * M + m] = static_cast<float>(lambda_over_b * latent_sums[f] / norm);
    }
  }
  DeviceArray<float>& device_factor = scratch("l1_factor", F * M);
  device_factor.upload(factor);
  backend_->add_scaled_blocks(model_.parameters().decoder_weight.data(), device_factor.data(), F, M,
                              c.width, gradients_.decoder_weight.data());
}

void Trainer::jumprelu_terms(const Batch& batch, std::int64_t active, StepReport& report) {
  // L0 = (λ/B)·nnz, with the straight-through estimator for θ over |pre − θ| < ε/2:
  // ∂(z·H(z−θ))/∂θ ≈ −θ/ε and ∂H(z−θ)/∂θ ≈ −1/ε (Rajamanoharan et al. 2024).
  const CrosscoderConfig& c = model_.config();
  Backend& be = *backend_;
  const CrosscoderParameters& p = model_.parameters();
  const double lambda_over_b = config_.l0_coefficient / static_cast<double>(batch.rows);
  report.sparsity = lambda_over_b * static_cast<double>(active);
  SelectionRequest near;
  near.selection = Selection::near_threshold;
  near.threshold = p.threshold.data();
  near.bandwidth = c.jumprelu_bandwidth;
  const SparseCodes near_codes = be.select(batch.pre.data(), batch.rows, c.latents, near, nullptr);
  DeviceArray<float> d_near(backend_, static_cast<std::size_t>(near_codes.nnz));
  be.decoder_backward(near_codes, batch.grad_recon.data(), p.decoder_weight.data(), c.input_width(),
                      d_near.data(), nullptr);
  const std::vector<float> d_near_host = d_near.download();
  const std::vector<std::int32_t> near_latents = near_codes.latent.download();
  const std::vector<float> theta = p.threshold.download();
  std::vector<double> d_theta(static_cast<std::size_t>(c.latents), 0.0);
  const double inverse_bandwidth = 1.0 / c.jumprelu_bandwidth;
  for (std::size_t e = 0; e < near_latents.size(); ++e) {
    const std::int32_t f = near_latents[e];
    d_theta[f] +=
        -theta[f] * inverse_bandwidth * d_near_host[e] - lambda_over_b * inverse_bandwidth;
  }
  gradients_.threshold.upload(std::vector<float>(d_theta.begin(), d_theta.end()));
}

void Trainer::auxk_terms(const Batch& batch, StepReport& report) {
  // AuxK (Gao et al. 2024): the dead latents' top aux_k reconstruct the detached residual,
  // normalised by the residual's variance.
  const CrosscoderConfig& c = model_.config();
  Backend& be = *backend_;
  const CrosscoderParameters& p = model_.parameters();
  const std::int64_t B = batch.rows, D = c.input_width(), F = c.latents;
  const int M = c.sources;
  std::vector<std::uint8_t> dead(static_cast<std::size_t>(F), 0);
  std::int64_t dead_count = 0;
  for (std::int64_t f = 0; f < F; ++f) {
    dead[f] = tokens_since_fired_[f] >= config_.dead_after_tokens ? 1 : 0;
    dead_count += dead[f];
  }
  if (dead_count == 0) return;
  DeviceArray<std::uint8_t> dead_mask(backend_, std::span<const std::uint8_t>(dead));
  SelectionRequest aux;
  aux.selection = Selection::per_row_top_k;
  aux.k = config_.aux_k > 0 ? config_.aux_k : std::max<std::int64_t>(1, D / 2);
  aux.allowed = dead_mask.data();
  aux.positive_only = true;  // zero activations add nothing to the AuxK loss or its gradient
  const SparseCodes aux_codes = be.select(batch.pre.data(), B, F, aux, nullptr);

  DeviceArray<float>& residual = scratch("residual", B * D);  // e = x − x̂ (detached)
  std::vector<double> unused(static_cast<std::size_t>(M));
  be.squared_error(batch.xn.data(), batch.recon.data(), B, M, c.width, 1.0f, residual.data(),
                   unused.data());
  std::vector<double> residual_sums(static_cast<std::size_t>(D));
  be.column_sums(residual.data(), B, D, residual_sums.data());
  double centred = be.sum_of_squares(residual.data(), B * D);
  for (double sum : residual_sums) centred -= sum * sum / static_cast<double>(B);
  const double denominator = centred / static_cast<double>(B);
  if (!(denominator > 0.0)) return;

  DeviceArray<float>& aux_recon = scratch("aux_recon", B * D);
  be.decode(aux_codes, p.decoder_weight.data(), nullptr, D, aux_recon.data());
  DeviceArray<float>& grad_aux = scratch("grad_aux", B * D);
  std::vector<double> aux_sse(static_cast<std::size_t>(M));
  const double scale = config_.auxk_coefficient * 2.0 / (static_cast<double>(B) * denominator);
  be.squared_error(aux_recon.data(), residual.data(), B, M, c.width, static_cast<float>(scale),
                   grad_aux.data(), aux_sse.data());
  double aux_total = 0.0;
  for (double sse : aux_sse) aux_total += sse;
  report.auxk = config_.auxk_coefficient * (aux_total / static_cast<double>(B)) / denominator;

  DeviceArray<float> d_aux(backend_, static_cast<std::size_t>(aux_codes.nnz));
  be.decoder_backward(aux_codes, grad_aux.data(), p.decoder_weight.data(), D, d_aux.data(),
                      gradients_.decoder_weight.data());
  std::vector<float> d_aux_host = d_aux.download();
  zero_where_inactive(d_aux_host, aux_codes.value.download());
  d_aux.upload(d_aux_host);
  be.encoder_backward(aux_codes, d_aux.data(), batch.xn.data(), D, gradients_.encoder_weight.data(),
                      gradients_.encoder_bias.data());
}

void Trainer::apply_update(StepReport& report) {
  const CrosscoderConfig& c = model_.config();
  Backend& be = *backend_;
  CrosscoderParameters& p = model_.parameters();
  const std::int64_t D = c.input_width();
  const std::int64_t F = c.latents;

  // Dedicated-feature partitions: an exclusive latent never receives gradient for the sources
  // it does not own, so those weights (zero at initialisation) stay exactly zero.
  for (int f = c.shared_latents(); f < c.latents; ++f) {
    for (int m = 0; m < c.sources; ++m) {
      if (c.latent_uses_source(f, m)) continue;
      const std::size_t offset =
          static_cast<std::size_t>(f) * D + static_cast<std::size_t>(m) * c.width;
      be.fill_zero(gradients_.encoder_weight.data() + offset, c.width * sizeof(float));
      be.fill_zero(gradients_.decoder_weight.data() + offset, c.width * sizeof(float));
    }
  }
  const bool unit_decoder =
      c.activation == Activation::topk || c.activation == Activation::batchtopk;
  if (unit_decoder)
    be.constrain_decoder(p.decoder_weight.data(), gradients_.decoder_weight.data(), F, D);

  double squared_norm = 0.0;
  const auto parameter_slots = slots(p, gradients_);
  for (const ParameterSlot& slot : parameter_slots) {
    squared_norm +=
        be.sum_of_squares(slot.gradient->data(), static_cast<std::int64_t>(slot.gradient->size()));
  }
  report.gradient_norm = std::sqrt(squared_norm);
  if (!std::isfinite(report.gradient_norm)) {
    throw Error(
        fmt::format("training step {}: the gradient became non-finite (loss {}); the model "
                    "was left as it was before this step",
                    report.step, report.loss));
  }
  AdamStep adam;
  adam.learning_rate = learning_rate_at(report.step);
  adam.beta1 = config_.beta1;
  adam.beta2 = config_.beta2;
  adam.epsilon = config_.epsilon;
  adam.step = report.step;
  if (config_.gradient_clip > 0.0f && report.gradient_norm > config_.gradient_clip) {
    adam.gradient_scale = static_cast<float>(config_.gradient_clip / report.gradient_norm);
  }
  report.learning_rate = adam.learning_rate;
  for (std::size_t i = 0; i < parameter_slots.size(); ++i) {
    // TopK/BatchTopK decoder rows return to unit norm in the same pass as their update.
    const bool decoder = parameter_slots[i].parameter == &p.decoder_weight;
    adam.unit_norm_rows = unit_decoder && decoder ? D : 0;
    be.adam_update(parameter_slots[i].parameter->data(), parameter_slots[i].gradient->data(),
                   moments_[i].m.data(), moments_[i].v.data(),
                   static_cast<std::int64_t>(parameter_slots[i].parameter->size()), adam);
  }
  if (!p.threshold.empty()) be.clamp_min(p.threshold.data(), F, 0.0f);

  // BatchTopK's inference threshold: EMA of the smallest selected weighted activation.
  if (c.activation == Activation::batchtopk && last_min_selected_score_ > 0.0f) {
    const float previous = model_.batch_threshold();
    model_.set_batch_threshold(previous < 0.0f ? last_min_selected_score_
                                               : config_.threshold_momentum * previous +
                                                     (1.0f - config_.threshold_momentum) *
                                                         last_min_selected_score_);
  }
  step_ = report.step;
}

StepReport Trainer::step(std::span<const float> x, std::int64_t rows) {
  StepReport report = forward_backward(x, rows);
  if (!std::isfinite(report.loss)) {
    throw Error(
        fmt::format("training step {}: the loss became non-finite ({}); the model was left "
                    "as it was before this step",
                    report.step, report.loss));
  }
  apply_update(report);
  for (std::size_t f = 0; f < tokens_since_fired_.size(); ++f) {
    tokens_since_fired_[f] = fired_this_step_[f] > 0 ? 0 : tokens_since_fired_[f] + rows;
  }
  return report;
}

}  // namespace crosscoder
