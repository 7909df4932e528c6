#pragma once
/// @file splice.hpp
/// Splicing: replacing one model's activations at a block by what the crosscoder makes of them,
/// inside a user's inference loop, to measure what the model loses (CE loss recovered, KL;
/// lm_evaluation.hpp) and to test the diffing hypotheses ("the base model plus the fine-tune's
/// exclusive latents behaves like the fine-tune"). docs/evaluation.md.
///
///   crosscoder::Splicer splice(model, /*source=*/0, {crosscoder::SpliceKind::reconstruction});
///   engine.add_hook(block, splice.hook(block));         // the other model's rows: unpaired
///
/// Like steering, the crosscoder's encoder reads every source, but an engine running one model
/// has only its rows: by default the other sources enter as their normaliser mean (zero in
/// normalised units); apply_paired() and the paired hook take the other model's rows for the
/// same tokens, which is how the reconstruction is defined in training.

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "crosscoder/hook.hpp"
#include "crosscoder/model.hpp"

namespace crosscoder {

/// What replaces source s's rows x_s (raw units; x̂ the crosscoder's reconstruction with its
/// decoder bias, f the latents' activations as at inference, d_{j,m} latent j's raw decoder
/// direction for source m).
enum class SpliceKind {
  reconstruction,             ///< x̂_s
  reconstruction_plus_error,  ///< x̂_s + (x_s − x̂_s): the identity through the whole path
  zero,                       ///< 0 (zero ablation)
  mean,                       ///< a given mean activation (mean ablation)
  /// x_s + Σ_{j∈L} f_j·d_{j,B}: source s's own activations with latents L of source B added
  /// from the pair's encoding, L by default B's dedicated partition (the fine-tune's exclusive
  /// latents added to the base model).
  add_latents_of,
  /// x̂_s − Σ_{j∈L} f_j·d_{j,s} + Σ_{j∈L} f_j·d_{j,B}: source s's reconstruction with source
  /// B's decoder for latents L, by default the shared latents (every latent outside the
  /// dedicated partitions).
  decoder_of,
};

/// "reconstruction", "reconstruction_plus_error", "zero", "mean", "add_latents_of",
/// "decoder_of"; parse_splice_kind is the inverse (Error naming the text otherwise).
std::string_view to_string(SpliceKind kind) noexcept;
SpliceKind parse_splice_kind(std::string_view text);

struct SpliceOptions {
  SpliceKind kind = SpliceKind::reconstruction;
  int other_source = -1;     ///< B, for add_latents_of and decoder_of
  std::vector<int> latents;  ///< L for add_latents_of and decoder_of; empty: the default
  std::vector<float> mean;   ///< [d] raw mean activation of the source, for SpliceKind::mean
  PositionFilter positions;  ///< which rows are replaced (default: all)
};

/// The other sources' rows for the rows a hook is given, [n_rows, M, d] (the hooked source's
/// block is ignored), e.g. captured from the other model run in lockstep on the same tokens.
using PairedRows =
    std::function<std::span<const float>(int layer, int n_rows, const RowInfo* info)>;

/// Replaces one source's rows according to SpliceOptions.
class Splicer {
 public:
  /// @throws Error (before anything is modified, ever) for a source or other source out of
  ///         range or equal, a latent out of range, no latents (add_latents_of without a
  ///         dedicated partition for B and no list), or a mean that is not [d] finite values.
  Splicer(const Crosscoder& model, int source, SpliceOptions options);

  /// Replaces the selected rows [n_rows, d] in place, the other sources at their mean.
  /// @throws Error, leaving the rows untouched, when d is not the crosscoder's width, n_rows
  ///         < 0, info is null for n_rows > 0, or a row holds a NaN or infinity; and for
  ///         add_latents_of, which needs B's rows (B's exclusive latents read only B).
  void apply(float* rows, int n_rows, int d, const RowInfo* info);
  /// apply() with the other sources' rows for the same tokens, paired [n_rows, M, d].
  /// @throws Error as apply(), and when paired does not hold n_rows · M · d finite values.
  void apply_paired(float* rows, int n_rows, int d, const RowInfo* info,
                    std::span<const float> paired);
  /// A hook that splices at `layer` and ignores other layers (unpaired; not add_latents_of).
  ActivationHook hook(int layer);
  /// A hook that splices at `layer` with the other sources' rows from `paired`.
  ActivationHook hook(int layer, PairedRows paired);

  const SpliceOptions& options() const noexcept { return options_; }
  int source() const noexcept { return source_; }
  /// The crosscoder that reconstructs the rows.
  const Crosscoder& model() const noexcept { return model_; }

 private:
  void splice(float* rows, int n_rows, int d, const RowInfo* info, std::span<const float> paired);
  [[noreturn]] void throw_needs_pair() const;

  const Crosscoder& model_;
  int source_ = 0;
  SpliceOptions options_;
  std::vector<float> column_scales_;     // [D]
  std::vector<float> own_directions_;    // [|L|, d] raw d_{j,s}
  std::vector<float> other_directions_;  // [|L|, d] raw d_{j,B}
};

}  // namespace crosscoder
