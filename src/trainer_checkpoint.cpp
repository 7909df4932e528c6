// Training checkpoints: the model's tensors (model_io.cpp) plus the Adam moments, the step, the
// dead-latent counters and the data position, so that a resumed run continues exactly.
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

}  // namespace

void Trainer::save_checkpoint(const std::filesystem::path& path,
                              const std::string& data_state) const {
  io::SafetensorsWriter writer;
  detail::add_model_tensors(model_, writer);
  const CrosscoderParameters& p = model_.parameters();
  const std::vector<const DeviceArray<float>*> parameters = {
      &p.encoder_weight, &p.encoder_bias, &p.decoder_weight, &p.decoder_bias, &p.threshold};
  for (std::size_t i = 0; i < moments_.size(); ++i) {
    const std::string name = kMomentNames[i];
    const auto n = static_cast<std::int64_t>(parameters[i]->size());
    writer.add_float("optimizer." + name + ".exp_avg", {n}, moments_[i].m.download());
    writer.add_float("optimizer." + name + ".exp_avg_sq", {n}, moments_[i].v.download());
  }
  writer.add_int64("trainer.tokens_since_fired",
                   {static_cast<std::int64_t>(tokens_since_fired_.size())}, tokens_since_fired_);
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
  if (entry("config") != model_.config().to_json()) {
    throw Error(fmt::format("{}: the checkpoint's crosscoder config {} differs from this run's {}",
                            path.string(), entry("config"), model_.config().to_json()));
  }
  if (entry("train_config") != config_.to_json()) {
    log_message(LogLevel::warning,
                fmt::format("{}: resuming with a training configuration different from the "
                            "checkpoint's; the run will not match an uninterrupted one",
                            path.string()));
  }
  Crosscoder loaded = Crosscoder::load(path, backend_);
  CrosscoderParameters& p = model_.parameters();
  CrosscoderParameters& q = loaded.parameters();
  p.encoder_weight = std::move(q.encoder_weight);
  p.encoder_bias = std::move(q.encoder_bias);
  p.decoder_weight = std::move(q.decoder_weight);
  p.decoder_bias = std::move(q.decoder_bias);
  p.threshold = std::move(q.threshold);
  model_.set_batch_threshold(loaded.batch_threshold());
  if (loaded.normaliser().fitted) model_.set_normaliser(loaded.normaliser());

  const std::vector<const DeviceArray<float>*> parameters = {
      &p.encoder_weight, &p.encoder_bias, &p.decoder_weight, &p.decoder_bias, &p.threshold};
  for (std::size_t i = 0; i < moments_.size(); ++i) {
    const std::string name = kMomentNames[i];
    const auto n = static_cast<std::int64_t>(parameters[i]->size());
    moments_[i].m.upload(file.read_float("optimizer." + name + ".exp_avg", {n}));
    moments_[i].v.upload(file.read_float("optimizer." + name + ".exp_avg_sq", {n}));
  }
  const std::vector<std::int64_t> since = file.read_int("trainer.tokens_since_fired");
  if (since.size() != tokens_since_fired_.size()) {
    throw Error(fmt::format("{}: trainer.tokens_since_fired has {} entries, expected {}",
                            path.string(), since.size(), tokens_since_fired_.size()));
  }
  tokens_since_fired_ = since;
  try {
    step_ = std::stoll(entry("step"));
  } catch (const std::exception&) {
    throw Error(
        fmt::format("{}: metadata 'step' is not a number: '{}'", path.string(), entry("step")));
  }
  return entry("data_state");
}

}  // namespace crosscoder
