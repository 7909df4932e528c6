#pragma once
/// @file latent_scaling.hpp
/// Latent Scaling (Minder et al. 2025, "Overcoming Sparsity Artifacts in Crosscoders to
/// Interpret Chat-Tuning"): how much of a latent's direction each source's activations really
/// contain, to tell true exclusivity from Complete Shrinkage and Latent Decoupling.

#include <cstdint>
#include <span>
#include <vector>

#include "crosscoder/model.hpp"

namespace crosscoder {

/// For latent j with activation f_j(x) and reference decoder vector d = d_{j,s} (the source s the
/// latent belongs to), in normalised units and over the rows where f_j > 0:
///   β = Σ_x f_j(x)·⟨d, y(x)⟩ / (‖d‖² · Σ_x f_j(x)²),
/// the least-squares scale with which f_j(x)·d explains a target y(x). Targets for each
/// source m, the reference source included (x̂_m includes b_dec):
///   error:          y = x_m − x̂_m + f_j(x)·d_{j,m}  (the reconstruction error with the
///                                                     latent's own contribution added back)
///   reconstruction: y = x̂_m                        (the full reconstruction, the latent's own
///                                                     contribution included)
/// as the reference code computes them (science-of-finetuning/sparsity-artifacts-crosscoders,
/// scripts/compute_scalers.py; diffing-toolkit, latent_scaling/utils.py), and the ratios
/// ν_m = β_m / β_s, so ν_s = 1. β^r_s is 1 plus the other latents' share along d, so ν^r does
/// not divide by a number near zero. For a latent exclusive to the fine-tuned model s, a small
/// ν^ε_base says the base model lacks the direction (true exclusivity) where a large one flags
/// Complete Shrinkage; a large ν^r_base flags Latent Decoupling (other base latents carry it).
/// For a source m whose own decoder vector d_{j,m} is not zero, β^r_m includes the latent's own
/// share ⟨d_{j,m}, d⟩/‖d‖² (the reference code's definition; 0 for a latent exclusive to s).
struct LatentScaling {
  std::vector<std::int32_t> latents;        ///< [L] the latents measured
  std::vector<int> reference_source;        ///< [L] s for each latent
  std::vector<double> beta_error;           ///< [L, M]
  std::vector<double> beta_reconstruction;  ///< [L, M]
  std::vector<double> nu_error;           ///< [L, M] β^ε_m / β^ε_s (NaN-free: 0 when β_s = 0)
  std::vector<double> nu_reconstruction;  ///< [L, M]
  std::vector<std::int64_t> active_rows;  ///< [L] rows in which the latent was active
};

/// Accumulates Latent Scaling over batches of raw rows.
class LatentScalingAccumulator {
 public:
  /// Measures `latents`, each against the decoder of its `reference_source` (one per latent,
  /// or empty: the source with the largest decoder norm).
  /// @throws Error on an out-of-range latent or source.
  LatentScalingAccumulator(const Crosscoder& model, std::vector<std::int32_t> latents,
                           std::vector<int> reference_source = {});
  /// Adds raw rows x[rows, M, d]. @throws Error on a shape mismatch or NaN/Inf input.
  void add(std::span<const float> x, std::int64_t rows);
  /// Adds rows whose inference pass (model.infer) is already done.
  void add(const Crosscoder::Inference& inference);
  LatentScaling result() const;

 private:
  const Crosscoder& model_;
  std::vector<std::int32_t> latents_;
  std::vector<int> reference_;
  std::vector<std::int32_t> slot_of_latent_;  // [F] index into latents_, or -1
  std::vector<float> decoder_rows_;           // [L, M·d] the measured latents' decoder rows
  std::vector<double> numerator_error_, numerator_reconstruction_;  // [L, M]
  std::vector<double> activation_squares_;                          // [L]
  std::vector<std::int64_t> active_rows_;                           // [L]
};

}  // namespace crosscoder
