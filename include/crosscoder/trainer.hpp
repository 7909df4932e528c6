#pragma once
/// @file trainer.hpp
/// Training a crosscoder: loss, sparse backward, Adam with schedule and clipping, the
/// decoder-norm constraint, AuxK, checkpoints and exact resume.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/model.hpp"

namespace crosscoder {

/// Optimisation settings. Losses are computed in normalised units and averaged over rows.
struct TrainConfig {
  std::int64_t steps = 1000;           ///< optimisation steps
  std::int64_t batch_size = 1024;      ///< rows per step
  float learning_rate = 5e-4f;         ///< peak Adam learning rate
  float beta1 = 0.9f;                  ///< Adam: decay of the first-moment estimate
  float beta2 = 0.999f;                ///< Adam: decay of the second-moment estimate
  float epsilon = 1e-8f;               ///< Adam: added to √v̂ in the denominator
  std::int64_t warmup_steps = 100;     ///< linear warm-up from 0 to the peak rate
  float decay_fraction = 0.2f;         ///< linear decay to 0 over this final fraction of steps
  float gradient_clip = 1.0f;          ///< max global gradient norm; ≤ 0 disables clipping
  float l1_coefficient = 1.0f;         ///< ReLU: λ of the decoder-norm-weighted L1 penalty
  float l0_coefficient = 1.0f;         ///< JumpReLU: λ of the L0 penalty
  float auxk_coefficient = 1.0f / 32;  ///< TopK/BatchTopK: weight of the AuxK loss
  int aux_k = 0;                       ///< latents in the AuxK reconstruction; 0 = D/2
  std::int64_t dead_after_tokens = 10'000'000;  ///< a latent silent this long is dead
  int k_initial = 0;                            ///< BatchTopK k annealing: start value (0 = off)
  std::int64_t k_anneal_steps = 0;              ///< steps over which k goes linearly to config.k
  float threshold_momentum = 0.999f;  ///< BatchTopK: EMA momentum of the inference threshold
  std::int64_t normaliser_rows = 0;   ///< rows used to fit the normaliser (0 = first batch)
  /// Rows whose pre-activations (the one dense rows × F array of a step) are held at once; the
  /// batch is encoded and selected tile by tile, with the same result. 0: the whole batch,
  /// unless its pre-activations would exceed 2 GiB.
  std::int64_t tile_rows = 0;
  std::uint64_t seed = 0;  ///< initialisation and data order

  /// Throws Error naming the field when a value is out of range.
  void validate() const;
  /// Every field as a JSON object (stored in training checkpoints).
  std::string to_json() const;
  /// Inverse of to_json(). @throws Error naming a missing field, invalid JSON or a bad value.
  static TrainConfig from_json(std::string_view json);
};

/// The loss terms and statistics of one step (before the update).
struct StepReport {
  std::int64_t step = 0;        ///< 1-based number of the step just taken
  double loss = 0.0;            ///< total loss
  double reconstruction = 0.0;  ///< Σ_m MSE_m
  double sparsity = 0.0;        ///< λ-weighted L1 (ReLU) or L0 (JumpReLU) term
  double auxk = 0.0;            ///< coefficient-weighted AuxK term
  std::vector<double> mse;      ///< [M] mean over rows of ‖x̂_m − x_m‖² (normalised)
  std::vector<double> fve;      ///< [M] fraction of variance explained per source
  double l0 = 0.0;              ///< mean active latents per row
  double dead_fraction = 0.0;   ///< latents silent for dead_after_tokens
  double gradient_norm = 0.0;   ///< global norm before clipping
  double learning_rate = 0.0;
  int k = 0;  ///< k in force (BatchTopK annealing)
};

/// Gradients of the loss, the same shapes as CrosscoderParameters.
struct Gradients {
  DeviceArray<float> encoder_weight, encoder_bias, decoder_weight, decoder_bias, threshold;
};

/// Trains one Crosscoder in place. Deterministic on the CPU for a given seed and thread count.
class Trainer {
 public:
  /// @throws Error when `config` is invalid.
  Trainer(Crosscoder& model, const TrainConfig& config);

  /// One optimisation step on raw rows x[rows, M, d] (host memory). Fits the normaliser
  /// from this batch first if the model has none.
  /// @throws Error naming row and source on NaN/Inf input, and naming the step when the loss
  ///         becomes non-finite (the model is then left as it was before the step).
  StepReport step(std::span<const float> x, std::int64_t rows);

  /// Loss terms and the raw gradients (before masking, constraint and clipping) at the current
  /// parameters, without changing anything. For tests and diagnostics.
  StepReport compute_gradients(std::span<const float> x, std::int64_t rows);
  const Gradients& gradients() const noexcept { return gradients_; }

