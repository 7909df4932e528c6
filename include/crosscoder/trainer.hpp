#pragma once
/// @file trainer.hpp
/// Training a crosscoder: loss, sparse backward, Adam with schedule and clipping, the
/// decoder-norm constraint, AuxK, checkpoints and exact resume.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/communicator.hpp"
#include "crosscoder/model.hpp"

namespace crosscoder {

struct ReconstructionRequest;  // backend_ops.hpp
struct SelectionRequest;       // backend_ops.hpp
struct SparseBackwardRequest;  // backend_ops.hpp

/// Optimisation settings. Losses are computed in normalised units and averaged over rows.
struct TrainConfig {
  static constexpr std::int64_t kAutomatic = -1;  ///< dead_after_tokens: scale with the run

  std::int64_t steps = 1000;        ///< optimisation steps
  std::int64_t batch_size = 1024;   ///< rows per step
  float learning_rate = 5e-4f;      ///< peak Adam learning rate
  float beta1 = 0.9f;               ///< Adam: decay of the first-moment estimate
  float beta2 = 0.999f;             ///< Adam: decay of the second-moment estimate
  float epsilon = 1e-8f;            ///< Adam: added to √v̂ in the denominator
  std::int64_t warmup_steps = 100;  ///< linear warm-up from 0 to the peak rate
  float decay_fraction = 0.2f;      ///< linear decay to 0 over this final fraction of steps
  float gradient_clip = 1.0f;       ///< max global gradient norm; ≤ 0 disables clipping
  float l1_coefficient = 1.0f;      ///< ReLU: λ of the decoder-norm-weighted L1 penalty
  float l0_coefficient = 1.0f;      ///< JumpReLU: λ of the L0 penalty
  /// A plain L1 penalty on the activations with one coefficient per partition, models() + 1
  /// values: shared latents, then the latents exclusive to each model in order; empty: none.
  /// Adds (λ_p/B) Σ_b Σ_{f ∈ p} a_bf to the loss for any activation but JumpReLU (for ReLU, on
  /// top of the decoder-norm-weighted L1). study_dfc_partition_l1() gives the values that
  /// reproduce the DFC objective of arXiv 2606.26474.
  std::vector<float> partition_l1;
  /// TopK/BatchTopK: keep every decoder row at unit norm (the gradient loses its component
  /// along the row, the row is renormalised after each step), as the field's references do.
  /// false: free decoder norms, as the study's DFC runs trained.
  bool unit_norm_decoder = true;
  float auxk_coefficient = 1.0f / 32;  ///< TopK/BatchTopK: weight of the AuxK loss (0: off)
  /// Matryoshka dictionaries (CrosscoderConfig::matryoshka_groups): the weight w_i of prefix
  /// i's reconstruction loss; empty: 1/G each, the mean over the G prefixes.
  std::vector<float> matryoshka_weights;
  int aux_k = 0;  ///< latents in the AuxK reconstruction; 0 = D/2
  /// Rows a latent must stay silent to count as dead (AuxK trains the dead ones). −1, the
  /// default: automatic, dead_horizon() = min(10,000,000, steps·batch_size/10).
  std::int64_t dead_after_tokens = kAutomatic;
  int k_initial = 0;                  ///< BatchTopK k annealing: start value (0 = off)
  std::int64_t k_anneal_steps = 0;    ///< steps over which k goes linearly to config.k
  float threshold_momentum = 0.999f;  ///< BatchTopK: EMA momentum of the inference threshold
  /// BatchTopK: the inference threshold's moving average takes the (1-based) steps after this
  /// one. 1001 is dictionary_learning's rule (its 0-based step must exceed its
  /// threshold_start_step = 1000); 0 starts at the first step.
  std::int64_t threshold_start_step = 1001;
  std::int64_t normaliser_rows = 0;  ///< rows used to fit the normaliser (0 = first batch)
  /// Rows whose pre-activations (the one dense rows × F array of a step) are held at once; the
  /// batch is encoded and selected tile by tile, with the same result. 0: the whole batch,
  /// unless its pre-activations would exceed 2 GiB.
  std::int64_t tile_rows = 0;
  std::uint64_t seed = 0;  ///< initialisation and data order

