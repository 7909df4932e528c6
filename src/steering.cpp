#include "crosscoder/steering.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "crosscoder/backend_ops.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/sparse_codes.hpp"
#include "enum_names.hpp"

namespace crosscoder {

namespace {

constexpr detail::EnumName<InterventionKind> kInterventionNames[] = {
    {InterventionKind::add, "add"},
    {InterventionKind::scale, "scale"},
    {InterventionKind::clamp, "clamp"},
    {InterventionKind::project_out, "project_out"}};

}  // namespace

std::string_view to_string(InterventionKind kind) noexcept {
  return detail::enum_name(kInterventionNames, kind);
}

InterventionKind parse_intervention_kind(std::string_view name) {
  return detail::parse_enum(kInterventionNames, name, "intervention");
}

namespace {

bool needs_activation(InterventionKind kind) {
  return kind == InterventionKind::scale || kind == InterventionKind::clamp;
}

}  // namespace

Steerer::Steerer(const Crosscoder& model, int source, std::vector<Intervention> interventions,
                 PositionFilter positions)
    : model_(model),
      source_(source),
      interventions_(std::move(interventions)),
      positions_(std::move(positions)) {
  const CrosscoderConfig& c = model.config();
  if (source < 0 || source >= c.sources) {
    throw Error(fmt::format("steering: source {} out of range [0, {})", source, c.sources));
  }
  direction_slot_.assign(static_cast<std::size_t>(c.latents), -1);
  std::vector<int> used;
  for (std::size_t i = 0; i < interventions_.size(); ++i) {
    const Intervention& intervention = interventions_[i];
    if (intervention.latent < 0 || intervention.latent >= c.latents) {
      throw Error(
          fmt::format("steering: intervention {} ({}) names latent {}, out of range [0, {})", i,
                      to_string(intervention.kind), intervention.latent, c.latents));
    }
    if (!std::isfinite(intervention.strength)) {
      throw Error(fmt::format("steering: intervention {} ({} on latent {}) has strength {}", i,
                              to_string(intervention.kind), intervention.latent,
                              intervention.strength));
    }
    if (intervention.in_max_activation_units && intervention.kind != InterventionKind::add) {
      throw Error(
          fmt::format("steering: intervention {}: max-activation units apply to add only", i));
    }
    if (direction_slot_[intervention.latent] < 0) {
      direction_slot_[intervention.latent] = static_cast<int>(used.size());
      used.push_back(intervention.latent);
    }
    if (needs_activation(intervention.kind) &&
        std::find(encoded_latents_.begin(), encoded_latents_.end(), intervention.latent) ==
            encoded_latents_.end()) {
      encoded_latents_.push_back(intervention.latent);
    }
  }
  for (std::int64_t p : positions_.positions) {
    if (p < 0) throw Error(fmt::format("steering: position {} is negative", p));
  }

  // Host copies of just what the interventions need: directions, and encoder rows for f_j.
  const int d = c.width;
  const std::int64_t D = c.input_width();
  const std::vector<float> raw_decoder = model.raw_decoder_vectors();  // [F, M·d]
  directions_.resize(used.size() * static_cast<std::size_t>(d));
  for (std::size_t u = 0; u < used.size(); ++u) {
    std::copy_n(raw_decoder.begin() + used[u] * D + static_cast<std::int64_t>(source) * d, d,
                directions_.begin() + static_cast<std::ptrdiff_t>(u) * d);
  }
  if (encoded_latents_.empty()) return;
  DeviceArray<float> score_weights;
  const Selection selection =
      model.selection_request(c.k, /*training=*/false, score_weights).selection;
  needs_selection_ =
      selection == Selection::per_row_top_k || selection == Selection::per_batch_top_k;
  const std::vector<float> encoder = model.parameters().encoder_weight.download();  // [F, M·d]
  const std::vector<float> bias = model.parameters().encoder_bias.download();
  const std::vector<float> threshold = model.parameters().threshold.size() > 0
                                           ? model.parameters().threshold.download()
                                           : std::vector<float>{};
  const std::vector<float> norms = model.decoder_norms();  // [F, M]
  for (int latent : encoded_latents_) {
    encoder_rows_.insert(encoder_rows_.end(), encoder.begin() + latent * D,
                         encoder.begin() + (latent + 1) * D);
    encoder_bias_.push_back(bias[static_cast<std::size_t>(latent)]);
    jump_threshold_.push_back(threshold.empty() ? 0.0f
                                                : threshold[static_cast<std::size_t>(latent)]);
    float weight = 0.0f;
    for (int m = 0; m < c.sources; ++m)
      weight += norms[static_cast<std::size_t>(latent * c.sources + m)];
    score_weight_.push_back(weight);
  }
}

void Steerer::set_max_activations(std::span<const double> max_activation) {
  const CrosscoderConfig& c = model_.config();
  if (static_cast<std::int64_t>(max_activation.size()) != c.latents) {
    throw Error(fmt::format("steering: {} maximum activations for {} latents",
                            max_activation.size(), c.latents));
  }
  for (const Intervention& intervention : interventions_) {
    const double value = max_activation[static_cast<std::size_t>(intervention.latent)];
    if (intervention.in_max_activation_units && !(value > 0.0 && std::isfinite(value))) {
      throw Error(
          fmt::format("steering: latent {} has maximum activation {}; strengths in "
                      "max-activation units need a positive one",
                      intervention.latent, value));
    }
  }
  max_activation_.assign(max_activation.begin(), max_activation.end());
}

std::span<const float> Steerer::direction(int latent) const {
  if (latent < 0 || latent >= static_cast<int>(direction_slot_.size()) ||
      direction_slot_[latent] < 0)
    throw Error(fmt::format("steering: latent {} is not one this steerer uses", latent));
  const int d = model_.config().width;
  return {directions_.data() + static_cast<std::ptrdiff_t>(direction_slot_[latent]) * d,
          static_cast<std::size_t>(d)};
}

bool Steerer::selected(const RowInfo& info) const { return position_selected(positions_, info); }

std::vector<float> Steerer::activations_elementwise(const float* rows, int n_rows,
                                                    std::span<const float> paired) const {
  const CrosscoderConfig& c = model_.config();
  const int d = c.width, M = c.sources;
  const std::int64_t D = c.input_width();
  const Normaliser& normaliser = model_.normaliser();
  const std::vector<float> scales = normaliser.column_scales(M, d);
  DeviceArray<float> unused;
  const SelectionRequest request = model_.selection_request(c.k, false, unused);
  const std::size_t L = encoded_latents_.size();
  std::vector<float> out(static_cast<std::size_t>(n_rows) * L);
  std::vector<double> normalised(static_cast<std::size_t>(D));
  for (int r = 0; r < n_rows; ++r) {
    // x̃_m = s_m·(x_m − μ_m); other sources are 0 unless paired rows were given.
    std::fill(normalised.begin(), normalised.end(), 0.0);
    for (int m = 0; m < M; ++m) {
      if (m != source_ && paired.empty()) continue;
      const float* x = m == source_ ? rows + static_cast<std::ptrdiff_t>(r) * d
                                    : paired.data() + static_cast<std::ptrdiff_t>(r) * D + m * d;
      for (int i = 0; i < d; ++i) {
        normalised[static_cast<std::size_t>(m * d + i)] =
            static_cast<double>(scales[m * d + i]) * (x[i] - normaliser.mean[m * d + i]);
      }
    }
    for (std::size_t l = 0; l < L; ++l) {
      double pre = encoder_bias_[l];
      const float* w = encoder_rows_.data() + l * static_cast<std::size_t>(D);
      for (std::int64_t j = 0; j < D; ++j) pre += w[j] * normalised[static_cast<std::size_t>(j)];
      const auto p = static_cast<float>(pre);
      float value = 0.0f;
      switch (request.selection) {
        case Selection::positive:
          value = p > 0.0f ? p : 0.0f;
          break;
        case Selection::batch_threshold: {
          const float positive = std::max(p, 0.0f);
          value = positive * score_weight_[l] > request.scalar_threshold ? positive : 0.0f;
          break;
        }
        case Selection::jump_threshold:
          value = p > jump_threshold_[l] ? p : 0.0f;
          break;
        default:
          throw Error("steering: internal: elementwise activation for a selection mode");
      }
      out[static_cast<std::size_t>(r) * L + l] = value;
    }
  }
  return out;
}

std::vector<float> Steerer::activations_with_selection(const float* rows, int n_rows,
                                                       std::span<const float> paired) const {
  const CrosscoderConfig& c = model_.config();
  const int d = c.width, M = c.sources;
  const std::int64_t D = c.input_width();
  // Raw rows for every source: the other sources as given, or as their mean (x̃ = 0).
  std::vector<float> full(static_cast<std::size_t>(n_rows * D));
  for (int r = 0; r < n_rows; ++r) {
    for (int m = 0; m < M; ++m) {
      float* out = full.data() + static_cast<std::ptrdiff_t>(r) * D + m * d;
      if (m == source_) {
        std::copy_n(rows + static_cast<std::ptrdiff_t>(r) * d, d, out);
      } else if (!paired.empty()) {
        std::copy_n(paired.data() + static_cast<std::ptrdiff_t>(r) * D + m * d, d, out);
      } else {
        std::copy_n(model_.normaliser().mean.begin() + m * d, d, out);
      }
    }
  }
  const HostSparseCodes codes = model_.encode(full, n_rows);  // on the model's backend
  const std::size_t L = encoded_latents_.size();
  std::vector<float> out(static_cast<std::size_t>(n_rows) * L, 0.0f);
  for (int r = 0; r < n_rows; ++r) {
    for (std::int64_t e = codes.row_ptr[r]; e < codes.row_ptr[r + 1]; ++e) {
      const auto it = std::find(encoded_latents_.begin(), encoded_latents_.end(), codes.latent[e]);
      if (it != encoded_latents_.end())
        out[static_cast<std::size_t>(r) * L +
            static_cast<std::size_t>(it - encoded_latents_.begin())] = codes.value[e];
    }
  }
  return out;
}

std::vector<float> Steerer::activations(const float* rows, int n_rows,
                                        std::span<const float> paired) const {
  if (encoded_latents_.empty() || n_rows == 0) return {};
  return needs_selection_ ? activations_with_selection(rows, n_rows, paired)
                          : activations_elementwise(rows, n_rows, paired);
}

void Steerer::steer(float* rows, int n_rows, int d, const RowInfo* info,
                    std::span<const float> paired) {
  const CrosscoderConfig& c = model_.config();
  // Validate everything before touching a value: a failed call leaves the rows as they were.
  if (d != c.width) {
    throw Error(
        fmt::format("steering: rows of width {} but the crosscoder's width is {}", d, c.width));
  }
  if (n_rows < 0) throw Error(fmt::format("steering: {} rows", n_rows));
  if (n_rows > 0 && (rows == nullptr || info == nullptr)) {
    throw Error("steering: null rows or row info");
  }
  if (!paired.empty() && static_cast<std::int64_t>(paired.size()) !=
                             static_cast<std::int64_t>(n_rows) * c.input_width()) {
    throw Error(fmt::format("steering: paired activations hold {} values, not {} rows × {}",
                            paired.size(), n_rows, c.input_width()));
  }
  for (const Intervention& intervention : interventions_) {
    if (intervention.in_max_activation_units && max_activation_.empty()) {
      throw Error(
          fmt::format("steering: latent {}: strength in max-activation units but no "
                      "maximum activations were set",
                      intervention.latent));
    }
  }
  if (positions_.once && fired_) return;
  std::vector<int> chosen;
  for (int r = 0; r < n_rows; ++r) {
    if (!selected(info[r])) continue;
    for (int i = 0; i < d; ++i) {
      if (!std::isfinite(rows[static_cast<std::ptrdiff_t>(r) * d + i])) {
        throw Error(fmt::format("steering: row {} (position {}) holds {} at index {}", r,
                                info[r].position, rows[static_cast<std::ptrdiff_t>(r) * d + i], i));
      }
    }
    chosen.push_back(r);
  }
  if (chosen.empty()) return;
  // f_j from the unmodified rows (only the chosen ones are encoded).
  std::vector<float> compact(chosen.size() * static_cast<std::size_t>(d));
  std::vector<float> compact_paired(
      paired.empty() ? 0 : chosen.size() * static_cast<std::size_t>(c.input_width()));
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    std::copy_n(rows + static_cast<std::ptrdiff_t>(chosen[i]) * d, d,
                compact.begin() + static_cast<std::ptrdiff_t>(i) * d);
    if (!paired.empty())
      std::copy_n(paired.begin() + static_cast<std::ptrdiff_t>(chosen[i]) * c.input_width(),
                  c.input_width(),
                  compact_paired.begin() + static_cast<std::ptrdiff_t>(i) * c.input_width());
  }
  const std::vector<float> f =
      activations(compact.data(), static_cast<int>(chosen.size()), compact_paired);
  const std::size_t L = encoded_latents_.size();
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    float* x = rows + static_cast<std::ptrdiff_t>(chosen[i]) * d;
    for (const Intervention& intervention : interventions_) {
      const std::span<const float> direction = this->direction(intervention.latent);
      double coefficient = 0.0;
      if (needs_activation(intervention.kind)) {
        const auto slot = static_cast<std::size_t>(
            std::find(encoded_latents_.begin(), encoded_latents_.end(), intervention.latent) -
            encoded_latents_.begin());
        const double activation = f[i * L + slot];
        coefficient = intervention.kind == InterventionKind::scale
                          ? (intervention.strength - 1.0) * activation
                          : intervention.strength - activation;
      } else if (intervention.kind == InterventionKind::add) {
        coefficient = intervention.strength;
        if (intervention.in_max_activation_units)
          coefficient *= max_activation_[static_cast<std::size_t>(intervention.latent)];
      } else {  // project_out
        double dot = 0.0, norm = 0.0;
        for (int k = 0; k < d; ++k) {
          dot += static_cast<double>(x[k]) * direction[k];
          norm += static_cast<double>(direction[k]) * direction[k];
        }
        coefficient = norm > 0.0 ? -dot / norm : 0.0;
      }
      if (coefficient == 0.0) continue;
      for (int k = 0; k < d; ++k) x[k] = static_cast<float>(x[k] + coefficient * direction[k]);
    }
  }
  fired_ = true;
}

