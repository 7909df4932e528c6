#include "crosscoder/latent_scaling.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "crosscoder/error.hpp"
#include "crosscoder/sparse_codes.hpp"
#include "validation.hpp"

namespace crosscoder {

LatentScalingAccumulator::LatentScalingAccumulator(const Crosscoder& model,
                                                   std::vector<std::int32_t> latents,
                                                   std::vector<int> reference_source)
    : model_(model), latents_(std::move(latents)), reference_(std::move(reference_source)) {
  const CrosscoderConfig& c = model.config();
  const auto L = latents_.size();
  const auto M = static_cast<std::size_t>(c.sources);
  if (!reference_.empty() && reference_.size() != L) {
    throw Error(
        fmt::format("latent scaling: {} reference sources for {} latents", reference_.size(), L));
  }
  const std::vector<float> norms = model.decoder_norms();
  slot_of_latent_.assign(static_cast<std::size_t>(c.latents), -1);
  for (std::size_t i = 0; i < L; ++i) {
    const std::int32_t f = latents_[i];
    if (f < 0 || f >= c.latents)
      throw Error(fmt::format("latent scaling: latent {} out of range [0, {})", f, c.latents));
    if (slot_of_latent_[f] >= 0)
      throw Error(fmt::format("latent scaling: latent {} listed twice", f));
    slot_of_latent_[f] = static_cast<std::int32_t>(i);
    if (reference_.size() < L) {
      int best = 0;
      for (int m = 1; m < c.sources; ++m) {
        if (norms[f * M + m] > norms[f * M + best]) best = m;
      }
      reference_.push_back(best);
    } else if (reference_[i] < 0 || reference_[i] >= c.sources) {
      throw Error(fmt::format("latent scaling: reference source {} out of range [0, {})",
                              reference_[i], c.sources));
    }
  }
  // The measured latents' decoder rows, copied once rather than downloaded per batch.
  const std::vector<float> decoder = model.decoder_vectors();
  const std::int64_t D = c.input_width();
  decoder_rows_.resize(L * static_cast<std::size_t>(D));
  for (std::size_t i = 0; i < L; ++i)
    std::copy_n(decoder.begin() + latents_[i] * D, D,
                decoder_rows_.begin() + static_cast<std::ptrdiff_t>(i) * D);
  numerator_error_.assign(L * M, 0.0);
  numerator_reconstruction_.assign(L * M, 0.0);
  activation_squares_.assign(L, 0.0);
  active_rows_.assign(L, 0);
}

void LatentScalingAccumulator::add(std::span<const float> x, std::int64_t rows) {
  add(model_.infer(x, rows));  // infer validates shape and values
}

void LatentScalingAccumulator::add(const Crosscoder::Inference& inference) {
  const CrosscoderConfig& c = model_.config();
  const std::int64_t D = c.input_width();
  const int M = c.sources, d = c.width;
  const std::int64_t rows = inference.rows;
  // Everything in normalised units: x̃, the codes and x̂̃ (with b_dec).
  const HostSparseCodes& host = inference.codes;
  const std::vector<float>& x_n = inference.normalised_input;
  const std::vector<float>& x_hat = inference.normalised_reconstruction;

  for (std::int64_t b = 0; b < rows; ++b) {
    for (std::int64_t e = host.row_ptr[b]; e < host.row_ptr[b + 1]; ++e) {
      const std::int32_t slot = slot_of_latent_[host.latent[e]];
      const double f = host.value[e];
      if (slot < 0 || !(f > 0.0)) continue;
      const float* row_decoder = &decoder_rows_[static_cast<std::size_t>(slot) * D];
      const float* reference = row_decoder + static_cast<std::ptrdiff_t>(reference_[slot]) * d;
      for (int m = 0; m < M; ++m) {
        // ⟨d_{j,s}, y⟩ for both targets: the error with the latent's own contribution added
        // back, and the full reconstruction (the latent's contribution included, as in the
        // reference code; for the reference source that makes β^r near 1, not near 0).
        double error = 0.0, reconstruction = 0.0;
        for (int i = 0; i < d; ++i) {
          const std::int64_t j = b * D + static_cast<std::int64_t>(m) * d + i;
          const double own = f * row_decoder[m * d + i];
          error += reference[i] * (x_n[j] - x_hat[j] + own);
          reconstruction += reference[i] * x_hat[j];
        }
        numerator_error_[slot * M + m] += f * error;
        numerator_reconstruction_[slot * M + m] += f * reconstruction;
      }
      activation_squares_[slot] += f * f;
      ++active_rows_[slot];
    }
  }
}

LatentScaling LatentScalingAccumulator::result() const {
  const CrosscoderConfig& c = model_.config();
  const int M = c.sources, d = c.width;
  const std::int64_t D = c.input_width();
  LatentScaling out;
  out.latents = latents_;
  out.reference_source = reference_;
  out.active_rows = active_rows_;
  const std::size_t L = latents_.size();
  out.beta_error.assign(L * M, 0.0);
  out.beta_reconstruction.assign(L * M, 0.0);
  out.nu_error.assign(L * M, 0.0);
  out.nu_reconstruction.assign(L * M, 0.0);
  for (std::size_t i = 0; i < L; ++i) {
    double squared_norm = 0.0;
    for (int k = 0; k < d; ++k) {
      const double v = decoder_rows_[i * static_cast<std::size_t>(D) +
                                     static_cast<std::size_t>(reference_[i] * d + k)];
      squared_norm += v * v;
    }
    const double denominator = squared_norm * activation_squares_[i];
    for (int m = 0; m < M; ++m) {
      if (denominator > 0.0) {
        out.beta_error[i * M + m] = numerator_error_[i * M + m] / denominator;
        out.beta_reconstruction[i * M + m] = numerator_reconstruction_[i * M + m] / denominator;
      }
    }
    const double error_ref = out.beta_error[i * M + reference_[i]];
    const double reconstruction_ref = out.beta_reconstruction[i * M + reference_[i]];
    for (int m = 0; m < M; ++m) {
      out.nu_error[i * M + m] = error_ref != 0.0 ? out.beta_error[i * M + m] / error_ref : 0.0;
      out.nu_reconstruction[i * M + m] =
          reconstruction_ref != 0.0 ? out.beta_reconstruction[i * M + m] / reconstruction_ref : 0.0;
    }
  }
  return out;
}

}  // namespace crosscoder
