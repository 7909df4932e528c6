#pragma once
/// @file steering.hpp
/// Steering: interventions on crosscoder latents applied in place to one model's activations
/// inside a user's inference loop (docs/steering.md).

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "crosscoder/hook.hpp"
#include "crosscoder/model.hpp"

namespace crosscoder {

enum class InterventionKind {
  add,          ///< x += α·d_j
  scale,        ///< x += (α − 1)·f_j(x)·d_j   (α = 0 removes the latent's contribution)
  clamp,        ///< x += (α − f_j(x))·d_j     (f_j set to α; the reconstruction error is kept)
  project_out,  ///< x −= ⟨x, u_j⟩·u_j with u_j = d_j/‖d_j‖ (α unused)
};

/// "add", "scale", "clamp", "project_out"; parse_intervention_kind is the inverse.
std::string_view to_string(InterventionKind kind) noexcept;
InterventionKind parse_intervention_kind(std::string_view name);

struct Intervention {
  InterventionKind kind = InterventionKind::scale;
  int latent = 0;
  double strength = 1.0;  ///< α
  /// add only: α counts multiples of the latent's maximum observed activation (needs
  /// Steerer::set_max_activations), so strengths are comparable across latents.
  bool in_max_activation_units = false;
};

/// Applies a list of interventions to one source's activations. d_j is latent j's decoder
/// direction for that source in raw activation units; f_j(x) is the latent's activation, from
/// the crosscoder's encoder and activation function as at inference (TopK and BatchTopK: after
/// selection), computed once from the unmodified rows before any intervention is applied.
///
/// A crosscoder's encoder reads every source, but a steered model has only its own activations:
/// by default the other sources enter the encoder as their normaliser mean, i.e. as zero in
/// normalised units, so f_j uses only this source's encoder slice plus the bias. When the
/// caller also has the other model's activations for the same tokens, apply_paired() uses them.
///
/// Cost per row: add and project-out O(d) per intervention; scale and clamp one dot product of
/// width M·d (the encoder row; zeros stand for the other sources) per latent for ReLU, JumpReLU
/// and thresholded BatchTopK, and a full encoder pass with
/// selection on the model's backend for TopK (and BatchTopK without a learnt threshold).
class Steerer {
 public:
  /// @throws Error (before anything is modified, ever) for a source or latent out of range, a
  ///         non-finite strength, or max-activation units without set_max_activations.
  Steerer(const Crosscoder& model, int source, std::vector<Intervention> interventions,
          PositionFilter positions = {});

  /// Steers rows [n_rows, d] in place. @throws Error, leaving the rows untouched, when d is not
  ///         the crosscoder's width, n_rows < 0, info is null for n_rows > 0, or a row holds a
  ///         NaN or infinity.
  void apply(float* rows, int n_rows, int d, const RowInfo* info);
  /// apply() with the other sources' activations for the same tokens, paired [n_rows, M, d]
  /// (this source's block of `paired` is ignored; `rows` is what gets steered).
  void apply_paired(float* rows, int n_rows, int d, const RowInfo* info,
                    std::span<const float> paired);
  /// A hook that steers at `layer` and ignores other layers.
  ActivationHook hook(int layer);
  /// Fills `paired` [n_rows, M, d] with the other sources' activations for the rows a hook was
  /// given (this source's block may be left as is: it is ignored).
  using PairedRows =
      std::function<void(const RowInfo* info, int n_rows, int d, std::span<float> paired)>;
  /// hook() for an engine that runs the other model in lockstep: at `layer` it asks
  /// `other_rows` for the other sources' rows of the same tokens and calls apply_paired().
  ActivationHook paired_hook(int layer, PairedRows other_rows);
  /// Forgets that a once-only filter has fired (call at the start of each sequence).
  void reset() noexcept { fired_ = false; }

  /// Maximum observed activation per latent [F] (e.g. DataMetrics::max_activation), for
  /// strengths in max-activation units. @throws Error on a size mismatch or a non-positive
  ///         maximum for a latent used that way.
  void set_max_activations(std::span<const double> max_activation);

  /// The latents' activations f_j for rows [n_rows, d] as the steerer computes them,
  /// [n_rows, latents()] in the order of latents(). Exposed for tests and tools.
  std::vector<float> activations(const float* rows, int n_rows,
                                 std::span<const float> paired = {}) const;
  /// The distinct latents that scale and clamp interventions need f_j for.
  const std::vector<int>& latents() const noexcept { return encoded_latents_; }
  /// The crosscoder whose latents are steered.
  const Crosscoder& model() const noexcept { return model_; }
  /// Latent j's direction d_j for this source in raw units, [d].
  std::span<const float> direction(int latent) const;

 private:
  bool selected(const RowInfo& info) const;
  void steer(float* rows, int n_rows, int d, const RowInfo* info, std::span<const float> paired);
  std::vector<float> activations_elementwise(const float* rows, int n_rows,
                                             std::span<const float> paired) const;
  std::vector<float> activations_with_selection(const float* rows, int n_rows,
                                                std::span<const float> paired) const;

  const Crosscoder& model_;
  int source_ = 0;
  std::vector<Intervention> interventions_;
  PositionFilter positions_;
  bool fired_ = false;
  std::vector<int> encoded_latents_;    // latents whose f_j is needed
  std::vector<int> direction_slot_;     // [F] index into directions_, or -1
  std::vector<float> directions_;       // [used latents, d] raw-unit d_j
  std::vector<float> encoder_rows_;     // [encoded latents, M·d] W_enc rows
  std::vector<float> encoder_bias_;     // [encoded latents]
  std::vector<float> jump_threshold_;   // [encoded latents] JumpReLU θ
  std::vector<float> score_weight_;     // [encoded latents] Σ_m‖d_{j,m}‖ (BatchTopK)
  std::vector<double> max_activation_;  // [F] or empty
  bool needs_selection_ = false;        // TopK, or BatchTopK without a threshold
};

}  // namespace crosscoder
