// `crosscoder train`: a crosscoder trained on a dataset of paired activations, with held-out
// validation, periodic training checkpoints and exact resume.
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "crosscoder/communicator.hpp"
#include "crosscoder/dataset.hpp"
#include "crosscoder/diff.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/log.hpp"
#include "crosscoder/prefetch.hpp"
#include "crosscoder/shuffled_batches.hpp"
#include "crosscoder/train_loop.hpp"

namespace crosscoder::cli {
namespace {

struct TrainFlags {
  std::vector<std::string> data;
  std::int64_t validation_rows = 0;
  double shuffle_buffer_mb = 512;
  int prefetch = 2;
  CrosscoderConfig model;
  TrainConfig train;
  std::string activation = "batchtopk";
  std::string normalisation = "scalar";
  int exclusive = 0;
  std::string device = "auto";
  std::string matmul = "float32";
  std::string out;
  std::string checkpoint;
  std::int64_t checkpoint_every = 1000;
  bool resume = false;
  std::string dead_after = "auto";
  std::vector<float> study_dfc_l1;  // the study's sparsity_coef, exclusive_sparsity_coef
  bool free_decoder_norms = false;
  int shard_latents = 1;  // ranks dividing the latents (Parallelism::latent_shards)
};

// `--dead-after`: "auto" (TrainConfig::kAutomatic) or a non-negative number of rows.
std::int64_t parse_dead_after(const std::string& text) {
  if (text == "auto") return TrainConfig::kAutomatic;
  char* rest = nullptr;
  const long long value = std::strtoll(text.c_str(), &rest, 10);
  if (text.empty() || *rest != '\0' || value < 0) {
    throw Error(
        fmt::format("--dead-after {}: expected auto or a non-negative number of rows", text));
  }
  return value;
}

int run(TrainFlags& flags) {
  flags.train.dead_after_tokens = parse_dead_after(flags.dead_after);
  const auto dataset =
      std::make_shared<ActivationDataset>(ActivationDataset::open(as_paths(flags.data)));
  if (flags.validation_rows < 0 || flags.validation_rows >= dataset->rows()) {
    throw Error(fmt::format("--validation-rows {}: must be in [0, {}) (the dataset's rows)",
                            flags.validation_rows, dataset->rows()));
  }
  if (flags.shuffle_buffer_mb <= 0) {
    throw Error(fmt::format("--shuffle-buffer-mb {}: must be positive", flags.shuffle_buffer_mb));
  }
  ShuffleOptions shuffle;
  shuffle.seed = flags.train.seed;
  shuffle.buffer_bytes = static_cast<std::int64_t>(flags.shuffle_buffer_mb * 1024 * 1024);
  shuffle.row_count = dataset->rows() - flags.validation_rows;
  std::unique_ptr<BatchSource> batches = std::make_unique<ShuffledBatches>(dataset, shuffle);
  // Under mpirun (or srun), one rank of several: a latent shard of a data replica, which reads
  // its replica's rows of each global batch; only rank 0 speaks and writes.
  const std::shared_ptr<Communicator> ranks = default_communicator();
  const bool lead = ranks->rank() == 0;
  if (!lead) set_log_sink([](LogLevel, std::string_view) {});  // rank 0 says it once
  const Parallelism parallelism{flags.shard_latents};
  try {
    parallelism.validate(ranks->size());
  } catch (const Error& error) {
    throw Error(fmt::format("--shard-latents {}: {}", flags.shard_latents, error.what()));
  }
  const int replicas = parallelism.data_replicas(ranks->size());
  if (replicas > 1) {
    batches = std::make_unique<RankSliceBatches>(
        std::move(batches), flags.train.batch_size,
        parallelism.rows_of(flags.train.batch_size, ranks->rank(), ranks->size()));
  }
  if (flags.prefetch > 0)
    batches = std::make_unique<PrefetchingBatchSource>(std::move(batches), flags.prefetch);
  BatchSource& data = *batches;
  CrosscoderConfig config = flags.model;
  config.sources = data.sources();
  config.width = data.width();
  config.activation = parse_activation(flags.activation);
  config.normalisation = parse_normalisation(flags.normalisation);
  config.validate();  // source_models first: the exclusive blocks are one per model
  if (flags.exclusive > 0)
    config.exclusive.assign(static_cast<std::size_t>(config.models()), flags.exclusive);
  config.validate();
  flags.train.unit_norm_decoder = !flags.free_decoder_norms;
  if (!flags.study_dfc_l1.empty()) {
    if (!flags.train.partition_l1.empty())
      throw Error("--study-dfc-l1 and --partition-l1 both set the partition L1: give one");
    if (flags.study_dfc_l1.size() != 2)
      throw Error(
          fmt::format("--study-dfc-l1: expected 2 values (sparsity_coef,"
                      "exclusive_sparsity_coef), got {}",
                      flags.study_dfc_l1.size()));
    flags.train.partition_l1 =
        study_dfc_partition_l1(config, flags.study_dfc_l1[0], flags.study_dfc_l1[1]);
  }
  const std::filesystem::path checkpoint =
      flags.checkpoint.empty() ? std::filesystem::path(flags.out + ".train.safetensors")
                               : std::filesystem::path(flags.checkpoint);
  require_writable_parent(flags.out, "--out");
  require_writable_parent(checkpoint, "--checkpoint");
  if (!flags.resume && std::filesystem::exists(checkpoint)) {
    throw Error(
        fmt::format("training checkpoint {} exists: pass --resume to continue it, or remove it",
                    checkpoint.string()));
  }
  const auto backend = backend_for(flags.device);
  backend->set_matmul_precision(parse_matmul_precision(flags.matmul));
  std::shared_ptr<Communicator> ranks_here = ranks;
  if (ranks->size() > 1 && backend->kind() == BackendKind::cuda && nccl_built())
    ranks_here = nccl_communicator(ranks);  // gradients reduced between the GPUs
  if (lead) {
    std::printf(
        "crosscoder train: %lld training + %lld validation rows, %d sources of width %d → %s "
        "crosscoder with %d latents on %s%s\n",
        static_cast<long long>(shuffle.row_count), static_cast<long long>(flags.validation_rows),
        config.sources, config.width, std::string(to_string(config.activation)).c_str(),
        config.latents, backend->describe().c_str(),
        ranks->size() == 1 ? ""
        : parallelism.latent_shards == 1
            ? fmt::format(", data parallel over {}", ranks_here->describe()).c_str()
            : fmt::format(", {} data replica{} x {} latent shards over {}", replicas,
                          replicas == 1 ? "" : "s", parallelism.latent_shards,
                          ranks_here->describe())
                  .c_str());
  }
  // A latent shard draws its slice of the one initialisation, never holding the whole.
  const RowSlice mine = parallelism.latents_of(config.latents, ranks->rank());
  Crosscoder model =
      Crosscoder::initial_latent_slice(config, backend, flags.train.seed, mine.first, mine.count);
  Trainer trainer(model, flags.train, ranks_here, parallelism);
  TrainingOptions options;
  options.checkpoint = checkpoint;
  options.checkpoint_every = flags.checkpoint_every;
  options.resume = flags.resume;
  const StepReport last = train(trainer, data, options);
  // Rank 0 writes the whole model (joined from the latent shards).
  trainer.save_model(flags.out,
                     {{"train_config", flags.train.to_json()}, {"data", data.identity()}});
  if (!lead) return 0;
  // The report and validation take the whole model: rank 0's, or the shards' joined in the file.
  std::optional<Crosscoder> joined;
  if (parallelism.latent_shards > 1) joined.emplace(Crosscoder::load(flags.out, backend));
  const Crosscoder& whole = joined ? *joined : model;
  std::string fve;
  for (std::size_t m = 0; m < last.fve.size(); ++m) fve += fmt::format(" {:.4f}", last.fve[m]);
  std::printf(
      "final step %lld: loss %.5f, FVE per source%s, L0 %.1f, dead %.1f%%\nmodel: %s\ntraining "
      "checkpoint: %s\n",
      static_cast<long long>(last.step), last.loss, fve.c_str(), last.l0,
      100.0 * last.dead_fraction, flags.out.c_str(), checkpoint.string().c_str());
  if (flags.validation_rows > 0) {
    PassControl pass;
    pass.label = "validation";
    const DataMetrics held_out =
        measure_data(whole, *dataset, shuffle.row_count, flags.validation_rows, pass);
    std::string held_out_fve;
    for (double value : held_out.fve) held_out_fve += fmt::format(" {:.4f}", value);
    std::printf("validation (%lld held-out rows): FVE per source%s, L0 %.1f, dead latents %lld\n",
                static_cast<long long>(held_out.rows), held_out_fve.c_str(), held_out.l0,
                static_cast<long long>(held_out.dead_latents));
  }
  return 0;
}

}  // namespace

Runner add_train_command(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  TrainFlags& train = *flags;
  train.model.latents = 16384;
  train.model.k = 64;
  CLI::App* command = app.add_subcommand("train", "Train a crosscoder on paired activations");
  command
      ->add_option("--data", train.data,
                   "Paired activations: one .npy [N, d] per source (in source order), one .npy "
                   "[N, M, d], one .safetensors with a tensor per source, or a manifest .json "
                   "(docs/formats.md)")
      ->required()
      ->check(CLI::ExistingFile);
  command
      ->add_option("--validation-rows", train.validation_rows,
                   "Hold out the dataset's last N rows; report FVE, L0 and dead latents on them")
      ->capture_default_str();
  command
      ->add_option("--shuffle-buffer-mb", train.shuffle_buffer_mb,
                   "Memory for the shuffle buffer (rows mix freely within it)")
      ->capture_default_str();
  command
      ->add_option("--prefetch", train.prefetch, "Batches read ahead in the background (0: none)")
      ->capture_default_str();
  command->add_option("--latents", train.model.latents, "Dictionary size F")->capture_default_str();
  command->add_option("--k", train.model.k, "Active latents per row (topk, batchtopk)")
      ->capture_default_str();
  command->add_option("--activation", train.activation, "relu | topk | batchtopk | jumprelu")
      ->capture_default_str();
  command
      ->add_option("--exclusive", train.exclusive,
                   "Latents reserved exclusively for each model (each source, unless "
                   "--source-models groups them)")
      ->capture_default_str();
  command
      ->add_option("--normalisation", train.normalisation,
                   "none | scalar | mean_and_scale | per_channel (the study's z-score)")
      ->capture_default_str();
  command->add_option("--steps", train.train.steps, "Training steps")->capture_default_str();
  command->add_option("--batch", train.train.batch_size, "Rows per step")->capture_default_str();
  command
      ->add_option("--tile-rows", train.train.tile_rows,
                   "Rows encoded at once (their B x F pre-activations held); 0: the whole batch "
                   "unless that exceeds 2 GiB. Same result, less memory")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("--lr", train.train.learning_rate, "Peak learning rate")
      ->capture_default_str();
  command->add_option("--warmup", train.train.warmup_steps, "Warm-up steps")->capture_default_str();
  command->add_option("--l1", train.train.l1_coefficient, "L1 coefficient (relu)")
      ->capture_default_str();
  command->add_option("--l0", train.train.l0_coefficient, "L0 coefficient (jumprelu)")
      ->capture_default_str();
  command
      ->add_option("--partition-l1", train.train.partition_l1,
                   "Plain L1 on the activations per partition: SHARED,EXCL0,EXCL1,... (one per "
                   "source after the shared value); any activation but jumprelu")
      ->delimiter(',');
  command
      ->add_option("--study-dfc-l1", train.study_dfc_l1,
                   "CS,CE: --partition-l1 from the study's (arXiv 2606.26474) sparsity_coef and "
                   "exclusive_sparsity_coef, converted to this library's loss (docs/training.md)")
      ->delimiter(',');
  command
      ->add_option("--source-models", train.model.source_models,
                   "The model of each source, e.g. 0,0,0,1,1,1 for two models' three blocks (a "
                   "crosscoder across layers; --exclusive latents span a model's blocks)")
      ->delimiter(',');
  command
      ->add_option("--matryoshka", train.model.matryoshka_groups,
                   "topk, batchtopk: a nested (Matryoshka) dictionary of these group sizes, "
                   "summing to --latents, e.g. 1024,3072,12288; every prefix reconstructs")
      ->delimiter(',');
  command
      ->add_option("--matryoshka-weights", train.train.matryoshka_weights,
                   "Loss weight of each Matryoshka prefix (default: 1/groups each)")
      ->delimiter(',');
  command->add_flag("--free-decoder-norms", train.free_decoder_norms,
                    "topk, batchtopk: no unit-norm decoder rows (the study's DFC runs)");
  command
      ->add_option("--decay-fraction", train.train.decay_fraction,
                   "Final fraction of the steps over which the rate decays linearly to 0")
      ->capture_default_str();
  command
      ->add_option("--gradient-clip", train.train.gradient_clip,
                   "Maximum global gradient norm (0: no clipping)")
      ->capture_default_str();
  command->add_option("--auxk", train.train.auxk_coefficient, "AuxK coefficient (topk, batchtopk)")
      ->capture_default_str();
  command
      ->add_option("--dead-after", train.dead_after,
                   "Rows without firing after which a latent is dead (AuxK trains those): a "
                   "number, or auto = min(10,000,000, steps x batch / 10)")
      ->capture_default_str();
  command
      ->add_option("--threshold-start", train.train.threshold_start_step,
                   "batchtopk: the inference threshold's moving average takes the steps after "
                   "this one (1001: dictionary_learning's; 0: from the first step)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("--seed", train.train.seed, "Initialisation and shuffling seed")
      ->capture_default_str();
  add_device_option(*command, train.device);
  command
      ->add_option("--matmul", train.matmul,
                   "Encoder GEMM arithmetic on CUDA: float32 | tf32 | bf16 (bf16 operands, float32 "
                   "accumulation and weights); the CPU always uses float32")
      ->check(CLI::IsMember({"float32", "tf32", "bf16"}))
      ->capture_default_str();
  command->add_option("--out", train.out, "Trained model (safetensors)")->required();
  command->add_option("--checkpoint", train.checkpoint,
                      "Training checkpoint (default: OUT.train.safetensors)");
  command
      ->add_option("--checkpoint-every", train.checkpoint_every,
                   "Steps between training checkpoints")
      ->capture_default_str();
  command->add_flag("--resume", train.resume, "Continue from the training checkpoint");
  command
      ->add_option("--shard-latents", train.shard_latents,
                   "Under mpirun: ranks that divide the latents between them (they must divide "
                   "the ranks; ranks = data replicas x latent shards). 1: data parallel only")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  return [flags] { return run(*flags); };
}

}  // namespace crosscoder::cli
