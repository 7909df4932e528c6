#pragma once
/// @file model.hpp
/// The crosscoder: normaliser, encoder, sparse activation and per-source decoders.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/backend.hpp"
#include "crosscoder/config.hpp"
#include "crosscoder/device_array.hpp"
#include "crosscoder/sparse_codes.hpp"

namespace crosscoder {

class Communicator;  // communicator.hpp

struct SelectionRequest;  // backend_ops.hpp

/// The trainable tensors, in backend memory. D = M·d. Both weight matrices keep one
/// contiguous row per latent (the encoder is stored transposed relative to the checkpoint's
/// `encoder.weight [M, d, F]`) so sparse passes read whole rows.
struct CrosscoderParameters {
  DeviceArray<float> encoder_weight;  ///< [F, D]
  DeviceArray<float> encoder_bias;    ///< [F]
  DeviceArray<float> decoder_weight;  ///< [F, D]; row f, columns m·d..(m+1)·d are d_{f,m}
  DeviceArray<float> decoder_bias;    ///< [D]
  DeviceArray<float> threshold;       ///< [F] JumpReLU thresholds; empty otherwise
};

/// Affine normalisation x̃ = (x − μ)·s, applied inside encode/decode so that every public entry
/// point takes raw activations (no train/inference mismatch is possible).
struct Normaliser {
  /// [M] one s_m per source, or [M·d] one s_{m,i} per channel (Normalisation::per_channel).
  std::vector<float> scale;
  std::vector<float> mean;  ///< [M·d] μ (zeros unless mean_and_scale or per_channel)
  bool fitted = false;      ///< false until fit() or a checkpoint set it

  /// The scale of every input column, [M·d], whichever form `scale` has.
  std::vector<float> column_scales(int sources, int width) const;
};

/// A sparse crosscoder over M sources of width d with F latents.
class Crosscoder {
 public:
  /// A freshly initialised crosscoder: unit-norm random decoder rows (zero for the sources an
  /// exclusive latent does not use), encoder initialised to the decoder's transpose, zero
  /// biases, identity normaliser. @throws Error when `config` is invalid.
  Crosscoder(const CrosscoderConfig& config, std::shared_ptr<Backend> backend, std::uint64_t seed);

  /// Latents [first, first + count) of `full` as a crosscoder of their own (its config's latents
  /// = count): a rank's shard for latent-sharded training. The decoder bias, the normaliser and
  /// the learnt threshold are copied whole; the shard's exclusive blocks and Matryoshka groups
  /// are those of its latents (a group may be empty in a shard). @throws Error when the range
  /// is not inside `full` or k does not fit the shard.
  static Crosscoder latent_slice(const Crosscoder& full, std::int64_t first, std::int64_t count);
  /// What latent_slice(Crosscoder(config, backend, seed), first, count) gives, without ever
  /// making the whole crosscoder (the rows before the slice are drawn and discarded): a rank's
  /// initial shard of a dictionary too large for one device (all the latents: the whole
  /// crosscoder, of any configuration). @throws Error as latent_slice.
  static Crosscoder initial_latent_slice(const CrosscoderConfig& config,
                                         std::shared_ptr<Backend> backend, std::uint64_t seed,
                                         std::int64_t first, std::int64_t count);
  /// The inverse of latent_slice over a communicator's ranks: every rank's shard (in rank
  /// order) joined into the whole crosscoder, returned on every rank (a collective), e.g. for
  /// rank 0 to save it. The decoder bias, normaliser and threshold are this rank's.
  /// @throws Error when the ranks' shards do not fit together.
  static Crosscoder join_latent_slices(const Crosscoder& shard, Communicator& ranks);
  /// The config of the whole crosscoder whose latent slices the ranks hold, in rank order: the
  /// sum of their latents, exclusive blocks and Matryoshka groups (a collective). @throws Error
  /// when the slices do not join in partition and group order.
  static CrosscoderConfig joined_slice_config(const CrosscoderConfig& shard, Communicator& ranks);
  /// join_latent_slices gathered to rank `root` alone: the whole crosscoder there and nothing on
  /// the other ranks, which never hold more than their shard. A collective.
  static std::optional<Crosscoder> gather_latent_slices(const Crosscoder& shard,
                                                        Communicator& ranks, int root);

  /// Loads a checkpoint written by save() (or a training checkpoint).
  /// @throws Error naming the file and tensor when it is missing, malformed or inconsistent.
  static Crosscoder load(const std::filesystem::path& path, std::shared_ptr<Backend> backend);

  /// Writes the model as safetensors with dictionary_learning's crosscoder names
  /// (encoder.weight [M,d,F], encoder.bias [F], decoder.weight [M,F,d], decoder.bias [M,d],
  /// k, threshold, normaliser.scale [M] (or [M,d] per channel), normaliser.mean [M,d]) and the
  /// JSON config in `__metadata__["config"]`. Atomic: the old file survives any failure.
  /// `extra_metadata` is added to `__metadata__`.
  void save(const std::filesystem::path& path,
            const std::map<std::string, std::string>& extra_metadata = {}) const;