  /// The dead-latent horizon in force: dead_after_tokens, or when it is kAutomatic
  /// min(10,000,000, ⌊steps·batch_size/10⌋), at least 1. 10 M is dictionary_learning's fixed
  /// horizon; a tenth of the run's rows lets AuxK start in short runs, and leaves a latent that
  /// died early nine tenths of the run to be revived.
  std::int64_t dead_horizon() const noexcept;
  /// Throws Error naming the field when a value is out of range.
  void validate() const;
  /// Every field as a JSON object (stored in training checkpoints).
  std::string to_json() const;
  /// Inverse of to_json(). @throws Error naming a missing field, invalid JSON or a bad value.
  static TrainConfig from_json(std::string_view json);
};

/// TrainConfig::partition_l1 for the DFC objective of arXiv 2606.26474 (its dfc.py loss:
/// mean-squared error over all B·M·d elements + c_e·mean_m(mean |a| over source m's exclusive
/// and the shared latents) + c_s·mean |a| over the shared latents), from its sparsity_coef c_s
/// and exclusive_sparsity_coef c_e, in this library's units: the reconstruction term here is
/// a sum over the D = M·d columns, so every coefficient is multiplied by D, and the means over
/// a partition become per-latent weights. With those, this library's loss is D times the
/// study's; Adam is invariant to that factor (but for ε), gradient clipping is not: the study
/// clips at norm 1 of its loss's gradient, gradient_clip = D here.
/// @throws Error when the config has no shared latents or c_s, c_e are negative or not finite.
std::vector<float> study_dfc_partition_l1(const CrosscoderConfig& config, float sparsity_coef,
                                          float exclusive_sparsity_coef);

/// The loss terms and statistics of one step (before the update).
struct StepReport {
  std::int64_t step = 0;        ///< 1-based number of the step just taken
  double loss = 0.0;            ///< total loss
  double reconstruction = 0.0;  ///< Σ_m MSE_m
  double sparsity = 0.0;        ///< λ-weighted L1 (ReLU; and partition_l1) or L0 (JumpReLU)
  double auxk = 0.0;            ///< coefficient-weighted AuxK term
  std::vector<double> mse;      ///< [M] mean over rows of ‖x̂_m − x_m‖² (normalised)
  std::vector<double> fve;      ///< [M] fraction of variance explained per source
  double l0 = 0.0;              ///< mean active latents per row
  double dead_fraction = 0.0;   ///< latents silent for dead_horizon() rows
  double gradient_norm = 0.0;   ///< global norm before clipping
  double learning_rate = 0.0;
  int k = 0;  ///< k in force (BatchTopK annealing)
};

/// Gradients of the loss, the same shapes as CrosscoderParameters.
struct Gradients {
  DeviceArray<float> encoder_weight, encoder_bias, decoder_weight, decoder_bias, threshold;
};

/// How the ranks of a Trainer's communicator divide the work: a grid of data replicas × latent
/// shards. Rank r is shard r % latent_shards of replica r / latent_shards: a replica's shards
/// are consecutive ranks (e.g. the GPUs of one node, where the partial reconstructions are
/// summed) and see the same rows of each global batch, each holding its own slice of the
/// latents; the replicas train on their own rows, and each shard's gradients are summed over
/// the replicas.
struct Parallelism {
  /// Ranks that divide the latents between them; must divide the number of ranks. 1: data
  /// parallel only, every rank holding the whole model.
  int latent_shards = 1;

  /// Every rank holds the whole model and trains on its own rows of each batch.
  static Parallelism data() noexcept { return {1}; }
  /// Every one of `ranks` ranks holds its own latents and sees every row.
  static Parallelism latents(int ranks) noexcept { return {ranks}; }
  int data_replicas(int ranks) const noexcept { return ranks / latent_shards; }
  int data_replica(int rank) const noexcept { return rank / latent_shards; }
  int latent_shard(int rank) const noexcept { return rank % latent_shards; }
  /// Rank `rank`'s rows of a `rows`-row global batch (row_slice over the replicas).
  RowSlice rows_of(std::int64_t rows, int rank, int ranks) const;
  /// Rank `rank`'s latents of a crosscoder with `latents` (row_slice over the shards): the
  /// range of Crosscoder::latent_slice that the rank trains.
  RowSlice latents_of(std::int64_t latents, int rank) const;
  /// Throws Error unless latent_shards ≥ 1 divides `ranks`.
  void validate(int ranks) const;
};

/// Trains one Crosscoder in place. Deterministic on the CPU for a given seed and thread count.
///
/// Data parallel over a Communicator's ranks: every rank holds the whole model and calls
/// step() with its own contiguous slice of each global batch, in rank order (row_slice()).
/// Every quantity the one-process step takes over the batch is global: the loss and gradients
/// are means over the global batch (gradients all-reduced before clipping and Adam, so every
/// rank applies the same update), BatchTopK selects the global batch's top B·k exactly (local
/// candidates, then one all-gather of their scores, ties in global row order), and AuxK's
/// dead-latent counters, its residual variance, the learnt threshold and the normaliser's fit
/// see the whole batch. The result equals the one-process step on the whole batch up to the
/// order of float sums.
///
/// Latent sharded (Parallelism::latent_shards > 1): every rank holds a contiguous slice of the
/// latents (Parallelism::latents_of) and sees its replica's rows. Selections stay exact (each
/// rank's candidates gathered, the one-process tie order kept), the shards' partial
/// reconstructions are summed, and each rank's gradients and Adam steps touch only its own
/// latents; the decoder bias, held by all, gets the same update everywhere. Both combine: the
/// replicas of a grid are data parallel as above. Dedicated partitions shard (a shard's
/// exclusive blocks are those of its latents), and so do Matryoshka groups (each prefix's
/// reconstruction is summed over the shards).
class Trainer {
 public:
  /// @param communicator the ranks that train together; null: this process alone.
  /// @param parallelism how they divide the work; under latent sharding `model` is this rank's
  ///        shard (Crosscoder::latent_slice of Parallelism::latents_of).
  /// @throws Error when `config` is invalid, when latent_shards does not divide the ranks, or
  ///         when the ranks' model or train configurations or initial parameters differ (naming
  ///         the first rank that differs).
  Trainer(Crosscoder& model, const TrainConfig& config,
          std::shared_ptr<Communicator> communicator = nullptr,
          Parallelism parallelism = Parallelism::data());

