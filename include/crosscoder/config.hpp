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
  per_channel,     ///< (x_{m,i} − μ_{m,i})/σ_{m,i}: a z-score per channel (σ the unbiased
                   ///< standard deviation, at least 1e-6), as the study's activation cache
                   ///< normalises (arXiv 2606.26474's cache.py)
};

/// "none", "scalar", "mean_and_scale" or "per_channel".
std::string_view to_string(Normalisation normalisation) noexcept;
/// Parses "none", "scalar", "mean_and_scale" or "per_channel"; throws Error naming the text
/// otherwise.
Normalisation parse_normalisation(std::string_view text);

/// Shape and variant of a crosscoder. Latents are laid out as one block of shared latents
/// followed by one block per model of latents exclusive to it (dedicated-feature partitions,
/// arXiv 2606.26474): an exclusive latent's encoder and decoder weights for every source of
/// another model are exactly zero, always. A model is one source, unless `source_models` groups
/// several sources into one model (a crosscoder across layers: sources are (model, block)
/// pairs, and a latent exclusive to a model spans all its blocks).
struct CrosscoderConfig {
  int sources = 2;  ///< M: models (model diffing) or layers (cross-layer crosscoder)
  int width = 0;    ///< d: activation width of each source
  int latents = 0;  ///< F: dictionary size, shared and exclusive together
  Activation activation = Activation::batchtopk;
  int k = 32;                  ///< active latents per row (topk, batchtopk); ignored otherwise
  std::vector<int> exclusive;  ///< latents exclusive to each model; empty = all shared
  /// The model of each source, [M], numbered 0 … models() − 1 (each used); empty: source m is
  /// model m. E.g. {0, 0, 0, 1, 1, 1}: two models, three blocks each.
  std::vector<int> source_models;
  Normalisation normalisation = Normalisation::scalar;
  /// Matryoshka (nested) dictionary, TopK and BatchTopK only: the sizes of consecutive groups of
  /// latents, summing to `latents`; prefix i (groups 0 … i) must reconstruct on its own
  /// (docs/training.md). Empty: an ordinary dictionary. Inference is unchanged.
  std::vector<int> matryoshka_groups;  // (a group may be empty: a latent shard's share of one)
  float jumprelu_initial_threshold = 0.001f;  ///< θ at initialisation (normalised units)
  float jumprelu_bandwidth = 0.001f;          ///< ε of the rectangle kernel in the STE

  /// D = M·d, the width of one concatenated input row.
  std::int64_t input_width() const noexcept { return static_cast<std::int64_t>(sources) * width; }
  /// Latents shared by all sources: F − Σ exclusive.
  int shared_latents() const noexcept;
  /// Whether latent f may have non-zero weights for source m.
  bool latent_uses_source(int latent, int source) const noexcept;
  /// -1 for a shared latent, else the model it is exclusive to.
  int exclusive_owner(int latent) const noexcept;
  /// The number of models: sources, or the models `source_models` names.
  int models() const noexcept;
  /// The model source m belongs to.
  int model_of(int source) const noexcept;
  /// The end (one past the last latent) of each Matryoshka prefix, [groups]; empty when the
  /// dictionary is not nested.
  std::vector<int> matryoshka_prefix_ends() const;

  /// Throws Error naming the field when the configuration is inconsistent
  /// (k = 0 or k ≥ F for TopK variants, exclusive blocks larger than F, ...).
  void validate() const;

  /// JSON text with every field (the checkpoint's `config`).
  std::string to_json() const;
  /// Parses to_json()'s output; throws Error naming the missing or bad field.
  static CrosscoderConfig from_json(std::string_view json);
};

}  // namespace crosscoder
