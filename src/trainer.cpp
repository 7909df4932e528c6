#include "crosscoder/trainer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>

#include "crosscoder/backend_ops.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/log.hpp"
#include "validation.hpp"

namespace crosscoder {

// ---- TrainConfig ----------------------------------------------------------------------------

std::int64_t TrainConfig::dead_horizon() const noexcept {
  if (dead_after_tokens != kAutomatic) return dead_after_tokens;
  constexpr std::int64_t kReferenceHorizon = 10'000'000;  // dictionary_learning's
  const std::int64_t tenth_of_run = steps / 10 * batch_size + steps % 10 * batch_size / 10;
  return std::max<std::int64_t>(1, std::min(kReferenceHorizon, tenth_of_run));
}

void TrainConfig::validate() const {
  const auto require = [](bool ok, const char* field, auto value) {
    if (!ok) throw Error(fmt::format("train config: {} out of range: {}", field, value));
  };
  require(steps >= 1, "steps", steps);
  require(batch_size >= 1, "batch_size", batch_size);
  require(learning_rate > 0.0f && std::isfinite(learning_rate), "learning_rate", learning_rate);
  require(beta1 >= 0.0f && beta1 < 1.0f, "beta1", beta1);
  require(beta2 >= 0.0f && beta2 < 1.0f, "beta2", beta2);
  require(epsilon > 0.0f, "epsilon", epsilon);
  require(warmup_steps >= 0, "warmup_steps", warmup_steps);
  require(decay_fraction >= 0.0f && decay_fraction <= 1.0f, "decay_fraction", decay_fraction);
  require(l1_coefficient >= 0.0f, "l1_coefficient", l1_coefficient);
  require(l0_coefficient >= 0.0f, "l0_coefficient", l0_coefficient);
  require(auxk_coefficient >= 0.0f, "auxk_coefficient", auxk_coefficient);
  for (std::size_t i = 0; i < matryoshka_weights.size(); ++i) {
    if (!(matryoshka_weights[i] >= 0.0f) || !std::isfinite(matryoshka_weights[i])) {
      throw Error(fmt::format("train config: matryoshka_weights[{}] out of range: {}", i,
                              matryoshka_weights[i]));
    }
  }
  for (std::size_t p = 0; p < partition_l1.size(); ++p) {
    if (!(partition_l1[p] >= 0.0f) || !std::isfinite(partition_l1[p])) {
      throw Error(
          fmt::format("train config: partition_l1[{}] out of range: {}", p, partition_l1[p]));
    }
  }
  require(aux_k >= 0, "aux_k", aux_k);
  require(dead_after_tokens >= 0 || dead_after_tokens == kAutomatic, "dead_after_tokens",
          dead_after_tokens);
  require(k_initial >= 0, "k_initial", k_initial);
  require(k_anneal_steps >= 0, "k_anneal_steps", k_anneal_steps);
  require(threshold_momentum >= 0.0f && threshold_momentum < 1.0f, "threshold_momentum",
          threshold_momentum);
  require(threshold_start_step >= 0, "threshold_start_step", threshold_start_step);
  require(normaliser_rows >= 0, "normaliser_rows", normaliser_rows);
  require(tile_rows >= 0, "tile_rows", tile_rows);
}

std::string TrainConfig::to_json() const {
  return nlohmann::json{{"steps", steps},
                        {"batch_size", batch_size},
                        {"learning_rate", learning_rate},
                        {"beta1", beta1},
                        {"beta2", beta2},
                        {"epsilon", epsilon},
                        {"warmup_steps", warmup_steps},
                        {"decay_fraction", decay_fraction},
                        {"gradient_clip", gradient_clip},
                        {"l1_coefficient", l1_coefficient},
                        {"l0_coefficient", l0_coefficient},
                        {"partition_l1", partition_l1},
                        {"unit_norm_decoder", unit_norm_decoder},
                        {"matryoshka_weights", matryoshka_weights},
                        {"auxk_coefficient", auxk_coefficient},
                        {"aux_k", aux_k},
                        {"dead_after_tokens", dead_after_tokens},
                        {"k_initial", k_initial},
                        {"k_anneal_steps", k_anneal_steps},
                        {"threshold_momentum", threshold_momentum},
                        {"threshold_start_step", threshold_start_step},
                        {"normaliser_rows", normaliser_rows},
                        {"tile_rows", tile_rows},
                        {"seed", seed}}
      .dump();
}

TrainConfig TrainConfig::from_json(std::string_view text) {
  TrainConfig config;
  try {
    const nlohmann::json json = nlohmann::json::parse(text);
    const auto read = [&](const char* name, auto& field) {
      if (!json.contains(name)) throw Error(fmt::format("train config: missing field '{}'", name));
      field = json.at(name).get<std::decay_t<decltype(field)>>();
    };
    read("steps", config.steps);
    read("batch_size", config.batch_size);
    read("learning_rate", config.learning_rate);
    read("beta1", config.beta1);
    read("beta2", config.beta2);
    read("epsilon", config.epsilon);
    read("warmup_steps", config.warmup_steps);
    read("decay_fraction", config.decay_fraction);
    read("gradient_clip", config.gradient_clip);
    read("l1_coefficient", config.l1_coefficient);
    read("l0_coefficient", config.l0_coefficient);
    // Added later: absent means none and unit-norm rows, as every earlier run trained.
    if (json.contains("partition_l1")) read("partition_l1", config.partition_l1);
    if (json.contains("unit_norm_decoder")) read("unit_norm_decoder", config.unit_norm_decoder);
    if (json.contains("matryoshka_weights")) read("matryoshka_weights", config.matryoshka_weights);
    read("auxk_coefficient", config.auxk_coefficient);
    read("aux_k", config.aux_k);
    read("dead_after_tokens", config.dead_after_tokens);
    read("k_initial", config.k_initial);
    read("k_anneal_steps", config.k_anneal_steps);
    read("threshold_momentum", config.threshold_momentum);
    // Added later: checkpoints written before it updated the threshold from the first step.
    config.threshold_start_step = 0;
    if (json.contains("threshold_start_step"))
      read("threshold_start_step", config.threshold_start_step);
    read("normaliser_rows", config.normaliser_rows);
    // Added after the first checkpoints were written: absent means automatic.
    if (json.contains("tile_rows")) read("tile_rows", config.tile_rows);
    read("seed", config.seed);
  } catch (const nlohmann::json::exception& error) {
    throw Error(fmt::format("train config: invalid JSON: {}", error.what()));
  }
  config.validate();
  return config;
}

std::vector<float> study_dfc_partition_l1(const CrosscoderConfig& config, float sparsity_coef,
                                          float exclusive_sparsity_coef) {
  config.validate();
  for (const float coefficient : {sparsity_coef, exclusive_sparsity_coef}) {
    if (!(coefficient >= 0.0f) || !std::isfinite(coefficient)) {
      throw Error(fmt::format("study DFC objective: coefficient out of range: {}", coefficient));
    }
  }
  const int M = config.models();  // dfc.py's sources; the partitions are per model
  const double shared = config.shared_latents();
  if (shared < 1) throw Error("study DFC objective: the crosscoder has no shared latents");
  const auto D = static_cast<double>(config.input_width());
  // dfc.py's exclusive term averages, over the sources, the mean |a| over each source's
  // exclusive latents together with the shared ones: a shared latent is in every source's mean.
  std::vector<float> weights(static_cast<std::size_t>(M) + 1);
  double shared_weight = sparsity_coef / shared;
  for (int m = 0; m < M; ++m) {
    const double visible = (config.exclusive.empty() ? 0.0 : config.exclusive[m]) + shared;
    const double per_latent = exclusive_sparsity_coef / (M * visible);
    weights[static_cast<std::size_t>(m) + 1] = static_cast<float>(D * per_latent);
    shared_weight += per_latent;
  }
  weights[0] = static_cast<float>(D * shared_weight);
  return weights;
}

// ---- Parallelism ----------------------------------------------------------------------------

void Parallelism::validate(int ranks) const {
  if (latent_shards < 1 || ranks % latent_shards != 0) {
    throw Error(fmt::format(
        "{} latent shards do not divide {} ranks (ranks = data replicas × latent shards)",
        latent_shards, ranks));
  }
}

RowSlice Parallelism::rows_of(std::int64_t rows, int rank, int ranks) const {
  validate(ranks);
  return row_slice(rows, data_replica(rank), data_replicas(ranks));
}

RowSlice Parallelism::latents_of(std::int64_t latents, int rank) const {
  if (latent_shards < 1) validate(1);
  if (latents < latent_shards) {
    throw Error(fmt::format("{} latents cannot be divided into {} shards", latents, latent_shards));
  }
  return row_slice(latents, latent_shard(rank), latent_shards);
}

// ---- Trainer --------------------------------------------------------------------------------

namespace {

struct ParameterSlot {
  DeviceArray<float>* parameter;
  DeviceArray<float>* gradient;
};

std::vector<ParameterSlot> slots(CrosscoderParameters& p, Gradients& g) {
  std::vector<ParameterSlot> list = {{&p.encoder_weight, &g.encoder_weight},
                                     {&p.encoder_bias, &g.encoder_bias},
                                     {&p.decoder_weight, &g.decoder_weight},
                                     {&p.decoder_bias, &g.decoder_bias}};
  if (!p.threshold.empty()) list.push_back({&p.threshold, &g.threshold});
  return list;
}

// TopK and BatchTopK: AuxK runs (when its coefficient is positive), and the decoder rows keep
// unit norm unless TrainConfig::unit_norm_decoder is off.
bool selects_top_k(Activation activation) {
  return activation == Activation::topk || activation == Activation::batchtopk;
}

// Whether the clipping norm can come from the sparse backward's row sums: not for ReLU, whose
// L1 term rewrites the decoder gradient after that pass.
bool norm_from_row_statistics(Activation activation) { return activation != Activation::relu; }

// Says when the run is too short for AuxK or the BatchTopK threshold ever to start. AuxK at
// step t needs a latent silent through steps 1 … t − 1, (t − 1)·B rows, for the horizon H; so
// it can run in a run of S steps only if (S − 1)·B ≥ H.
void warn_about_short_run(Activation activation, const TrainConfig& config) {
  if (selects_top_k(activation) && config.auxk_coefficient > 0.0f &&
      (config.steps - 1) * config.batch_size < config.dead_horizon()) {
    log_message(LogLevel::warning,
                fmt::format("AuxK can never start: a latent must stay silent for {} rows "
                            "(dead_after_tokens) but {} steps of {} rows see {} before the last",
                            config.dead_horizon(), config.steps, config.batch_size,
                            (config.steps - 1) * config.batch_size));
  }
  if (activation == Activation::batchtopk && config.steps <= config.threshold_start_step) {
    log_message(LogLevel::warning,
                fmt::format("the BatchTopK inference threshold is never learnt: it starts after "
                            "step {} (threshold_start_step) of {}; inference will select the "
                            "top k per batch",
                            config.threshold_start_step, config.steps));
  }
}

}  // namespace

namespace {

// FNV-1a over bytes, continued from `hash`.
std::uint64_t fnv1a(const void* data, std::size_t bytes,
                    std::uint64_t hash = 0xcbf29ce484222325ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * 0x100000001b3ull;
  return hash;
}

// The first rank whose value differs from rank 0's, or −1.
int first_rank_differing(const std::vector<std::int64_t>& values) {
  for (std::size_t r = 1; r < values.size(); ++r)
    if (values[r] != values[0]) return static_cast<int>(r);
  return -1;
}

}  // namespace

Trainer::Trainer(Crosscoder& model, const TrainConfig& config,
                 std::shared_ptr<Communicator> communicator, Parallelism parallelism)
    : model_(model),
      config_(config),
      backend_(model.backend()),
      communicator_(communicator ? std::move(communicator) : single_process_communicator()),
      parallelism_(parallelism) {
  config_.validate();
  global_latents_ = model_.config().latents;
  const int ranks = communicator_->size();
  if (ranks > 1) {
    // The grid first: every rank must split the same way.
    const int differing =
        first_rank_differing(communicator_->all_gather(std::int64_t{parallelism_.latent_shards}));
    if (differing > 0) {
      throw Error(fmt::format(
          "multi-rank training: rank {} divides the latents into {} shards, rank 0 into "
          "another number (every rank must be started with the same flags)",
          differing, parallelism_.latent_shards));
    }
  }
  parallelism_.validate(ranks);
  const int rank = communicator_->rank();
  if (parallelism_.latent_shards == 1) {
    replica_ranks_ = communicator_;
    shard_ranks_ = single_process_communicator();
  } else if (parallelism_.latent_shards == ranks) {
    replica_ranks_ = single_process_communicator();
    shard_ranks_ = communicator_;
  } else {
    replica_ranks_ =
        communicator_->split(parallelism_.latent_shard(rank), parallelism_.data_replica(rank));
    shard_ranks_ =
        communicator_->split(parallelism_.data_replica(rank), parallelism_.latent_shard(rank));
  }
  // Ranks that disagree would deadlock or silently train different models: refuse at once.
  // Latent shards differ in their latents and exclusive blocks only: first everything else is
  // compared, then the whole crosscoder the shards make.
  const auto refuse_differing_ranks = [&](CrosscoderConfig compared) {
    const std::string text = compared.to_json() + config_.to_json();
    const int differing = first_rank_differing(
        communicator_->all_gather(static_cast<std::int64_t>(fnv1a(text.data(), text.size()))));
    if (differing > 0) {
      throw Error(fmt::format(
          "multi-rank training: rank {}'s crosscoder or train configuration differs from "
          "rank 0's (every rank must be started with the same flags)",
          differing));
    }
  };
  whole_config_ = model_.config();
  if (ranks > 1) {
    CrosscoderConfig same = model_.config();
    if (latent_sharded()) {
      same.latents = 0;
      same.exclusive.assign(same.exclusive.size(), 0);
      same.matryoshka_groups.assign(same.matryoshka_groups.size(), 0);
    }
    refuse_differing_ranks(same);
  }
  if (latent_sharded()) {
    const CrosscoderConfig& c = model_.config();
    whole_config_ = Crosscoder::joined_slice_config(c, *shard_ranks_);
    refuse_differing_ranks(whole_config_);  // every replica's shards make the same crosscoder
    const std::vector<std::int64_t> shards = shard_ranks_->all_gather(std::int64_t{c.latents});
    global_latents_ = whole_config_.latents;
    first_latent_ =
        std::accumulate(shards.begin(), shards.begin() + shard_ranks_->rank(), std::int64_t{0});
  }
  const CrosscoderConfig& c = model_.config();
  if (config_.k_initial > 0 && config_.k_initial >= c.latents) {
    throw Error(fmt::format("train config: k_initial ({}) must be below latents ({})",
                            config_.k_initial, c.latents));
  }
  CrosscoderParameters& p = model_.parameters();
  const auto like = [&](const DeviceArray<float>& a) {
    return DeviceArray<float>(backend_, a.size());
  };
  gradients_.encoder_weight = like(p.encoder_weight);
  gradients_.encoder_bias = like(p.encoder_bias);
  gradients_.decoder_weight = like(p.decoder_weight);
  gradients_.decoder_bias = like(p.decoder_bias);
  gradients_.threshold = like(p.threshold);
  for (const ParameterSlot& slot : slots(p, gradients_)) {
    Moments moments{like(*slot.parameter), like(*slot.parameter)};
    moments.m.zero();
    moments.v.zero();
    moments_.push_back(std::move(moments));
  }
  tokens_since_fired_.assign(static_cast<std::size_t>(c.latents), 0);
  fired_this_step_.assign(static_cast<std::size_t>(c.latents), 0);
  warn_about_short_run(c.activation, config_);
  prefix_ends_ = c.matryoshka_prefix_ends();
  if (!config_.matryoshka_weights.empty() &&
      config_.matryoshka_weights.size() != prefix_ends_.size()) {
    throw Error(fmt::format("train config: {} matryoshka_weights for {} matryoshka groups",
                            config_.matryoshka_weights.size(), prefix_ends_.size()));
  }
  for (std::size_t i = 0; i < prefix_ends_.size(); ++i) {
    prefix_weights_.push_back(config_.matryoshka_weights.empty()
                                  ? 1.0 / static_cast<double>(prefix_ends_.size())
                                  : static_cast<double>(config_.matryoshka_weights[i]));
  }
  if (!config_.partition_l1.empty()) {
    if (c.activation == Activation::jumprelu) {
      throw Error(
          "train config: partition_l1 does not apply to jumprelu (its threshold's "
          "straight-through gradient has no L1 term); use l0_coefficient");
    }
    if (config_.partition_l1.size() != static_cast<std::size_t>(c.models()) + 1) {
      throw Error(fmt::format(
          "train config: partition_l1 has {} values; expected {} (shared, then one per model)",
          config_.partition_l1.size(), c.models() + 1));
    }
    partition_weight_.resize(static_cast<std::size_t>(c.latents));
    for (int f = 0; f < c.latents; ++f)
      partition_weight_[f] = config_.partition_l1[c.exclusive_owner(f) + 1];
  }
  if (c.shared_latents() < c.latents) {
    std::vector<std::uint8_t> trainable(static_cast<std::size_t>(c.latents) * c.sources);
    for (int f = 0; f < c.latents; ++f) {
      for (int m = 0; m < c.sources; ++m)
        trainable[static_cast<std::size_t>(f) * c.sources + m] = c.latent_uses_source(f, m) ? 1 : 0;
    }
    trainable_blocks_ =
        DeviceArray<std::uint8_t>(backend_, std::span<const std::uint8_t>(trainable));
    trainable_blocks_host_ = std::move(trainable);
  }
  row_statistics_ = DeviceArray<double>(
      backend_, static_cast<std::size_t>(c.latents) * static_cast<std::size_t>(c.sources) * 4);
  if (communicator_->size() > 1) check_ranks_agree();
}

namespace {

// FNV-1a of the model's parameters (`shared_only`: the decoder bias alone), normaliser and
// learnt threshold.
std::uint64_t model_hash(const Crosscoder& model, bool shared_only) {
  const CrosscoderParameters& p = model.parameters();
  std::uint64_t hash = 0xcbf29ce484222325ull;
  for (const DeviceArray<float>* array :
       {&p.encoder_weight, &p.encoder_bias, &p.decoder_weight, &p.decoder_bias, &p.threshold}) {
    if (shared_only && array != &p.decoder_bias) continue;
    const std::vector<float> values = array->download();
    hash = fnv1a(values.data(), values.size() * sizeof(float), hash);
  }
  const Normaliser& normaliser = model.normaliser();
  hash = fnv1a(normaliser.scale.data(), normaliser.scale.size() * sizeof(float), hash);
  hash = fnv1a(normaliser.mean.data(), normaliser.mean.size() * sizeof(float), hash);
  const float threshold = model.batch_threshold();
  return fnv1a(&threshold, sizeof threshold, hash);
}

}  // namespace

std::uint64_t Trainer::parameter_hash() const { return model_hash(model_, latent_sharded()); }

std::uint64_t Trainer::own_parameter_hash() const { return model_hash(model_, false); }

void Trainer::check_ranks_agree() const {
  const auto gather = [&](std::uint64_t hash) {
    return communicator_->all_gather(static_cast<std::int64_t>(hash));
  };
  const std::vector<std::int64_t> shared = gather(parameter_hash());
  const std::vector<std::int64_t> own = latent_sharded() ? gather(own_parameter_hash()) : shared;
  const auto fail = [&](std::size_t rank, int reference, const char* what) {
    throw Error(fmt::format(
        "multi-rank training at step {}: rank {}'s {} differ from rank {}'s (a rank started "
        "from another model or seed, or the ranks' arithmetic diverged)",
        step_, rank, what, reference));
  };
  for (std::size_t r = 1; r < shared.size(); ++r)
    if (shared[r] != shared[0]) fail(r, 0, "parameters");
  for (std::size_t r = 0; r < own.size(); ++r) {
    const int reference = parallelism_.latent_shard(static_cast<int>(r));  // the first replica
    if (own[r] != own[static_cast<std::size_t>(reference)]) fail(r, reference, "latents");
  }
}

float Trainer::learning_rate_at(std::int64_t t) const noexcept {
  double rate = config_.learning_rate;
  if (config_.warmup_steps > 0 && t <= config_.warmup_steps) {
    rate *= static_cast<double>(t) / static_cast<double>(config_.warmup_steps);
  }
  const auto decay_steps = static_cast<std::int64_t>(
      std::floor(config_.decay_fraction * static_cast<double>(config_.steps)));
  const std::int64_t decay_start = config_.steps - decay_steps;
  if (decay_steps > 0 && t > decay_start) {
    rate *= static_cast<double>(config_.steps - t + 1) / static_cast<double>(decay_steps + 1);
  }
  return static_cast<float>(rate);
}

int Trainer::k_at(std::int64_t t) const noexcept {
  const int k = model_.config().k;
  if (config_.k_initial <= 0 || config_.k_anneal_steps <= 0 || t >= config_.k_anneal_steps)
    return k;
  const double fraction = static_cast<double>(t) / static_cast<double>(config_.k_anneal_steps);
  return static_cast<int>(std::lround(config_.k_initial + fraction * (k - config_.k_initial)));
}

std::int64_t Trainer::rows_per_tile(std::int64_t rows) const noexcept {
  if (config_.tile_rows > 0) return std::min(config_.tile_rows, rows);
  constexpr std::int64_t kPreactivationBudget = std::int64_t{2} << 30;  // bytes
  const std::int64_t bytes_per_row =
      static_cast<std::int64_t>(model_.config().latents) * static_cast<std::int64_t>(sizeof(float));
  return std::clamp<std::int64_t>(kPreactivationBudget / bytes_per_row, 1,
                                  std::max<std::int64_t>(rows, 1));
}

DeviceArray<float>& Trainer::scratch(const std::string& name, std::int64_t size) {
  DeviceArray<float>& buffer = scratch_[name];
  if (buffer.size() != static_cast<std::size_t>(size)) {
    buffer = DeviceArray<float>(backend_, static_cast<std::size_t>(size));
  }
  return buffer;
}

StepReport Trainer::compute_gradients(std::span<const float> x, std::int64_t rows) {
  return forward_backward(x, rows);
}

StepReport Trainer::forward_backward(std::span<const float> x, std::int64_t rows) {
  const CrosscoderConfig& c = model_.config();
  detail::check_batch(x, rows, c.sources, c.width, "training batch");
  if (rows < 1) throw Error("training batch: needs at least one row");
  global_rows_ = rows;
  first_row_ = 0;
  if (distributed()) {
    const std::vector<std::int64_t> rank_rows = replica_ranks_->all_gather(rows);
    global_rows_ = std::accumulate(rank_rows.begin(), rank_rows.end(), std::int64_t{0});
    first_row_ = std::accumulate(rank_rows.begin(), rank_rows.begin() + replica_ranks_->rank(),
                                 std::int64_t{0});
  }
  if (!model_.normaliser().fitted) {
    const std::int64_t fit_rows = config_.normaliser_rows > 0
                                      ? std::min(config_.normaliser_rows, global_rows_)
                                      : global_rows_;
    // Fitted once, on the global batch's first rows as one process would: gathered whole.
    const std::vector<float> gathered =
        distributed()
            ? replica_ranks_->all_gather(x.first(static_cast<std::size_t>(rows) *
                                                 static_cast<std::size_t>(c.input_width())))
            : std::vector<float>();
    const std::span<const float> all = distributed() ? std::span<const float>(gathered) : x;
    model_.fit_normaliser(all.first(static_cast<std::size_t>(fit_rows * c.input_width())),
                          fit_rows);
  }
  BackendOps& be = backend_->ops();
  const std::int64_t B = rows;
  const std::int64_t D = c.input_width();
  const std::int64_t F = c.latents;
  CrosscoderParameters& p = model_.parameters();

  StepReport report;
  report.step = step_ + 1;
  report.k = k_at(report.step);

  // Forward: normalise, encode and select tile by tile (the pre-activations are the one dense
  // rows × F array; every selection that needs them is made while the tile's are at hand), then
  // the decoder, fused with the loss and its gradient.
  DeviceArray<float>& raw = scratch("raw", B * D);
  raw.upload(x);
  const std::int64_t tile = rows_per_tile(B);
  Batch batch{B, scratch("xn", B * D), scratch("pre", tile * F), scratch("recon", B * D),
              scratch("grad_recon", B * D)};
  const SelectionRequest request =
      model_.selection_request(report.k, /*training=*/true, scratch("score_weights", F));
  // AuxK's dead latents (from the counters before this step) and JumpReLU's straight-through
  // support also come from the pre-activations.
  DeviceArray<std::uint8_t> dead_mask;
  const SelectionRequest aux = auxk_request(dead_mask);
  SelectionRequest near;
  if (c.activation == Activation::jumprelu) {
    near.selection = Selection::near_threshold;
    near.threshold = p.threshold.data();
    near.bandwidth = c.jumprelu_bandwidth;
  }
  TileSelections selected = encode_and_select(raw.data(), batch, tile, request, aux, near);
  const SparseCodes& codes = selected.main;
  std::vector<float> latent_sums(static_cast<std::size_t>(F));
  be.latent_totals(codes, F, latent_sums.data(), fired_this_step_.data());
  if (distributed()) replica_ranks_->all_reduce_sum(std::span<std::int64_t>(fired_this_step_));
  std::vector<double> bias_gradient(static_cast<std::size_t>(D));
  if (prefix_ends_.empty()) {
    reconstruction_terms(batch, codes, batch.recon.data(), batch.grad_recon.data(), 1.0, true,
                         report);
    // Backward. b_dec's gradient is the column sums of the upstream gradient; the sparse pass
    // overwrites every row of the other gradients, so nothing is zeroed first.
    be.column_sums(batch.grad_recon.data(), B, D, bias_gradient.data());
    SparseBackwardRequest backward = gradient_rows_request(batch, batch.grad_recon.data());
    backward.value_gradient_offset = l1_terms(latent_sums, report);
    be.sparse_backward(codes, backward);
  } else {
    bias_gradient = matryoshka_terms(batch, codes, l1_terms(latent_sums, report), report);
  }
  gradients_.decoder_bias.upload(std::vector<float>(bias_gradient.begin(), bias_gradient.end()));
  switch (c.activation) {
    case Activation::relu:
      // The penalty's own decoder gradient, after the pass that overwrote the rows.
      be.add_scaled_blocks(p.decoder_weight.data(), scratch("l1_factor", F * c.sources).data(), F,
                           c.sources, c.width, gradients_.decoder_weight.data());
      break;
    case Activation::jumprelu:
      jumprelu_terms(batch, selected.near, codes.nnz, report);
      break;
    case Activation::topk:
    case Activation::batchtopk:
      if (aux.allowed) auxk_terms(batch, selected.aux, report);
      break;
  }

  // Both sums below: over the replicas' rows, then over the shards' latents.
  auto selected_entries = static_cast<double>(codes.nnz);
  if (distributed()) {
    // The terms computed from this rank's rows are its share of the global batch's; the
    // reconstruction term was summed over the ranks where it was computed.
    std::array<double, 3> shares{report.sparsity, report.auxk, selected_entries};
    replica_ranks_->all_reduce_sum(std::span<double>(shares));
    report.sparsity = shares[0];
    report.auxk = shares[1];
    selected_entries = shares[2];
    all_reduce_gradients();
  }
  if (latent_sharded()) {
    // Each rank's latents' share of the sparsity term and of L0; the reconstruction and AuxK
    // terms came from the summed reconstructions, the same on every rank.
    std::array<double, 2> shares{report.sparsity, selected_entries};
    shard_ranks_->all_reduce_sum(std::span<double>(shares));
    report.sparsity = shares[0];
    selected_entries = shares[1];
  }
  report.l0 = selected_entries / static_cast<double>(global_rows_);
  report.loss = report.reconstruction + report.sparsity + report.auxk;
  std::int64_t dead_now = 0;
  const std::int64_t horizon = config_.dead_horizon();
  for (std::int64_t f = 0; f < F; ++f) {
    const std::int64_t since = fired_this_step_[f] > 0 ? 0 : tokens_since_fired_[f] + global_rows_;
    dead_now += since >= horizon ? 1 : 0;
  }
  if (latent_sharded()) shard_ranks_->all_reduce_sum(std::span<std::int64_t>(&dead_now, 1));
  report.dead_fraction = static_cast<double>(dead_now) / static_cast<double>(global_latents_);
  return report;
}

SparseBackwardRequest Trainer::gradient_rows_request(const Batch& batch, const float* grad_out) {
  const CrosscoderConfig& c = model_.config();
  SparseBackwardRequest request;
  request.grad_out = grad_out;
  request.decoder = model_.parameters().decoder_weight.data();
  request.xn = batch.xn.data();
  request.latents = c.latents;
  request.width = c.input_width();
  request.d_decoder = gradients_.decoder_weight.data();
  request.d_encoder = gradients_.encoder_weight.data();
  request.d_bias = gradients_.encoder_bias.data();
  if (norm_from_row_statistics(c.activation)) {
    request.row_statistics = row_statistics_.data();
    request.statistics_blocks = c.sources;
  }
  return request;
}

SelectionRequest Trainer::auxk_request(DeviceArray<std::uint8_t>& dead_mask) const {
  const CrosscoderConfig& c = model_.config();
  SelectionRequest aux;  // `positive` with no mask: unused
  if (!selects_top_k(c.activation) || !(config_.auxk_coefficient > 0.0f)) return aux;
  std::vector<std::uint8_t> dead(tokens_since_fired_.size(), 0);
  bool any_dead = false;
  const std::int64_t horizon = config_.dead_horizon();
  for (std::size_t f = 0; f < dead.size(); ++f) {
    dead[f] = tokens_since_fired_[f] >= horizon ? 1 : 0;
    any_dead = any_dead || dead[f] != 0;
  }
  if (latent_sharded()) {
    // AuxK's selection and reconstruction are collectives: every shard takes part when any
    // has a dead latent, those without one with an empty mask.
    std::int64_t ranks_with_dead = any_dead ? 1 : 0;
    shard_ranks_->all_reduce_sum(std::span<std::int64_t>(&ranks_with_dead, 1));
    any_dead = ranks_with_dead > 0;
  }
  if (!any_dead) return aux;
  dead_mask = DeviceArray<std::uint8_t>(backend_, std::span<const std::uint8_t>(dead));
  aux.selection = Selection::per_row_top_k;
  aux.k = config_.aux_k > 0 ? config_.aux_k : std::max<std::int64_t>(1, c.input_width() / 2);
  aux.allowed = dead_mask.data();
  aux.positive_only = true;  // zero activations add nothing to the AuxK loss or its gradient
  return aux;
}

Trainer::TileSelections Trainer::encode_and_select(const float* raw, Batch& batch,
                                                   std::int64_t tile,
                                                   const SelectionRequest& request,
                                                   const SelectionRequest& aux,
                                                   const SelectionRequest& near) {
  const CrosscoderConfig& c = model_.config();
  BackendOps& be = backend_->ops();
  const std::int64_t B = batch.rows, D = c.input_width(), F = c.latents;
  // BatchTopK over tiles (and over ranks): each tile keeps its best B·k candidates, B the
  // global batch's rows (all that the batch's selection can take from it), and the batch's
  // best B·k are chosen among those.
  const std::int64_t batch_count = global_rows_ * request.k;
  const bool tiled_batch_top_k = (tile < B || distributed() || latent_sharded()) &&
                                 request.selection == Selection::per_batch_top_k;
  std::vector<SparseCodes> main_parts, aux_parts, near_parts;
  for (std::int64_t first = 0; first < B; first += tile) {
    const std::int64_t rows_here = std::min(tile, B - first);
    model_.preactivations(raw + first * D, rows_here, batch.xn.data() + first * D,
                          batch.pre.data());
    SelectionRequest tile_request = request;
    if (tiled_batch_top_k) tile_request.k = (batch_count + rows_here - 1) / rows_here;
    main_parts.push_back(be.select(batch.pre.data(), rows_here, F, tile_request,
                                   tiled_batch_top_k ? nullptr : &last_min_selected_score_));
    if (aux.allowed) aux_parts.push_back(be.select(batch.pre.data(), rows_here, F, aux, nullptr));
    if (near.threshold)
      near_parts.push_back(be.select(batch.pre.data(), rows_here, F, near, nullptr));
  }
  const auto join = [&](std::vector<SparseCodes>& parts) {
    if (parts.empty()) return SparseCodes{};
    return parts.size() == 1 ? std::move(parts.front()) : concatenate_rows(backend_, parts);
  };
  TileSelections selected{join(main_parts), join(aux_parts), join(near_parts)};
  if (tiled_batch_top_k) {
    selected.main = distributed() || latent_sharded()
                        ? global_top_entries(selected.main, batch_count, request.weight)
                        : be.select_top_entries(selected.main, batch_count, request.weight,
                                                &last_min_selected_score_);
  }
  if (latent_sharded()) {  // each row's top k over every rank's latents
    if (request.selection == Selection::per_row_top_k)
      selected.main = sharded_row_top_k(selected.main, request.k);
    if (aux.allowed) selected.aux = sharded_row_top_k(selected.aux, aux.k);
  }
  return selected;
}

void Trainer::reconstruction_terms(Batch& batch, const SparseCodes& codes, float* recon,
                                   float* grad, double weight, bool report_fit,
                                   StepReport& report) {
  // Σ_m (w/B) Σ_b ‖x̂_bm − x_bm‖², its gradient 2w(x̂ − x)/B, and FVE per source.
  const CrosscoderConfig& c = model_.config();
  const std::int64_t B = batch.rows, D = c.input_width();
  const int M = c.sources;
  std::vector<double> sse(static_cast<std::size_t>(M)), energy(static_cast<std::size_t>(M));
  ReconstructionRequest request;
  request.decoder = model_.parameters().decoder_weight.data();
  request.bias = model_.parameters().decoder_bias.data();
  request.target = batch.xn.data();
  request.sources = M;
  request.width = c.width;
  // In float as always (for weight 1 the very same 2/B as before nested dictionaries); B is
  // the global batch's rows.
  const auto G = static_cast<double>(global_rows_);
  request.gradient_scale = static_cast<float>(2.0 * weight) / static_cast<float>(global_rows_);
  request.recon = recon;
  request.grad = grad;
  request.squared_error = sse.data();
  request.target_energy = report_fit ? energy.data() : nullptr;
  reconstruct(codes, request);
  std::vector<double> column_sums;
  if (report_fit) {
    column_sums.resize(static_cast<std::size_t>(D));
    backend_->ops().column_sums(batch.xn.data(), B, D, column_sums.data());
  }
  if (distributed()) {  // one collective for the squared errors, energies and column sums
    std::vector<double> sums = sse;
    if (report_fit) {
      sums.insert(sums.end(), energy.begin(), energy.end());
      sums.insert(sums.end(), column_sums.begin(), column_sums.end());
    }
    replica_ranks_->all_reduce_sum(std::span<double>(sums));
    std::copy_n(sums.begin(), M, sse.begin());
    if (report_fit) {
      std::copy_n(sums.begin() + M, M, energy.begin());
      std::copy(sums.begin() + 2 * M, sums.end(), column_sums.begin());
    }
  }
  for (const double value : sse) report.reconstruction += weight * (value / G);
  if (!report_fit) return;
  // Σ_b ‖x_bm − mean_m‖² = Σ_b ‖x_bm‖² − B‖mean_m‖², per source.
  report.mse.resize(static_cast<std::size_t>(M));
  report.fve.resize(static_cast<std::size_t>(M));
  for (int m = 0; m < M; ++m) {
    for (int i = 0; i < c.width; ++i) {
      const double mean = column_sums[m * c.width + i] / G;
      energy[m] -= G * mean * mean;
    }
    report.mse[m] = sse[m] / G;
    report.fve[m] = energy[m] > 0.0 ? 1.0 - sse[m] / energy[m] : 0.0;
  }
}

namespace {

// The entries of `codes` that `keep` (one flag per entry) marks, as codes over the same rows on
// `backend`.
SparseCodes kept_entries(const HostSparseCodes& codes, const std::vector<char>& keep,
                         const std::shared_ptr<Backend>& backend) {
  std::vector<std::int64_t> row_ptr{0};
  std::vector<std::int32_t> latent;
  std::vector<float> value;
  for (std::int64_t b = 0; b < codes.rows; ++b) {
    for (std::int64_t e = codes.row_ptr[b]; e < codes.row_ptr[b + 1]; ++e) {
      if (!keep[static_cast<std::size_t>(e)]) continue;
      latent.push_back(codes.latent[e]);
      value.push_back(codes.value[e]);
    }
    row_ptr.push_back(static_cast<std::int64_t>(latent.size()));
  }
  SparseCodes out;
  out.rows = codes.rows;
  out.nnz = static_cast<std::int64_t>(latent.size());
  out.row_ptr = DeviceArray<std::int64_t>(backend, std::span<const std::int64_t>(row_ptr));
  out.latent = DeviceArray<std::int32_t>(backend, std::span<const std::int32_t>(latent));
  out.value = DeviceArray<float>(backend, std::span<const float>(value));
  return out;
}

// The entries of `codes` whose latent is below `end`, as codes over the same rows on `backend`.
SparseCodes latents_below(const HostSparseCodes& codes, std::int32_t end,
                          const std::shared_ptr<Backend>& backend) {
  std::vector<char> keep(codes.latent.size());
  for (std::size_t e = 0; e < keep.size(); ++e) keep[e] = codes.latent[e] < end ? 1 : 0;
  return kept_entries(codes, keep, backend);
}

}  // namespace

std::vector<double> Trainer::matryoshka_terms(Batch& batch, const SparseCodes& codes,
                                              const float* value_gradient_offset,
                                              StepReport& report) {
  // L = Σ_i w_i Σ_m MSE_m(x̂_{≤i}), x̂_{≤i} the reconstruction from the latents of prefix i.
  // A latent of group g is in every prefix i ≥ g, so its gradient rows take Σ_{i≥g} of prefix
  // i's upstream gradient: one overwriting pass over all entries with the full dictionary's
  // gradient, then one accumulating pass per smaller prefix over its entries. The entries are
  // split on the host (one download per step; a device-side split is left for later).
  const CrosscoderConfig& c = model_.config();
  BackendOps& be = backend_->ops();
  const std::int64_t B = batch.rows, D = c.input_width();
  const std::size_t G = prefix_ends_.size();
  const HostSparseCodes host = HostSparseCodes::from(codes);
  std::vector<SparseCodes> prefixes;
  for (std::size_t i = 0; i + 1 < G; ++i)
    prefixes.push_back(latents_below(host, prefix_ends_[i], backend_));
  std::vector<double> bias_gradient(static_cast<std::size_t>(D), 0.0), sums(bias_gradient.size());
  for (std::size_t i = 0; i < G; ++i) {
    const bool full = i + 1 == G;
    float* recon = full ? batch.recon.data() : scratch("matryoshka_recon", B * D).data();
    float* grad = full ? batch.grad_recon.data()
                       : scratch(fmt::format("matryoshka_grad_{}", i), B * D).data();
    reconstruction_terms(batch, full ? codes : prefixes[i], recon, grad, prefix_weights_[i], full,
                         report);
    be.column_sums(grad, B, D, sums.data());
    for (std::size_t j = 0; j < sums.size(); ++j) bias_gradient[j] += sums[j];
  }
  SparseBackwardRequest backward = gradient_rows_request(batch, batch.grad_recon.data());
  backward.value_gradient_offset = value_gradient_offset;
  be.sparse_backward(codes, backward);
  for (std::size_t i = G - 1; i-- > 0;) {
    SparseBackwardRequest smaller =
        gradient_rows_request(batch, scratch(fmt::format("matryoshka_grad_{}", i), B * D).data());
    smaller.accumulate = true;
    be.sparse_backward(prefixes[i], smaller);
  }
  return bias_gradient;
}

bool Trainer::unit_norm_rows() const noexcept {
  return selects_top_k(model_.config().activation) && config_.unit_norm_decoder;
}

const float* Trainer::l1_terms(const std::vector<float>& latent_sums, StepReport& report) {
  const CrosscoderConfig& c = model_.config();
  const bool decoder_weighted = c.activation == Activation::relu;
  if (!decoder_weighted && partition_weight_.empty()) return nullptr;
  const std::int64_t F = c.latents;
  const int M = c.sources;
  const double inverse_b = 1.0 / static_cast<double>(global_rows_);
  std::vector<float> value_gradient(static_cast<std::size_t>(F), 0.0f);
  // partition_l1: (λ_p/B) Σ_b a_bf, ∂/∂a_bf = λ_p/B; nothing reaches the decoder.
  for (std::size_t f = 0; f < partition_weight_.size(); ++f) {
    report.sparsity += partition_weight_[f] * inverse_b * latent_sums[f];
    value_gradient[f] = static_cast<float>(partition_weight_[f] * inverse_b);
  }
  if (decoder_weighted) {
    // (λ/B) Σ_b Σ_f a_bf · w_f with w_f = Σ_m ‖d_{f,m}‖ (Anthropic 2024); ∂/∂a_bf = (λ/B)·w_f.
    const std::vector<float> norms = model_.decoder_norms();
    const double lambda_over_b = config_.l1_coefficient * inverse_b;
    for (std::int64_t f = 0; f < F; ++f) {
      float weight = 0.0f;  // summed in float, as every run before partition_l1 existed
      for (int m = 0; m < M; ++m) weight += norms[f * M + m];
      report.sparsity += lambda_over_b * latent_sums[f] * weight;
      value_gradient[f] += static_cast<float>(lambda_over_b * weight);
    }
    // ∂/∂d_{f,m} of (λ/B)·S_f·‖d_{f,m}‖ = (λ/B)·S_f·d_{f,m}/‖d_{f,m}‖, S_f = Σ_b a_bf: one
    // factor per (latent, source), applied to the decoder rows where they are.
    std::vector<float> factor(static_cast<std::size_t>(F * M), 0.0f);
    for (std::int64_t f = 0; f < F; ++f) {
      if (latent_sums[f] == 0.0f) continue;
      for (int m = 0; m < M; ++m) {
        const float norm = norms[f * M + m];
        if (norm != 0.0f)
          factor[f * M + m] = static_cast<float>(lambda_over_b * latent_sums[f] / norm);
      }
    }
    scratch("l1_factor", F * M).upload(factor);
  }
  DeviceArray<float>& device_value_gradient = scratch("l1_value_gradient", F);
  device_value_gradient.upload(value_gradient);
  return device_value_gradient.data();
}

void Trainer::jumprelu_terms(const Batch& batch, const SparseCodes& near_codes, std::int64_t active,
                             StepReport& report) {
  // L0 = (λ/B)·nnz, with the straight-through estimator for θ over |pre − θ| < ε/2:
  // ∂(z·H(z−θ))/∂θ ≈ −θ/ε and ∂H(z−θ)/∂θ ≈ −1/ε (Rajamanoharan et al. 2024).
  const CrosscoderConfig& c = model_.config();
  BackendOps& be = backend_->ops();
  const CrosscoderParameters& p = model_.parameters();
  const double lambda_over_b = config_.l0_coefficient / static_cast<double>(global_rows_);
  report.sparsity = lambda_over_b * static_cast<double>(active);
  DeviceArray<float> d_near(backend_, static_cast<std::size_t>(near_codes.nnz));
  be.decoder_backward(near_codes, batch.grad_recon.data(), p.decoder_weight.data(), c.input_width(),
                      d_near.data(), nullptr);
  const std::vector<float> d_near_host = d_near.download();
  const std::vector<std::int32_t> near_latents = near_codes.latent.download();
  const std::vector<float> theta = p.threshold.download();
  std::vector<double> d_theta(static_cast<std::size_t>(c.latents), 0.0);
  const double inverse_bandwidth = 1.0 / c.jumprelu_bandwidth;
  for (std::size_t e = 0; e < near_latents.size(); ++e) {
    const std::int32_t f = near_latents[e];
    d_theta[f] +=
        -theta[f] * inverse_bandwidth * d_near_host[e] - lambda_over_b * inverse_bandwidth;
  }
  gradients_.threshold.upload(std::vector<float>(d_theta.begin(), d_theta.end()));
}

void Trainer::auxk_terms(const Batch& batch, const SparseCodes& aux_codes, StepReport& report) {
  // AuxK (Gao et al. 2024): the dead latents' top aux_k reconstruct the detached residual,
  // normalised by the residual's variance.
  const CrosscoderConfig& c = model_.config();
  BackendOps& be = backend_->ops();
  const CrosscoderParameters& p = model_.parameters();
  const std::int64_t B = batch.rows, D = c.input_width();
  const int M = c.sources;

  DeviceArray<float>& residual = scratch("residual", B * D);  // e = x − x̂ (detached)
  std::vector<double> unused(static_cast<std::size_t>(M));
  be.squared_error(batch.xn.data(), batch.recon.data(), B, M, c.width, 1.0f, residual.data(),
                   unused.data());
  // The residual's variance over the global batch: its column sums and sum of squares, the
  // latter last.
  std::vector<double> residual_sums(static_cast<std::size_t>(D) + 1);
  be.column_sums(residual.data(), B, D, residual_sums.data());
  residual_sums[static_cast<std::size_t>(D)] = be.sum_of_squares(residual.data(), B * D);
  if (distributed()) replica_ranks_->all_reduce_sum(std::span<double>(residual_sums));
  const auto G = static_cast<double>(global_rows_);
  double centred = residual_sums.back();
  residual_sums.pop_back();
  for (double sum : residual_sums) centred -= sum * sum / G;
  const double denominator = centred / G;
  if (!(denominator > 0.0)) return;

  DeviceArray<float>& grad_aux = scratch("grad_aux", B * D);
  std::vector<double> aux_sse(static_cast<std::size_t>(M));
  const double scale = config_.auxk_coefficient * 2.0 / (G * denominator);
  ReconstructionRequest aux_request;
  aux_request.decoder = p.decoder_weight.data();
  aux_request.target = residual.data();
  aux_request.sources = M;
  aux_request.width = c.width;
  aux_request.gradient_scale = static_cast<float>(scale);
  aux_request.recon = scratch("aux_recon", B * D).data();
  aux_request.grad = grad_aux.data();
  aux_request.squared_error = aux_sse.data();
  reconstruct(aux_codes, aux_request);
  double aux_total = 0.0;
  for (double sse : aux_sse) aux_total += sse;
  report.auxk = config_.auxk_coefficient * (aux_total / G) / denominator;

  SparseBackwardRequest backward = gradient_rows_request(batch, grad_aux.data());
  backward.accumulate = true;  // onto the main pass's rows, updating their row sums
  be.sparse_backward(aux_codes, backward);
}

void Trainer::apply_update(StepReport& report) {
  const CrosscoderConfig& c = model_.config();
  BackendOps& be = backend_->ops();
  CrosscoderParameters& p = model_.parameters();
  const std::int64_t D = c.input_width();
  const std::int64_t F = c.latents;

  // The weight matrices' rows are constrained inside the optimiser's pass. Dedicated-feature
  // partitions: an exclusive latent's blocks for the sources it does not own are frozen, so
  // those weights (zero at initialisation) stay exactly zero. TopK/BatchTopK: the decoder's
  // gradient loses its component along each row, and the rows return to unit norm.
  const bool unit_decoder = unit_norm_rows();
  const auto is_weight_matrix = [&](const DeviceArray<float>* parameter) {
    return parameter == &p.encoder_weight || parameter == &p.decoder_weight;
  };
  const auto constraint_of = [&](const DeviceArray<float>* parameter) {
    RowConstraint constraint;
    const bool unit = unit_decoder && parameter == &p.decoder_weight;
    if (!is_weight_matrix(parameter) || (!unit && trainable_blocks_.empty())) return constraint;
    constraint.row_width = D;
    constraint.remove_parallel = unit;
    constraint.unit_norm = unit;
    if (!trainable_blocks_.empty()) {
      constraint.trainable = trainable_blocks_.data();
      constraint.blocks = c.sources;
    }
    return constraint;
  };

  double squared_norm = 0.0;
  const auto parameter_slots = slots(p, gradients_);
  // The weight matrices' part from the sparse backward's row sums where they hold.
  // Not across ranks: a norm of summed gradients is not a sum of the ranks' norms.
  const bool from_row_statistics = norm_from_row_statistics(c.activation) && !distributed();
  if (from_row_statistics) squared_norm = constrained_weight_squares();
  for (const ParameterSlot& slot : parameter_slots) {
    if (from_row_statistics && is_weight_matrix(slot.parameter)) continue;
    // Latent shards: the decoder bias, which every rank holds alike, is counted once.
    if (latent_sharded() && slot.parameter == &p.decoder_bias && shard_ranks_->rank() != 0)
      continue;
    squared_norm += be.constrained_sum_of_squares(slot.gradient->data(), slot.parameter->data(),
                                                  static_cast<std::int64_t>(slot.gradient->size()),
                                                  constraint_of(slot.parameter));
  }
  if (latent_sharded()) shard_ranks_->all_reduce_sum(std::span<double>(&squared_norm, 1));
  report.gradient_norm = std::sqrt(squared_norm);
  if (!std::isfinite(report.gradient_norm)) {
    throw Error(
        fmt::format("training step {}: the gradient became non-finite (loss {}); the model "
                    "was left as it was before this step",
                    report.step, report.loss));
  }
  AdamStep adam;
  adam.learning_rate = learning_rate_at(report.step);
  adam.beta1 = config_.beta1;
  adam.beta2 = config_.beta2;
  adam.epsilon = config_.epsilon;
  adam.step = report.step;
  if (config_.gradient_clip > 0.0f && report.gradient_norm > config_.gradient_clip) {
    adam.gradient_scale = static_cast<float>(config_.gradient_clip / report.gradient_norm);
  }
  report.learning_rate = adam.learning_rate;
  for (std::size_t i = 0; i < parameter_slots.size(); ++i) {
    adam.rows = constraint_of(parameter_slots[i].parameter);
    be.adam_update(parameter_slots[i].parameter->data(), parameter_slots[i].gradient->data(),
                   moments_[i].m.data(), moments_[i].v.data(),
                   static_cast<std::int64_t>(parameter_slots[i].parameter->size()), adam);
  }
  if (!p.threshold.empty()) be.clamp_min(p.threshold.data(), F, 0.0f);

  // BatchTopK's inference threshold: EMA of the smallest selected weighted activation.
  if (c.activation == Activation::batchtopk && last_min_selected_score_ > 0.0f &&
      report.step > config_.threshold_start_step) {
    const float previous = model_.batch_threshold();
    model_.set_batch_threshold(previous < 0.0f ? last_min_selected_score_
                                               : config_.threshold_momentum * previous +
                                                     (1.0f - config_.threshold_momentum) *
                                                         last_min_selected_score_);
  }
  step_ = report.step;
}

double Trainer::constrained_weight_squares() const {
  // Per latent: Σ g² over the encoder's trainable blocks, and over the decoder's, less, for
  // unit-norm rows, the part along the row: ‖g − (g·d/‖d‖²)·d‖² = Σg² − (Σg·d)²/Σd².
  const CrosscoderConfig& c = model_.config();
  const bool remove_parallel = unit_norm_rows();
  const std::vector<double> statistics = row_statistics_.download();
  const int M = c.sources;
  double total = 0.0;
  for (std::int64_t f = 0; f < c.latents; ++f) {
    double encoder = 0.0, decoder = 0.0, along = 0.0, row = 0.0;
    for (int m = 0; m < M; ++m) {
      const std::size_t block = static_cast<std::size_t>(f * M + m);
      if (!trainable_blocks_host_.empty() && trainable_blocks_host_[block] == 0) continue;
      const double* s = statistics.data() + block * 4;
      encoder += s[0];
      decoder += s[1];
      along += s[2];
      row += s[3];
    }
    if (remove_parallel && row > 0.0) {
      decoder -= along * along / row;
      if (decoder < 0.0) decoder = 0.0;  // rounding; a NaN stays NaN, for the finiteness check
    }
    total += encoder + decoder;
  }
  return total;
}

StepReport Trainer::step(std::span<const float> x, std::int64_t rows) {
  StepReport report = forward_backward(x, rows);
  if (!std::isfinite(report.loss)) {
    throw Error(
        fmt::format("training step {}: the loss became non-finite ({}); the model was left "
                    "as it was before this step",
                    report.step, report.loss));
  }
  apply_update(report);
  for (std::size_t f = 0; f < tokens_since_fired_.size(); ++f) {
    tokens_since_fired_[f] = fired_this_step_[f] > 0 ? 0 : tokens_since_fired_[f] + global_rows_;
  }
  return report;
}

namespace {

// Every candidate's place in the one-process order: global row, then global latent.
std::vector<std::int64_t> global_keys(const HostSparseCodes& host, std::int64_t first_row,
                                      std::int64_t first_latent, std::int64_t latents) {
  std::vector<std::int64_t> keys(host.latent.size());
  for (std::int64_t b = 0; b < host.rows; ++b) {
    for (std::int64_t e = host.row_ptr[b]; e < host.row_ptr[b + 1]; ++e)
      keys[static_cast<std::size_t>(e)] = (first_row + b) * latents + first_latent + host.latent[e];
  }
  return keys;
}

// Where this rank's values lie in a gather of every rank's: [first, end).
std::pair<std::int64_t, std::int64_t> own_range(const std::vector<std::int64_t>& counts, int rank) {
  const std::int64_t first =
      std::accumulate(counts.begin(), counts.begin() + rank, std::int64_t{0});
  return {first, first + counts[static_cast<std::size_t>(rank)]};
}

}  // namespace

SparseCodes Trainer::global_top_entries(const SparseCodes& candidates, std::int64_t count,
                                        const float* weight) {
  // Every rank gathers every rank's candidate scores and keys and finds the same global top
  // `count` (score, then global row and latent: the one-process tie order); it keeps its own
  // share, which select_top_entries picks with the same tie rule (its entries are in key order).
  const std::int64_t F = model_.config().latents;
  const HostSparseCodes host = HostSparseCodes::from(candidates);
  std::vector<float> weights;
  if (weight) {
    weights.resize(static_cast<std::size_t>(F));
    backend_->copy_to_host(weights.data(), weight, weights.size() * sizeof(float));
  }
  std::vector<float> scores(host.value.size());
  for (std::size_t e = 0; e < scores.size(); ++e) {
    const float positive = host.value[e] > 0.0f ? host.value[e] : 0.0f;
    scores[e] = weight ? positive * weights[static_cast<std::size_t>(host.latent[e])] : positive;
  }
  std::vector<std::int64_t> counts;
  const std::vector<float> all = communicator_->all_gather(scores, &counts);
  const std::vector<std::int64_t> keys =
      communicator_->all_gather(global_keys(host, first_row_, first_latent_, global_latents_));
  std::vector<std::int64_t> order(all.size());
  std::iota(order.begin(), order.end(), std::int64_t{0});
  const auto kept = static_cast<std::ptrdiff_t>(
      std::min<std::int64_t>(count, static_cast<std::int64_t>(all.size())));
  std::nth_element(order.begin(), order.begin() + kept, order.end(),
                   [&](std::int64_t a, std::int64_t b) {
                     return all[a] > all[b] || (all[a] == all[b] && keys[a] < keys[b]);
                   });
  const auto [first, end] = own_range(counts, communicator_->rank());
  const auto own = std::count_if(order.begin(), order.begin() + kept,
                                 [&](std::int64_t i) { return i >= first && i < end; });
  float smallest = -1.0f;
  SparseCodes selected = backend_->ops().select_top_entries(candidates, own, weight, &smallest);
  // The inference threshold's statistic: the smallest positive score selected on any rank.
  float global_smallest = smallest > 0.0f ? smallest : std::numeric_limits<float>::infinity();
  communicator_->all_reduce_min(std::span<float>(&global_smallest, 1));
  last_min_selected_score_ = std::isfinite(global_smallest) ? global_smallest : -1.0f;
  return selected;
}

SparseCodes Trainer::sharded_row_top_k(const SparseCodes& candidates, std::int64_t k) {
  // Every rank gathers every rank's candidates with their keys (row, then global latent) and
  // takes each row's k best (score, then lower latent), keeping its own.
  const HostSparseCodes host = HostSparseCodes::from(candidates);
  std::vector<float> scores(host.value.size());
  for (std::size_t e = 0; e < scores.size(); ++e)
    scores[e] = host.value[e] > 0.0f ? host.value[e] : 0.0f;
  std::vector<std::int64_t> counts;
  const std::vector<float> all = shard_ranks_->all_gather(scores, &counts);
  const std::vector<std::int64_t> keys =
      shard_ranks_->all_gather(global_keys(host, 0, first_latent_, global_latents_));
  const std::int64_t L = global_latents_;
  std::vector<std::int64_t> order(all.size());
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    const std::int64_t row_a = keys[a] / L, row_b = keys[b] / L;
    if (row_a != row_b) return row_a < row_b;
    if (all[a] != all[b]) return all[a] > all[b];
    return keys[a] < keys[b];
  });
  const auto [first, end] = own_range(counts, shard_ranks_->rank());
  std::vector<char> keep(host.value.size(), 0);
  std::int64_t row = -1, taken = 0;
  for (const std::int64_t i : order) {
    if (keys[i] / L != row) {
      row = keys[i] / L;
      taken = 0;
    }
    if (taken++ >= k) continue;
    if (i >= first && i < end) keep[static_cast<std::size_t>(i - first)] = 1;
  }
  return kept_entries(host, keep, backend_);
}

