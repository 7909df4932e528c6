#include "crosscoder/splice.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "crosscoder/error.hpp"
#include "enum_names.hpp"

namespace crosscoder {

namespace {

constexpr detail::EnumName<SpliceKind> kSpliceNames[] = {
    {SpliceKind::reconstruction, "reconstruction"},
    {SpliceKind::reconstruction_plus_error, "reconstruction_plus_error"},
    {SpliceKind::zero, "zero"},
    {SpliceKind::mean, "mean"},
    {SpliceKind::add_latents_of, "add_latents_of"},
    {SpliceKind::decoder_of, "decoder_of"}};

bool uses_other_source(SpliceKind kind) {
  return kind == SpliceKind::add_latents_of || kind == SpliceKind::decoder_of;
}

bool needs_encoding(SpliceKind kind) {
  return kind != SpliceKind::zero && kind != SpliceKind::mean;
}

}  // namespace

std::string_view to_string(SpliceKind kind) noexcept {
  return detail::enum_name(kSpliceNames, kind);
}

SpliceKind parse_splice_kind(std::string_view text) {
  return detail::parse_enum(kSpliceNames, text, "splice kind");
}

Splicer::Splicer(const Crosscoder& model, int source, SpliceOptions options)
    : model_(model), source_(source), options_(std::move(options)) {
  const CrosscoderConfig& c = model.config();
  if (source < 0 || source >= c.sources) {
    throw Error(fmt::format("splice: source {} out of range [0, {})", source, c.sources));
  }
  const int d = c.width;
  if (options_.kind == SpliceKind::mean) {
    if (options_.mean.size() != static_cast<std::size_t>(d)) {
      throw Error(fmt::format("splice: mean ablation needs a mean of {} values (the width), got {}",
                              d, options_.mean.size()));
    }
    for (std::size_t i = 0; i < options_.mean.size(); ++i) {
      if (!std::isfinite(options_.mean[i]))
        throw Error(fmt::format("splice: mean[{}] is {}", i, options_.mean[i]));
    }
  }
  column_scales_ = model.normaliser().column_scales(c.sources, d);
  if (!uses_other_source(options_.kind)) return;
  const int other = options_.other_source;
  if (other < 0 || other >= c.sources || other == source) {
    throw Error(fmt::format("splice: {} needs another source in [0, {}) besides {}, got {}",
                            to_string(options_.kind), c.sources, source, other));
  }
  if (options_.latents.empty()) {
    for (int j = 0; j < c.latents; ++j) {
      const int owner = c.exclusive_owner(j);
      if (options_.kind == SpliceKind::add_latents_of ? owner == c.model_of(other) : owner < 0)
        options_.latents.push_back(j);
    }
    if (options_.latents.empty()) {
      throw Error(fmt::format(
          "splice: {} of source {}: the crosscoder has no {} latents; list the latents (e.g. "
          "those `crosscoder diff` classes as exclusive:{})",
          to_string(options_.kind), other,
          options_.kind == SpliceKind::add_latents_of ? "dedicated" : "shared", other));
    }
  }
  for (const int j : options_.latents) {
    if (j < 0 || j >= c.latents)
      throw Error(fmt::format("splice: latent {} out of range [0, {})", j, c.latents));
  }
  // The raw decoder directions of L for this source and for B: the only decoder rows a splice
  // needs beyond the reconstruction.
  const std::vector<float> raw = model.raw_decoder_vectors();
  const std::int64_t D = c.input_width();
  for (const int j : options_.latents) {
    const auto row = raw.begin() + static_cast<std::ptrdiff_t>(j * D);
    own_directions_.insert(own_directions_.end(), row + source * d, row + (source + 1) * d);
    other_directions_.insert(other_directions_.end(), row + other * d, row + (other + 1) * d);
  }
}

void Splicer::splice(float* rows, int n_rows, int d, const RowInfo* info,
                     std::span<const float> paired) {
  const CrosscoderConfig& c = model_.config();
  const int M = c.sources, s = source_;
  const std::int64_t D = c.input_width();
  if (d != c.width) {
    throw Error(fmt::format("splice: rows of width {}, the crosscoder's is {}", d, c.width));
  }
  if (n_rows < 0) throw Error(fmt::format("splice: {} rows", n_rows));
  if (n_rows > 0 && info == nullptr) throw Error("splice: no RowInfo for the rows");
  if (!paired.empty() &&
      static_cast<std::int64_t>(paired.size()) != static_cast<std::int64_t>(n_rows) * D) {
    throw Error(fmt::format("splice: paired activations hold {} values, not {} rows × {}",
                            paired.size(), n_rows, D));
  }
  std::vector<int> chosen;
  for (int r = 0; r < n_rows; ++r) {
    if (!position_selected(options_.positions, info[r])) continue;
    for (int i = 0; i < d; ++i) {
      const float value = rows[static_cast<std::ptrdiff_t>(r) * d + i];
      if (!std::isfinite(value)) {
        throw Error(fmt::format("splice: row {} (position {}) holds {} at index {}", r,
                                info[r].position, value, i));
      }
    }
    if (!paired.empty()) {
      for (std::int64_t j = 0; j < D; ++j) {
        if (j / d == s) continue;
        const float value = paired[static_cast<std::size_t>(r * D + j)];
        if (!std::isfinite(value))
          throw Error(fmt::format("splice: paired row {} holds {} at column {}", r, value, j));
      }
    }
    chosen.push_back(r);
  }
  if (chosen.empty()) return;
  if (!needs_encoding(options_.kind)) {
    for (const int r : chosen) {
      float* x = rows + static_cast<std::ptrdiff_t>(r) * d;
      if (options_.kind == SpliceKind::zero)
        std::fill_n(x, d, 0.0f);
      else
        std::copy(options_.mean.begin(), options_.mean.end(), x);
    }
    return;
  }
  // The chosen rows as the crosscoder's input: this source's rows, the others paired or at
  // their mean (raw μ_m, zero after normalisation).
  const Normaliser& normaliser = model_.normaliser();
  const auto n = static_cast<std::int64_t>(chosen.size());
  std::vector<float> input(static_cast<std::size_t>(n * D));
  for (std::int64_t i = 0; i < n; ++i) {
    const int r = chosen[static_cast<std::size_t>(i)];
    for (int m = 0; m < M; ++m) {
      const float* from = m == s           ? rows + static_cast<std::ptrdiff_t>(r) * d
                          : paired.empty() ? normaliser.mean.data() + m * d
                                           : paired.data() + r * D + m * d;
      std::copy_n(from, d, input.begin() + i * D + m * d);
    }
  }
  const Crosscoder::Inference inference = model_.infer(input, n);
  const std::vector<int>& latents = options_.latents;
  std::vector<float> f(latents.size());
  for (std::int64_t i = 0; i < n; ++i) {
    float* x = rows + static_cast<std::ptrdiff_t>(chosen[static_cast<std::size_t>(i)]) * d;
    // x̂_s in raw units.
    std::vector<double> value(static_cast<std::size_t>(d));
    for (int k = 0; k < d; ++k) {
      const std::size_t column = static_cast<std::size_t>(s * d + k);
      value[k] = static_cast<double>(inference.normalised_reconstruction[i * D + s * d + k]) /
                     column_scales_[column] +
                 normaliser.mean[column];
    }
    if (uses_other_source(options_.kind)) {
      // f_j for the listed latents, from the row's sparse codes.
      std::fill(f.begin(), f.end(), 0.0f);
      for (std::int64_t e = inference.codes.row_ptr[i]; e < inference.codes.row_ptr[i + 1]; ++e) {
        const auto at = std::find(latents.begin(), latents.end(), inference.codes.latent[e]);
        if (at != latents.end())
          f[static_cast<std::size_t>(at - latents.begin())] = inference.codes.value[e];
      }
    }
    switch (options_.kind) {
      case SpliceKind::reconstruction:
        break;
      case SpliceKind::reconstruction_plus_error:
        for (int k = 0; k < d; ++k) value[k] += static_cast<double>(x[k]) - value[k];
        break;
      case SpliceKind::add_latents_of:
        for (int k = 0; k < d; ++k) value[k] = x[k];
        [[fallthrough]];
      case SpliceKind::decoder_of:
        for (std::size_t l = 0; l < latents.size(); ++l) {
          if (f[l] == 0.0f) continue;
          const float* own = own_directions_.data() + l * static_cast<std::size_t>(d);
          const float* other = other_directions_.data() + l * static_cast<std::size_t>(d);
          for (int k = 0; k < d; ++k) {
            if (options_.kind == SpliceKind::decoder_of)
              value[k] -= static_cast<double>(f[l]) * own[k];
            value[k] += static_cast<double>(f[l]) * other[k];
          }
        }
        break;
      case SpliceKind::zero:
      case SpliceKind::mean:
        break;  // handled above
    }
    for (int k = 0; k < d; ++k) x[k] = static_cast<float>(value[k]);
  }
}

void Splicer::apply(float* rows, int n_rows, int d, const RowInfo* info) {
  if (options_.kind == SpliceKind::add_latents_of) throw_needs_pair();
  splice(rows, n_rows, d, info, {});
}

void Splicer::throw_needs_pair() const {
  throw Error(fmt::format(
      "splice: add_latents_of source {} needs that source's rows (apply_paired or the paired "
      "hook): its latents read only its activations, so at the mean they would add a constant",
      options_.other_source));
}

void Splicer::apply_paired(float* rows, int n_rows, int d, const RowInfo* info,
                           std::span<const float> paired) {
  if (paired.empty() && n_rows > 0) throw Error("splice: apply_paired without paired rows");
  splice(rows, n_rows, d, info, paired);
}

ActivationHook Splicer::hook(int layer) {
  if (options_.kind == SpliceKind::add_latents_of) throw_needs_pair();
  return [this, layer](int at_layer, float* rows, int n_rows, int d, const RowInfo* info) {
    if (at_layer == layer) apply(rows, n_rows, d, info);
  };
}

ActivationHook Splicer::hook(int layer, PairedRows paired) {
  if (!paired) throw Error("splice: a paired hook needs a PairedRows function");
  return [this, layer, paired = std::move(paired)](int at_layer, float* rows, int n_rows, int d,
                                                   const RowInfo* info) {
    if (at_layer == layer) apply_paired(rows, n_rows, d, info, paired(layer, n_rows, info));
  };
}

}  // namespace crosscoder