void Steerer::apply(float* rows, int n_rows, int d, const RowInfo* info) {
  steer(rows, n_rows, d, info, {});
}

void Steerer::apply_paired(float* rows, int n_rows, int d, const RowInfo* info,
                           std::span<const float> paired) {
  if (paired.empty() && n_rows > 0) throw Error("steering: apply_paired without paired rows");
  steer(rows, n_rows, d, info, paired);
}

ActivationHook Steerer::hook(int layer) {
  return [this, layer](int at_layer, float* rows, int n_rows, int d, const RowInfo* info) {
    if (at_layer == layer) apply(rows, n_rows, d, info);
  };
}

ActivationHook Steerer::paired_hook(int layer, PairedRows other_rows) {
  if (!other_rows) throw Error("steering: paired_hook without a source of paired rows");
  return [this, layer, other_rows = std::move(other_rows)](int at_layer, float* rows, int n_rows,
                                                           int d, const RowInfo* info) {
    if (at_layer != layer || n_rows == 0) return;
    std::vector<float> paired(static_cast<std::size_t>(n_rows) *
                              static_cast<std::size_t>(model_.config().input_width()));
    other_rows(info, n_rows, d, paired);
    apply_paired(rows, n_rows, d, info, paired);
  };
}

}  // namespace crosscoder