  /// One optimisation step on raw rows x[rows, M, d] (host memory): the whole batch, or under
  /// a multi-rank communicator this rank's slice of it. Fits the normaliser from this (global)
  /// batch first if the model has none.
  /// @throws Error naming row and source on NaN/Inf input, and naming the step when the loss
  ///         becomes non-finite (the model is then left as it was before the step).
  StepReport step(std::span<const float> x, std::int64_t rows);

  /// Loss terms and the raw gradients (before masking, constraint and clipping) at the current
  /// parameters, without changing anything. For tests and diagnostics.
  StepReport compute_gradients(std::span<const float> x, std::int64_t rows);
  const Gradients& gradients() const noexcept { return gradients_; }

  std::int64_t steps_done() const noexcept { return step_; }
  /// The ranks this trainer trains with (a single process unless one was given).
  Communicator& communicator() const noexcept { return *communicator_; }
  /// The ranks that hold this rank's latents, one per data replica (all of them under data
  /// parallel alone; this one under latent sharding alone), in replica order.
  Communicator& replica_ranks() const noexcept { return *replica_ranks_; }
  /// The ranks that see this rank's rows, one per latent shard, in shard order.
  Communicator& shard_ranks() const noexcept { return *shard_ranks_; }
  /// How those ranks divide the work.
  Parallelism parallelism() const noexcept { return parallelism_; }
  /// A hash (FNV-1a) of what every rank holds alike: all parameters, the normaliser and the
  /// learnt threshold under data parallel; under latent sharding the decoder bias, normaliser
  /// and threshold.
  std::uint64_t parameter_hash() const;
  /// Throws Error naming the first rank whose parameters differ from those it must equal: under
  /// data parallel every rank's from rank 0's; under latent sharding the shared parameters
  /// (parameter_hash()) from rank 0's and every shard's latents from its first replica's. A
  /// collective: every rank must call it.
  void check_ranks_agree() const;
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
  /// Atomic. Over several ranks rank 0 writes the whole model, and the file is the same as one
  /// process would write: under latent sharding a collective (every rank calls it; the first
  /// replica's shards gather their latents to rank 0); under data parallel alone the other
  /// ranks' calls write nothing.
  void save_checkpoint(const std::filesystem::path& path, const std::string& data_state = "") const;
  /// Restores everything save_checkpoint wrote into this trainer and its model, and returns
  /// the data state. A checkpoint written at any number of ranks and shards resumes at any
  /// other: a latent shard reads its own latents (every rank reads the file).
  /// @throws Error if the checkpoint does not match the model's config.
  std::string load_checkpoint(const std::filesystem::path& path);
  /// Writes the trained model as Crosscoder::save does (with `extra_metadata`): on rank 0, the
  /// whole model. Called like save_checkpoint (a collective under latent sharding).
  void save_model(const std::filesystem::path& path,
                  const std::map<std::string, std::string>& extra_metadata = {}) const;

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
  /// Σ_m (w/B) Σ_b ‖x̂_bm − x_bm‖² of the reconstruction from `codes` (added to
  /// report.reconstruction), the reconstruction into `recon` and its gradient 2w(x̂ − x)/B into
  /// `grad`; with `report_fit`, the per-source MSE and FVE of this reconstruction.
  void reconstruction_terms(Batch& batch, const SparseCodes& codes, float* recon, float* grad,
                            double weight, bool report_fit, StepReport& report);
  /// The nested dictionary's reconstruction terms and backward pass (Matryoshka): every prefix
  /// reconstructs the batch with its weight; the full dictionary's reconstruction is left in
  /// batch.recon for AuxK. Returns the decoder bias gradient.
  std::vector<double> matryoshka_terms(Batch& batch, const SparseCodes& codes,
                                       const float* value_gradient_offset, StepReport& report);
  /// The L1 penalties (ReLU's decoder-norm-weighted one, partition_l1); returns ∂penalty/∂a
  /// per latent [F] (backend memory), or null when there is none, and leaves the ReLU
  /// penalty's decoder gradient factors in the scratch buffer "l1_factor".
  const float* l1_terms(const std::vector<float>& latent_sums, StepReport& report);
  /// Whether the decoder rows are held at unit norm (TopK/BatchTopK unless unit_norm_decoder
  /// is off).
  bool unit_norm_rows() const noexcept;
  void jumprelu_terms(const Batch& batch, const SparseCodes& near_threshold, std::int64_t active,
                      StepReport& report);
  void auxk_terms(const Batch& batch, const SparseCodes& aux_codes, StepReport& report);
  /// A sparse backward request that writes this trainer's gradient rows (and their row sums)
  /// from upstream gradient `grad_out` [B, D] and the batch's normalised input.
  SparseBackwardRequest gradient_rows_request(const Batch& batch, const float* grad_out);
  /// Of every rank's BatchTopK candidates, the `count` best in the global order (score, then
  /// rank, row and latent): this rank's share of them, as the selection (data parallel).
  SparseCodes global_top_entries(const SparseCodes& candidates, std::int64_t count,
                                 const float* weight);
  /// Sums every gradient over the replicas (data parallel).
  void all_reduce_gradients();
  /// Whether more than one replica trains, each on its rows of the batch.
  bool distributed() const noexcept { return replica_ranks_->size() > 1; }
  /// Whether more than one rank trains, each on its latents.
  bool latent_sharded() const noexcept { return shard_ranks_->size() > 1; }
  /// A hash of everything this rank's model holds (its latents and what all hold alike).
  std::uint64_t own_parameter_hash() const;
  /// Under latent sharding, on rank 0 of the first replica: `array`'s rows of every shard, in
  /// shard order (the whole model's array); empty on the other ranks. Otherwise `array` itself.
  std::vector<float> joined_latent_rows(const DeviceArray<float>& array) const;
  /// The whole model on rank 0 of the first replica (joined from the shards under latent
  /// sharding; a copy of the model otherwise); nothing elsewhere. A collective of the shards.
  std::optional<Crosscoder> whole_model() const;
  /// BackendOps::reconstruct, with the ranks' partial reconstructions summed under latent
  /// sharding (then the bias is added once, and the error and its gradient are computed from the
  /// whole reconstruction on every rank).
  void reconstruct(const SparseCodes& codes, const ReconstructionRequest& request);
  /// Under latent sharding: of every rank's per-row top-k candidates (`candidates`, at most
  /// `k` a row, scores their values), each row's k best in the one-process order (score, then
  /// lower global latent): this rank's share of them.
  SparseCodes sharded_row_top_k(const SparseCodes& candidates, std::int64_t k);
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
  std::shared_ptr<Communicator> communicator_;   // every rank
  std::shared_ptr<Communicator> replica_ranks_;  // the ranks holding this rank's latents
  std::shared_ptr<Communicator> shard_ranks_;    // the ranks seeing this rank's rows
  Parallelism parallelism_;
  std::int64_t global_rows_ = 0;     // rows of the current step's global batch
  std::int64_t first_row_ = 0;       // global index of this rank's first row
  std::int64_t first_latent_ = 0;    // global index of this rank's first latent
  std::int64_t global_latents_ = 0;  // latents over all ranks
  CrosscoderConfig whole_config_;    // the crosscoder the shards make (the model's own unsharded)
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
  std::vector<float> partition_weight_;  // [F] partition_l1 per latent; empty when off
  std::vector<int> prefix_ends_;         // Matryoshka prefixes' ends; empty when not nested
  std::vector<double> prefix_weights_;   // w_i per prefix
  std::vector<std::int64_t> tokens_since_fired_;
  std::vector<std::int64_t> fired_this_step_;
  float last_min_selected_score_ = -1.0f;
  std::int64_t step_ = 0;
};

}  // namespace crosscoder
