// Training checkpoints: the model's tensors (model_io.cpp) plus the Adam moments, the step, the
// dead-latent counters and the data position, so that a resumed run continues exactly. Latent
// shards write one ordinary file (the first replica's shards gather to rank 0) and read their
// own latents back, so a checkpoint resumes at any number of ranks.
#include <fmt/format.h>

#include "crosscoder/error.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "crosscoder/log.hpp"
#include "crosscoder/trainer.hpp"
#include "model_tensors.hpp"

namespace crosscoder {
namespace {

// Adam moments are saved per parameter, in CrosscoderParameters order, in internal layout.
constexpr const char* kMomentNames[] = {"encoder.weight", "encoder.bias", "decoder.weight",
                                        "decoder.bias", "threshold"};

// Floats per latent of parameter i (in kMomentNames order); 0 for the decoder bias, which is
// not per latent.
std::int64_t latent_row_width(std::size_t i, std::int64_t input_width) {
  switch (i) {
    case 0:
    case 2:
      return input_width;
    case 3:
      return 0;
    default:
      return 1;
  }
}

}  // namespace

std::vector<float> Trainer::joined_latent_rows(const DeviceArray<float>& array) const {
  if (!latent_sharded()) return array.download();
  if (replica_ranks_->rank() != 0) return {};  // the first replica's shards write
  return shard_ranks_->gather(array.download(), 0);
}

std::optional<Crosscoder> Trainer::whole_model() const {
  if (!latent_sharded()) return std::nullopt;
  if (replica_ranks_->rank() != 0) return std::nullopt;
  return Crosscoder::gather_latent_slices(model_, *shard_ranks_, 0);
}

void Trainer::save_model(const std::filesystem::path& path,
                         const std::map<std::string, std::string>& extra_metadata) const {
  if (!latent_sharded()) {
    if (communicator_->rank() == 0) model_.save(path, extra_metadata);
    return;
  }
  const std::optional<Crosscoder> whole = whole_model();
  if (whole) whole->save(path, extra_metadata);
}

void Trainer::save_checkpoint(const std::filesystem::path& path,
                              const std::string& data_state) const {
  if (!latent_sharded() && communicator_->rank() != 0) return;
  if (latent_sharded() && replica_ranks_->rank() != 0) return;
  const std::optional<Crosscoder> whole = whole_model();
  // Every collective first (the shards' moments and counters), then rank 0 alone writes.
  std::vector<std::pair<std::vector<float>, std::vector<float>>> moments;
  for (std::size_t i = 0; i < moments_.size(); ++i) {
    const bool per_latent = latent_row_width(i, 1) > 0;
    moments.emplace_back(per_latent ? joined_latent_rows(moments_[i].m) : moments_[i].m.download(),
                         per_latent ? joined_latent_rows(moments_[i].v) : moments_[i].v.download());
  }
  const std::vector<std::int64_t> since =
      latent_sharded()
          ? shard_ranks_->all_gather(std::span<const std::int64_t>(tokens_since_fired_))
          : tokens_since_fired_;
  if (communicator_->rank() != 0) return;
  const Crosscoder& model = whole ? *whole : model_;
  io::SafetensorsWriter writer;
  detail::add_model_tensors(model, writer);
  for (std::size_t i = 0; i < moments.size(); ++i) {
    const std::string name = kMomentNames[i];
    const auto n = static_cast<std::int64_t>(moments[i].first.size());
    writer.add_float("optimizer." + name + ".exp_avg", {n}, moments[i].first);
    writer.add_float("optimizer." + name + ".exp_avg_sq", {n}, moments[i].second);
  }
  writer.add_int64("trainer.tokens_since_fired", {static_cast<std::int64_t>(since.size())}, since);
  writer.set_metadata("train_config", config_.to_json());
  writer.set_metadata("step", std::to_string(step_));
  writer.set_metadata("data_state", data_state);
  writer.write(path);
}

std::string Trainer::load_checkpoint(const std::filesystem::path& path) {
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  const auto& metadata = file.metadata();
  const auto entry = [&](const char* key) {
    const auto found = metadata.find(key);
    if (found == metadata.end()) {
      throw Error(fmt::format("{}: not a training checkpoint (no '{}' in __metadata__)",
                              path.string(), key));
    }
    return found->second;
  };
  // A shard's checkpoint is the whole model's.
  if (entry("config") != whole_config_.to_json()) {
    throw Error(fmt::format("{}: the checkpoint's crosscoder config {} differs from this run's {}",
                            path.string(), entry("config"), whole_config_.to_json()));
  }
  if (entry("train_config") != config_.to_json()) {
    log_message(LogLevel::warning,
                fmt::format("{}: resuming with a training configuration different from the "
                            "checkpoint's; the run will not match an uninterrupted one",
                            path.string()));
  }
  Crosscoder loaded = Crosscoder::load(path, backend_);
  if (latent_sharded())
    loaded = Crosscoder::latent_slice(loaded, first_latent_, model_.config().latents);
  CrosscoderParameters& p = model_.parameters();
  CrosscoderParameters& q = loaded.parameters();
  p.encoder_weight = std::move(q.encoder_weight);
  p.encoder_bias = std::move(q.encoder_bias);
  p.decoder_weight = std::move(q.decoder_weight);
  p.decoder_bias = std::move(q.decoder_bias);
  p.threshold = std::move(q.threshold);
  model_.set_batch_threshold(loaded.batch_threshold());
  if (loaded.normaliser().fitted) model_.set_normaliser(loaded.normaliser());

  // This rank's latents [first, first + count) of a per-latent array of the whole model.
  const std::int64_t first = first_latent_, count = model_.config().latents;
  const auto own_rows = [&](std::vector<float> all, std::int64_t width) {
    if (width == 0 || !latent_sharded()) return all;
    return std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>(first * width),
                              all.begin() + static_cast<std::ptrdiff_t>((first + count) * width));
  };
  const std::vector<const DeviceArray<float>*> parameters = {
      &p.encoder_weight, &p.encoder_bias, &p.decoder_weight, &p.decoder_bias, &p.threshold};
  const std::int64_t D = model_.config().input_width();
  for (std::size_t i = 0; i < moments_.size(); ++i) {
    const std::string name = kMomentNames[i];
    const std::int64_t width = latent_row_width(i, D);
    const std::int64_t n =
        width > 0 ? width * global_latents_ : static_cast<std::int64_t>(parameters[i]->size());
    moments_[i].m.upload(own_rows(file.read_float("optimizer." + name + ".exp_avg", {n}), width));
    moments_[i].v.upload(
        own_rows(file.read_float("optimizer." + name + ".exp_avg_sq", {n}), width));
  }
  std::vector<std::int64_t> since = file.read_int("trainer.tokens_since_fired");
  if (since.size() != static_cast<std::size_t>(global_latents_)) {
    throw Error(fmt::format("{}: trainer.tokens_since_fired has {} entries, expected {}",
                            path.string(), since.size(), global_latents_));
  }
  tokens_since_fired_.assign(since.begin() + first_latent_, since.begin() + first_latent_ + count);
  try {
    step_ = std::stoll(entry("step"));
  } catch (const std::exception&) {
    throw Error(
        fmt::format("{}: metadata 'step' is not a number: '{}'", path.string(), entry("step")));
  }
  return entry("data_state");
}

}  // namespace crosscoder
