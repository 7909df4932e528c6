// Model and training checkpoints in safetensors, with dictionary_learning's crosscoder tensor
// names so that Python users can load them (docs/formats.md has the full layout).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "crosscoder/error.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "crosscoder/log.hpp"
#include "crosscoder/model.hpp"
#include "crosscoder/trainer.hpp"
#include "crosscoder/version.hpp"

namespace crosscoder {
namespace {

constexpr const char* kFormat = "crosscoder-checkpoint-1";

// Adam moments are saved per parameter, in CrosscoderParameters order, in internal layout.
constexpr const char* kMomentNames[] = {"encoder.weight", "encoder.bias", "decoder.weight",
                                        "decoder.bias", "threshold"};

// Internal [F, M·d] rows ↔ checkpoint layouts.
std::vector<float> encoder_to_file(const std::vector<float>& rows, std::int64_t F, std::int64_t D) {
  std::vector<float> out(rows.size());  // [M, d, F] = [D, F]
  for (std::int64_t f = 0; f < F; ++f)
    for (std::int64_t j = 0; j < D; ++j) out[j * F + f] = rows[f * D + j];
  return out;
}
std::vector<float> encoder_from_file(const std::vector<float>& file, std::int64_t F,
                                     std::int64_t D) {
  std::vector<float> rows(file.size());
  for (std::int64_t f = 0; f < F; ++f)
    for (std::int64_t j = 0; j < D; ++j) rows[f * D + j] = file[j * F + f];
  return rows;
}
std::vector<float> decoder_to_file(const std::vector<float>& rows, std::int64_t F, int M, int d) {
  std::vector<float> out(rows.size());  // [M, F, d]
  const std::int64_t D = static_cast<std::int64_t>(M) * d;
  for (int m = 0; m < M; ++m)
    for (std::int64_t f = 0; f < F; ++f)
      for (int i = 0; i < d; ++i) out[(m * F + f) * d + i] = rows[f * D + m * d + i];
  return out;
}
std::vector<float> decoder_from_file(const std::vector<float>& file, std::int64_t F, int M, int d) {
  std::vector<float> rows(file.size());
  const std::int64_t D = static_cast<std::int64_t>(M) * d;
  for (int m = 0; m < M; ++m)
    for (std::int64_t f = 0; f < F; ++f)
      for (int i = 0; i < d; ++i) rows[f * D + m * d + i] = file[(m * F + f) * d + i];
  return rows;
}

void add_model_tensors(const Crosscoder& model, io::SafetensorsWriter& writer) {
  const CrosscoderConfig& c = model.config();
  const std::int64_t F = c.latents, M = c.sources, d = c.width, D = c.input_width();
  const CrosscoderParameters& p = model.parameters();
  writer.add_float("encoder.weight", {M, d, F}, encoder_to_file(p.encoder_weight.download(), F, D));
  writer.add_float("encoder.bias", {F}, p.encoder_bias.download());
  writer.add_float("decoder.weight", {M, F, d},
                   decoder_to_file(p.decoder_weight.download(), F, c.sources, c.width));
  writer.add_float("decoder.bias", {M, d}, p.decoder_bias.download());
  writer.add_int64("k", {}, std::vector<std::int64_t>{c.k});
  if (c.activation == Activation::jumprelu) {
    writer.add_float("threshold", {F}, p.threshold.download());
  } else if (c.activation == Activation::batchtopk) {
    writer.add_float("threshold", {}, std::vector<float>{model.batch_threshold()});
  }
  writer.add_float("normaliser.scale", {M}, model.normaliser().scale);
  writer.add_float("normaliser.mean", {M, d}, model.normaliser().mean);
  writer.set_metadata("format", kFormat);
  writer.set_metadata("library_version", version_string);
  writer.set_metadata("config", c.to_json());
  writer.set_metadata("normaliser_fitted", model.normaliser().fitted ? "true" : "false");
}

}  // namespace

void Crosscoder::save(const std::filesystem::path& path,
                      const std::map<std::string, std::string>& extra_metadata) const {
  io::SafetensorsWriter writer;
  add_model_tensors(*this, writer);
  for (const auto& [key, value] : extra_metadata) writer.set_metadata(key, value);
  writer.write(path);
}

Crosscoder Crosscoder::load(const std::filesystem::path& path, std::shared_ptr<Backend> backend) {
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  const auto& metadata = file.metadata();
  const auto config_entry = metadata.find("config");
  if (config_entry == metadata.end()) {
    throw Error(fmt::format("{}: not a crosscoder checkpoint (no 'config' in __metadata__)",
                            path.string()));
  }
  CrosscoderConfig config;
  try {
    config = CrosscoderConfig::from_json(config_entry->second);
  } catch (const Error& error) {
    throw Error(fmt::format("{}: {}", path.string(), error.what()));
  }
  Crosscoder model(config, std::move(backend));
  const std::int64_t F = config.latents, M = config.sources, d = config.width,
                     D = config.input_width();
  CrosscoderParameters& p = model.parameters_;
  p.encoder_weight.upload(encoder_from_file(file.read_float("encoder.weight", {M, d, F}), F, D));
  p.encoder_bias.upload(file.read_float("encoder.bias", {F}));
  p.decoder_weight.upload(decoder_from_file(file.read_float("decoder.weight", {M, F, d}), F,
                                            config.sources, config.width));
  p.decoder_bias.upload(file.read_float("decoder.bias", {M, d}));
  if (config.activation == Activation::jumprelu) {
    p.threshold.upload(file.read_float("threshold", {F}));
  } else if (config.activation == Activation::batchtopk) {
    model.batch_threshold_ = file.read_float("threshold", {}).at(0);
  }
  Normaliser normaliser;
  normaliser.scale = file.read_float("normaliser.scale", {M});
  normaliser.mean = file.read_float("normaliser.mean", {M, d});
  const auto fitted = metadata.find("normaliser_fitted");
  if (fitted != metadata.end() && fitted->second == "true") {
    model.set_normaliser(std::move(normaliser));
  } else {
    model.normaliser_ = std::move(normaliser);
    model.upload_normaliser();
  }
  return model;
}

void Trainer::save_checkpoint(const std::filesystem::path& path,
                              const std::string& data_state) const {
  io::SafetensorsWriter writer;
  add_model_tensors(model_, writer);
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
