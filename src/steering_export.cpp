#include "crosscoder/steering_export.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "crosscoder/error.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "io/atomic_file.hpp"

namespace crosscoder {

namespace {

void check_directions(const Crosscoder& model, const std::vector<SteeringDirection>& directions) {
  const CrosscoderConfig& c = model.config();
  if (directions.empty()) throw Error("export: no --latent given");
  for (const SteeringDirection& direction : directions) {
    if (direction.latent < 0 || direction.latent >= c.latents) {
      throw Error(
          fmt::format("export: --latent {} is out of range [0, {})", direction.latent, c.latents));
    }
    if (direction.source < 0 || direction.source >= c.sources) {
      throw Error(
          fmt::format("export: --source {} is out of range [0, {})", direction.source, c.sources));
    }
    if (!std::isfinite(direction.scale)) {
      throw Error(fmt::format("export: --scale {} for latent {} is not finite", direction.scale,
                              direction.latent));
    }
  }
}

// GGUF (version 3) building blocks: little-endian scalars, strings as u64 length + bytes.
class GgufBuffer {
 public:
  template <typename T>
  void scalar(T value) {
    const auto* bytes = reinterpret_cast<const char*>(&value);
    data_.append(bytes, sizeof(T));
  }
  void string(const std::string& text) {
    scalar<std::uint64_t>(text.size());
    data_ += text;
  }
  void pad_to(std::size_t alignment) {
    data_.append((alignment - data_.size() % alignment) % alignment, '\0');
  }
  std::string& data() { return data_; }

 private:
  std::string data_;
};

enum GgufType : std::uint32_t { kUint32 = 4, kString = 8 };
constexpr std::uint32_t kGgmlF32 = 0;
constexpr std::size_t kAlignment = 32;

}  // namespace

std::vector<float> summed_direction(const Crosscoder& model,
                                    const std::vector<SteeringDirection>& directions) {
  check_directions(model, directions);
  const CrosscoderConfig& c = model.config();
  const std::vector<float> raw = model.raw_decoder_vectors();  // [F, M·d]
  std::vector<double> sum(static_cast<std::size_t>(c.width), 0.0);
  for (const SteeringDirection& direction : directions) {
    const float* row = raw.data() +
                       static_cast<std::ptrdiff_t>(direction.latent) * c.input_width() +
                       static_cast<std::ptrdiff_t>(direction.source) * c.width;
    for (int i = 0; i < c.width; ++i) sum[static_cast<std::size_t>(i)] += direction.scale * row[i];
  }
  return {sum.begin(), sum.end()};
}

void write_control_vector(const std::filesystem::path& path, const Crosscoder& model,
                          const std::vector<SteeringDirection>& directions,
                          const ControlVectorOptions& options) {
  if (options.layer < 1) {
    throw Error(
        fmt::format("export: --layer {}: llama.cpp adds direction.N to block N's output "
                    "for N ≥ 1 only (block 0 cannot be steered)",
                    options.layer));
  }
  const std::vector<float> direction = summed_direction(model, directions);
  nlohmann::json latents = nlohmann::json::array(), scales = nlohmann::json::array();
  for (const SteeringDirection& d : directions) {
    latents.push_back(d.latent);
    scales.push_back(d.scale);
  }
  const std::vector<std::pair<std::string, std::string>> strings = {
      {"general.architecture", "controlvector"},
      {"controlvector.model_hint", options.model_hint},
      {"crosscoder.latents", latents.dump()},
      {"crosscoder.source", std::to_string(directions.front().source)},
      {"crosscoder.scales", scales.dump()}};
  GgufBuffer gguf;
  gguf.data() = "GGUF";
  gguf.scalar<std::uint32_t>(3);                   // version
  gguf.scalar<std::uint64_t>(1);                   // tensors
  gguf.scalar<std::uint64_t>(strings.size() + 1);  // metadata entries
  for (const auto& [key, value] : strings) {
    gguf.string(key);
    gguf.scalar<std::uint32_t>(kString);
    gguf.string(value);
  }
  // The number of direction tensors, as llama.cpp's cvector-generator and repeng write it
  // (llama.cpp's loader reads the tensors by name and does not use this key).
  gguf.string("controlvector.layer_count");
  gguf.scalar<std::uint32_t>(kUint32);
  gguf.scalar<std::uint32_t>(1);
  gguf.string(fmt::format("direction.{}", options.layer));
  gguf.scalar<std::uint32_t>(1);  // dimensions
  gguf.scalar<std::uint64_t>(direction.size());
  gguf.scalar<std::uint32_t>(kGgmlF32);
  gguf.scalar<std::uint64_t>(0);  // offset within the data section
  gguf.pad_to(kAlignment);
  for (const float value : direction) gguf.scalar<float>(value);
  gguf.pad_to(kAlignment);
  io::write_file_atomically(path, [&](std::FILE* stream) {
    io::write_bytes(stream, gguf.data().data(), gguf.data().size(), path);
  });
}

void write_direction_safetensors(const std::filesystem::path& path, const Crosscoder& model,
                                 const std::vector<SteeringDirection>& directions, int layer,
                                 const std::string& crosscoder_file) {
  const std::vector<float> sum = summed_direction(model, directions);
  const CrosscoderConfig& c = model.config();
  const std::vector<float> raw = model.raw_decoder_vectors();
  io::SafetensorsWriter writer;
  nlohmann::json latents = nlohmann::json::array(), sources = nlohmann::json::array(),
                 scales = nlohmann::json::array();
  std::set<std::pair<int, int>> written;
  for (const SteeringDirection& d : directions) {
    const std::string name = fmt::format("latent_{}.source_{}", d.latent, d.source);
    latents.push_back(d.latent);
    sources.push_back(d.source);
    scales.push_back(d.scale);
    if (!written.insert({d.latent, d.source}).second) continue;  // listed twice: one tensor
    const float* row = raw.data() + static_cast<std::ptrdiff_t>(d.latent) * c.input_width() +
                       static_cast<std::ptrdiff_t>(d.source) * c.width;
    writer.add_float(name, {c.width},
                     std::span<const float>(row, static_cast<std::size_t>(c.width)));
  }
  writer.add_float("direction", {c.width}, sum);
  writer.set_metadata("format", "crosscoder-directions-1");
  writer.set_metadata("crosscoder", crosscoder_file);
  writer.set_metadata("latents", latents.dump());
  writer.set_metadata("sources", sources.dump());
  writer.set_metadata("scales", scales.dump());
  writer.set_metadata("layer", std::to_string(layer));
  writer.set_metadata("units", "raw activations (normaliser undone)");
  writer.write(path);
}

}  // namespace crosscoder
