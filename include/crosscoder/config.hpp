#pragma once
/// @file config.hpp
/// The architecture of a crosscoder: sources, widths, latents, activation, partitions.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace crosscoder {

/// The sparse activation function.
enum class Activation {
  relu,       ///< ReLU, with an L1 penalty weighted by Σ_m ‖W_dec[f, m]‖ (Anthropic 2024)
  topk,       ///< the k largest ReLU activations of each row (Gao et al. 2024)
  batchtopk,  ///< the B·k largest decoder-norm-weighted activations of a batch; a learnt
              ///< threshold replaces the batch selection at inference (Bussmann et al. 2024)
  jumprelu,   ///< pre·H(pre − θ_f) with per-latent thresholds trained by a straight-through
              ///< estimator (Rajamanoharan et al. 2024)
};

/// "relu", "topk", "batchtopk" or "jumprelu".
std::string_view to_string(Activation activation) noexcept;
/// Parses "relu", "topk", "batchtopk" or "jumprelu"; throws Error naming the text otherwise.
Activation parse_activation(std::string_view text);

/// How raw activations are normalised before encoding (and un-normalised after decoding).
enum class Normalisation {
  none,            ///< raw activations are used as they are
  scalar,          ///< x·s_m with s_m chosen so that E‖x_m‖² = d (default)
  mean_and_scale,  ///< (x − μ_m)·s_m with s_m chosen so that E‖x_m − μ_m‖² = d
};

/// "none", "scalar" or "mean_and_scale".
std::string_view to_string(Normalisation normalisation) noexcept;
/// Parses "none", "scalar" or "mean_and_scale"; throws Error naming the text otherwise.
Normalisation parse_normalisation(std::string_view text);

/// Shape and variant of a crosscoder. Latents are laid out as one block of shared latents
/// followed by one block per source of latents exclusive to it (dedicated-feature partitions,
/// arXiv 2606.26474): an exclusive latent's encoder and decoder weights for every other
/// source are exactly zero, always.
struct CrosscoderConfig {
  int sources = 2;  ///< M: models (model diffing) or layers (cross-layer crosscoder)
  int width = 0;    ///< d: activation width of each source
  int latents = 0;  ///< F: dictionary size, shared and exclusive together
  Activation activation = Activation::batchtopk;
  int k = 32;                  ///< active latents per row (topk, batchtopk); ignored otherwise
  std::vector<int> exclusive;  ///< latents exclusive to each source; empty = all shared
  Normalisation normalisation = Normalisation::scalar;
  float jumprelu_initial_threshold = 0.001f;  ///< θ at initialisation (normalised units)
  float jumprelu_bandwidth = 0.001f;          ///< ε of the rectangle kernel in the STE

  /// D = M·d, the width of one concatenated input row.
  std::int64_t input_width() const noexcept { return static_cast<std::int64_t>(sources) * width; }
  /// Latents shared by all sources: F − Σ exclusive.
  int shared_latents() const noexcept;
  /// First latent of source m's exclusive block.
  int exclusive_begin(int source) const noexcept;
  /// Whether latent f may have non-zero weights for source m.
  bool latent_uses_source(int latent, int source) const noexcept;
  /// -1 for a shared latent, else the source it is exclusive to.
  int exclusive_owner(int latent) const noexcept;

  /// Throws Error naming the field when the configuration is inconsistent
  /// (k = 0 or k ≥ F for TopK variants, exclusive blocks larger than F, ...).
  void validate() const;

  /// JSON text with every field (the checkpoint's `config`).
  std::string to_json() const;
  /// Parses to_json()'s output; throws Error naming the missing or bad field.
  static CrosscoderConfig from_json(std::string_view json);
};

}  // namespace crosscoder
