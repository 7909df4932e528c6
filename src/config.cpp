#include "crosscoder/config.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <numeric>

#include "crosscoder/error.hpp"

namespace crosscoder {

std::string_view to_string(Activation activation) noexcept {
  switch (activation) {
    case Activation::relu:
      return "relu";
    case Activation::topk:
      return "topk";
    case Activation::batchtopk:
      return "batchtopk";
    case Activation::jumprelu:
      return "jumprelu";
  }
  return "unknown";
}

Activation parse_activation(std::string_view text) {
  for (Activation a :
       {Activation::relu, Activation::topk, Activation::batchtopk, Activation::jumprelu}) {
    if (text == to_string(a)) return a;
  }
  throw Error(
      fmt::format("unknown activation '{}': expected relu, topk, batchtopk or jumprelu", text));
}

std::string_view to_string(Normalisation normalisation) noexcept {
  switch (normalisation) {
    case Normalisation::none:
      return "none";
    case Normalisation::scalar:
      return "scalar";
    case Normalisation::mean_and_scale:
      return "mean_and_scale";
  }
  return "unknown";
}

Normalisation parse_normalisation(std::string_view text) {
  for (Normalisation n :
       {Normalisation::none, Normalisation::scalar, Normalisation::mean_and_scale}) {
    if (text == to_string(n)) return n;
  }
  throw Error(
      fmt::format("unknown normalisation '{}': expected none, scalar or mean_and_scale", text));
}

int CrosscoderConfig::shared_latents() const noexcept {
  return latents - std::accumulate(exclusive.begin(), exclusive.end(), 0);
}

int CrosscoderConfig::exclusive_begin(int source) const noexcept {
  int begin = shared_latents();
  for (int m = 0; m < source && m < static_cast<int>(exclusive.size()); ++m) begin += exclusive[m];
  return begin;
}

int CrosscoderConfig::exclusive_owner(int latent) const noexcept {
  int begin = shared_latents();
  if (latent < begin) return -1;
  for (int m = 0; m < static_cast<int>(exclusive.size()); ++m) {
    if (latent < begin + exclusive[m]) return m;
    begin += exclusive[m];
  }
  return -1;
}

bool CrosscoderConfig::latent_uses_source(int latent, int source) const noexcept {
  const int owner = exclusive_owner(latent);
  return owner < 0 || owner == source;
}

void CrosscoderConfig::validate() const {
  if (sources < 1) throw Error(fmt::format("config: sources must be at least 1, got {}", sources));
  if (width < 1) throw Error(fmt::format("config: width must be at least 1, got {}", width));
  if (latents < 1) throw Error(fmt::format("config: latents must be at least 1, got {}", latents));
  if (activation == Activation::topk || activation == Activation::batchtopk) {
    if (k < 1 || k >= latents) {
      throw Error(fmt::format("config: k must satisfy 0 < k < latents ({}) for {}, got k = {}",
                              latents, to_string(activation), k));
    }
  }
  if (!exclusive.empty()) {
    if (static_cast<int>(exclusive.size()) != sources) {
      throw Error(fmt::format("config: exclusive lists {} blocks but there are {} sources",
                              exclusive.size(), sources));
    }
    long total = 0;
    for (int count : exclusive) {
      if (count < 0) throw Error(fmt::format("config: exclusive block size {} is negative", count));
      total += count;
    }
    if (total > latents) {
      throw Error(
          fmt::format("config: exclusive latents ({}) exceed latents ({})", total, latents));
    }
  }
  if (activation == Activation::jumprelu &&
      (!(jumprelu_bandwidth > 0.0f) || !(jumprelu_initial_threshold >= 0.0f))) {
    throw Error("config: jumprelu_bandwidth must be positive and jumprelu_initial_threshold ≥ 0");
  }
}

std::string CrosscoderConfig::to_json() const {
  nlohmann::json json = {
      {"sources", sources},
      {"width", width},
      {"latents", latents},
      {"activation", std::string(to_string(activation))},
      {"k", k},
      {"exclusive", exclusive},
      {"normalisation", std::string(to_string(normalisation))},
      {"jumprelu_initial_threshold", jumprelu_initial_threshold},
      {"jumprelu_bandwidth", jumprelu_bandwidth},
  };
  return json.dump();
}

CrosscoderConfig CrosscoderConfig::from_json(std::string_view text) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    throw Error(fmt::format("crosscoder config: not valid JSON: {}", error.what()));
  }
  if (!json.is_object()) throw Error("crosscoder config: JSON must be an object");
  CrosscoderConfig config;
  const auto field = [&](const char* name) -> const nlohmann::json& {
    if (!json.contains(name))
      throw Error(fmt::format("crosscoder config: missing field '{}'", name));
    return json.at(name);
  };
  try {
    config.sources = field("sources").get<int>();
    config.width = field("width").get<int>();
    config.latents = field("latents").get<int>();
    config.activation = parse_activation(field("activation").get<std::string>());
    config.k = field("k").get<int>();
    config.exclusive = field("exclusive").get<std::vector<int>>();
    config.normalisation = parse_normalisation(field("normalisation").get<std::string>());
    config.jumprelu_initial_threshold = field("jumprelu_initial_threshold").get<float>();
    config.jumprelu_bandwidth = field("jumprelu_bandwidth").get<float>();
  } catch (const nlohmann::json::exception& error) {
    throw Error(fmt::format("crosscoder config: a field has the wrong type: {}", error.what()));
  }
  config.validate();
  return config;
}

}  // namespace crosscoder
