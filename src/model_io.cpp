// The model's checkpoint: Crosscoder::save and Crosscoder::load in safetensors, with
// dictionary_learning's crosscoder tensor names so that Python users can load them
// (docs/formats.md has the full layout). Training checkpoints add to it (trainer_checkpoint.cpp).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "crosscoder/error.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "crosscoder/log.hpp"
#include "crosscoder/model.hpp"
#include "crosscoder/version.hpp"
#include "model_tensors.hpp"

namespace crosscoder {
namespace {

constexpr const char* kFormat = "crosscoder-checkpoint-1";

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

}  // namespace

void detail::add_model_tensors(const Crosscoder& model, io::SafetensorsWriter& writer) {
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
  if (c.normalisation == Normalisation::per_channel) {
    writer.add_float("normaliser.scale", {M, d}, model.normaliser().scale);
  } else {
    writer.add_float("normaliser.scale", {M}, model.normaliser().scale);
  }
  writer.add_float("normaliser.mean", {M, d}, model.normaliser().mean);
  writer.set_metadata("format", kFormat);
  writer.set_metadata("library_version", version_string);
  writer.set_metadata("config", c.to_json());
  writer.set_metadata("normaliser_fitted", model.normaliser().fitted ? "true" : "false");
}

void Crosscoder::save(const std::filesystem::path& path,
                      const std::map<std::string, std::string>& extra_metadata) const {
  io::SafetensorsWriter writer;
  detail::add_model_tensors(*this, writer);
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
  normaliser.scale = config.normalisation == Normalisation::per_channel
                         ? file.read_float("normaliser.scale", {M, d})
                         : file.read_float("normaliser.scale", {M});
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

}  // namespace crosscoder