  /// The shape and variant this crosscoder was made with.
  const CrosscoderConfig& config() const noexcept { return config_; }
  /// The backend holding the parameters; every operation runs there.
  const std::shared_ptr<Backend>& backend() const noexcept { return backend_; }
  /// The parameters in backend memory (normalised units), for trainers and exporters.
  CrosscoderParameters& parameters() noexcept { return parameters_; }
  /// The parameters in backend memory (normalised units).
  const CrosscoderParameters& parameters() const noexcept { return parameters_; }
  /// The per-source normalisation applied inside encode and decode.
  const Normaliser& normaliser() const noexcept { return normaliser_; }

  /// Estimates the normaliser from raw rows x[rows, M, d] (see Normalisation) and uploads it.
  /// @throws Error when a source has zero energy or the data holds NaN/Inf.
  void fit_normaliser(std::span<const float> x, std::int64_t rows);
  /// Sets the normaliser directly: scale [M], or [M·d] for Normalisation::per_channel; mean
  /// [M·d]. @throws Error naming the sizes, or a scale that is not positive and finite.
  void set_normaliser(Normaliser normaliser);

  /// BatchTopK's inference threshold on decoder-norm-weighted activations; negative until
  /// training has learnt one (then encode() falls back to batch selection).
  float batch_threshold() const noexcept { return batch_threshold_; }
  /// Sets the BatchTopK inference threshold (the trainer's moving average; negative = none).
  void set_batch_threshold(float threshold) noexcept { batch_threshold_ = threshold; }

  /// Sparse latent activations of raw rows x[rows, M, d] (host memory), as at inference:
  /// BatchTopK uses the learnt threshold when there is one.
  /// @throws Error when x does not hold rows·M·d values or holds NaN/Inf (naming row and source).
  HostSparseCodes encode(std::span<const float> x, std::int64_t rows) const;
  /// Reconstruction of raw rows, in raw units: [rows, M, d].
  /// @throws Error as encode().
  std::vector<float> reconstruct(std::span<const float> x, std::int64_t rows) const;

  /// One inference forward pass with every intermediate an analysis may need, so that several
  /// analyses of the same rows (data metrics, contrast, latent scaling) encode them only once.
  struct Inference {
    std::int64_t rows = 0;
    HostSparseCodes codes;
    std::vector<float> normalised_input;           ///< x̃ [rows, M·d]
    std::vector<float> normalised_reconstruction;  ///< decoder output incl. b_dec [rows, M·d]
  };
  /// @throws Error on a shape mismatch or NaN/Inf input.
  Inference infer(std::span<const float> x, std::int64_t rows) const;

  /// Decoder vectors in normalised units, [F, M, d].
  std::vector<float> decoder_vectors() const;
  /// Decoder vectors in raw activation units (each source's block divided by s_m), [F, M, d]:
  /// the direction latent f adds to source m's activations per unit of activation.
  std::vector<float> raw_decoder_vectors() const;
  /// Per-source decoder norms in normalised units, [F, M].
  std::vector<float> decoder_norms() const;
  /// Relative decoder norms r_{f,m} = ‖d_{f,m}‖ / Σ_m' ‖d_{f,m'}‖ (0 for an all-zero row), [F, M].
  std::vector<float> relative_decoder_norms() const;

  // ---- Building blocks for the trainer and tests (backend memory) -----------------------

  /// xn = normalise(x) for x[rows, D] in backend memory.
  void normalise(const float* x, std::int64_t rows, float* xn) const;
  /// Normalises raw x[rows, D] into xn and computes the encoder's pre-activations pre[rows, F]
  /// (all in backend memory).
  void preactivations(const float* x, std::int64_t rows, float* xn, float* pre) const;
  /// How the activation function selects latents: with `k` active per row, in training mode
  /// (BatchTopK selects over the batch) or at inference (BatchTopK uses the learnt threshold
  /// when there is one). BatchTopK's score weights are written to `score_weights` [F].
  SelectionRequest selection_request(int k, bool training, DeviceArray<float>& score_weights) const;
  /// Per-latent score weights for BatchTopK: Σ_m ‖d_{f,m}‖, [F] in backend memory.
  void latent_score_weights(float* weights) const;

 private:
  Crosscoder(const CrosscoderConfig& config, std::shared_ptr<Backend> backend);
  /// The whole crosscoder (`config`) from a shard and its per-latent arrays joined over the
  /// shards; join_latent_slices and gather_latent_slices differ only in how they join.
  static Crosscoder from_joined_arrays(const Crosscoder& shard, const CrosscoderConfig& config,
                                       const std::vector<std::vector<float>>& joined);
  /// The initial parameters from the decoder rows: encoder tied to them, zero biases.
  void initialise(const std::vector<float>& decoder);
  void upload_normaliser();

  CrosscoderConfig config_;
  std::shared_ptr<Backend> backend_;
  CrosscoderParameters parameters_;
  Normaliser normaliser_;
  DeviceArray<float> normaliser_scale_;  // [M·d], one scale per column
  DeviceArray<float> normaliser_mean_;   // [D]
  float batch_threshold_ = -1.0f;
};

}  // namespace crosscoder