  std::int64_t steps_done() const noexcept { return step_; }
  const TrainConfig& config() const noexcept { return config_; }
  Crosscoder& model() noexcept { return model_; }
  /// Tokens since each latent last fired, [F].
  const std::vector<std::int64_t>& tokens_since_fired() const noexcept {
    return tokens_since_fired_;
  }
  /// The learning rate the schedule gives at 1-based step t.
  float learning_rate_at(std::int64_t t) const noexcept;
  /// The k in force at 1-based step t (BatchTopK annealing).
  int k_at(std::int64_t t) const noexcept;

  /// Writes a training checkpoint: the model (as Crosscoder::save) plus Adam moments, step,
  /// dead-latent counters, the train config and `data_state` (the data stream's position).
  /// Atomic.
  void save_checkpoint(const std::filesystem::path& path, const std::string& data_state = "") const;
  /// Restores everything save_checkpoint wrote into this trainer and its model, and returns
  /// the data state. @throws Error if the checkpoint does not match the model's config.
  std::string load_checkpoint(const std::filesystem::path& path);

 private:
  struct Moments {
    DeviceArray<float> m, v;
  };
  // One batch's working arrays (backend memory), shared by the loss terms below.
  struct Batch {
    std::int64_t rows;
    DeviceArray<float>& xn;          // [B, D] normalised input
    DeviceArray<float>& pre;         // [tile rows, F] pre-activations of the current tile
    DeviceArray<float>& recon;       // [B, D] reconstruction
    DeviceArray<float>& grad_recon;  // [B, D] ∂L/∂recon
  };
  // The codes a step needs from the pre-activations, over the whole batch.
  struct TileSelections {
    SparseCodes main;  // the activation's selection
    SparseCodes aux;   // AuxK's dead latents (empty unless requested)
    SparseCodes near;  // JumpReLU's straight-through support (empty unless requested)
  };
  StepReport forward_backward(std::span<const float> x, std::int64_t rows);
  /// AuxK's selection over the dead latents, whose mask it writes into `dead_mask`; a request
  /// without a mask when AuxK does not run this step.
  SelectionRequest auxk_request(DeviceArray<std::uint8_t>& dead_mask) const;
  /// Normalises and encodes the batch `tile` rows at a time into batch.xn and batch.pre, making
  /// each requested selection on every tile (`aux` and `near` when they have a mask or
  /// thresholds).
  TileSelections encode_and_select(const float* raw, Batch& batch, std::int64_t tile,
                                   const SelectionRequest& request, const SelectionRequest& aux,
                                   const SelectionRequest& near);
  void reconstruction_terms(Batch& batch, const SparseCodes& codes, StepReport& report);
  /// The decoder-norm-weighted L1 penalty; returns ∂penalty/∂a per latent [F] (backend memory)
  /// and leaves its decoder gradient factors in the scratch buffer "l1_factor".
  const float* l1_terms(const Batch& batch, const std::vector<float>& latent_sums,
                        StepReport& report);
  void jumprelu_terms(const Batch& batch, const SparseCodes& near_threshold, std::int64_t active,
                      StepReport& report);
  void auxk_terms(const Batch& batch, const SparseCodes& aux_codes, StepReport& report);
  /// A sparse backward request that writes this trainer's gradient rows (and their row sums)
  /// from upstream gradient `grad_out` [B, D] and the batch's normalised input.
  SparseBackwardRequest gradient_rows_request(const Batch& batch, const float* grad_out);
  /// The rows of one tile of a `rows`-row batch (TrainConfig::tile_rows).
  std::int64_t rows_per_tile(std::int64_t rows) const noexcept;
  /// A named working buffer of `size` floats, kept between steps: a fresh B×F allocation each
  /// step costs page faults and kernel page zeroing (measured: 3.5% of a step).
  DeviceArray<float>& scratch(const std::string& name, std::int64_t size);
  void apply_update(StepReport& report);
  /// The weight matrices' squared gradient norm as the optimiser's row constraints have it,
  /// from row_statistics_.
  double constrained_weight_squares() const;

  Crosscoder& model_;
  TrainConfig config_;
  std::shared_ptr<Backend> backend_;
  Gradients gradients_;
  std::vector<Moments> moments_;  // one per parameter, in CrosscoderParameters order
  std::map<std::string, DeviceArray<float>> scratch_;
  /// [F · M]: 1 where latent f has weights for source m; empty without model-exclusive latents.
  DeviceArray<std::uint8_t> trainable_blocks_;
  std::vector<std::uint8_t> trainable_blocks_host_;  // the same, on the host
  /// [F · M · 4]: the sparse backward's sums over each (latent, source) block of the gradient
  /// rows (SparseBackwardRequest::row_statistics), from which apply_update takes the clipping
  /// norm for every activation whose rows nothing changes after that pass (all but ReLU).
  DeviceArray<double> row_statistics_;
  std::vector<std::int64_t> tokens_since_fired_;
  std::vector<std::int64_t> fired_this_step_;
  float last_min_selected_score_ = -1.0f;
  std::int64_t step_ = 0;
};

}  // namespace crosscoder