void Trainer::reconstruct(const SparseCodes& codes, const ReconstructionRequest& request) {
  BackendOps& be = backend_->ops();
  if (!latent_sharded()) {
    be.reconstruct(codes, request);
    return;
  }
  // This rank's latents' part of the reconstruction, the bias added by rank 0 alone, summed
  // over the ranks; then the error and its gradient from the whole, the same on every rank.
  const std::int64_t rows = codes.rows;
  const std::int64_t D = static_cast<std::int64_t>(request.sources) * request.width;
  be.decode(codes, request.decoder, shard_ranks_->rank() == 0 ? request.bias : nullptr, D,
            request.recon);
  shard_ranks_->all_reduce_sum_in_backend(*backend_, request.recon,
                                          static_cast<std::size_t>(rows * D));
  be.squared_error(request.recon, request.target, rows, request.sources, request.width,
                   request.gradient_scale, request.grad, request.squared_error);
  if (request.target_energy) {  // Σ_b ‖target_bm‖²: the squared error against zero
    DeviceArray<float>& zero = scratch("zero_rows", rows * D);
    zero.zero();
    be.squared_error(request.target, zero.data(), rows, request.sources, request.width, 1.0f,
                     nullptr, request.target_energy);
  }
}

void Trainer::all_reduce_gradients() {
  for (DeviceArray<float>* gradient :
       {&gradients_.encoder_weight, &gradients_.encoder_bias, &gradients_.decoder_weight,
        &gradients_.decoder_bias, &gradients_.threshold}) {
    if (gradient->size() > 0)
      replica_ranks_->all_reduce_sum_in_backend(*backend_, gradient->data(), gradient->size());
  }
}

}  // namespace crosscoder
