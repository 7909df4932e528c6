#include "crosscoder/config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>

#include "crosscoder/error.hpp"
#include "enum_names.hpp"

namespace crosscoder {

namespace {

constexpr detail::EnumName<Activation> kActivationNames[] = {{Activation::relu, "relu"},
                                                             {Activation::topk, "topk"},
                                                             {Activation::batchtopk, "batchtopk"},
                                                             {Activation::jumprelu, "jumprelu"}};
constexpr detail::EnumName<Normalisation> kNormalisationNames[] = {
    {Normalisation::none, "none"},
    {Normalisation::scalar, "scalar"},
    {Normalisation::mean_and_scale, "mean_and_scale"},
    {Normalisation::per_channel, "per_channel"}};

}  // namespace

std::string_view to_string(Activation activation) noexcept {
  return detail::enum_name(kActivationNames, activation);
}

Activation parse_activation(std::string_view text) {
  return detail::parse_enum(kActivationNames, text, "activation");
}

std::string_view to_string(Normalisation normalisation) noexcept {
  return detail::enum_name(kNormalisationNames, normalisation);
}

Normalisation parse_normalisation(std::string_view text) {
  return detail::parse_enum(kNormalisationNames, text, "normalisation");
}

int CrosscoderConfig::shared_latents() const noexcept {
  return latents - std::accumulate(exclusive.begin(), exclusive.end(), 0);
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

std::vector<int> CrosscoderConfig::matryoshka_prefix_ends() const {
  std::vector<int> ends;
  int end = 0;
  for (const int size : matryoshka_groups) ends.push_back(end += size);
  return ends;
}

int CrosscoderConfig::models() const noexcept {
  if (source_models.empty()) return sources;
  return *std::max_element(source_models.begin(), source_models.end()) + 1;
}

int CrosscoderConfig::model_of(int source) const noexcept {
  return source_models.empty() ? source : source_models[static_cast<std::size_t>(source)];
}

bool CrosscoderConfig::latent_uses_source(int latent, int source) const noexcept {
  const int owner = exclusive_owner(latent);
  return owner < 0 || owner == model_of(source);
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
  if (!source_models.empty()) {
    if (static_cast<int>(source_models.size()) != sources) {
      throw Error(fmt::format("config: source_models lists {} models for {} sources",
                              source_models.size(), sources));
    }
    std::vector<bool> used(source_models.size(), false);
    for (const int model : source_models) {
      if (model < 0 || model >= sources)
        throw Error(
            fmt::format("config: source_models holds model {}, outside [0, {})", model, sources));
      used[static_cast<std::size_t>(model)] = true;
    }
    for (int model = 0; model < models(); ++model) {
      if (!used[static_cast<std::size_t>(model)])
        throw Error(fmt::format("config: source_models numbers models 0 … {} but none is {}",
                                models() - 1, model));
    }
  }
  if (!exclusive.empty()) {
    if (static_cast<int>(exclusive.size()) != models()) {
      throw Error(fmt::format("config: exclusive lists {} blocks but there are {} models",
                              exclusive.size(), models()));
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
  if (!matryoshka_groups.empty()) {
    if (activation != Activation::topk && activation != Activation::batchtopk) {
      throw Error(fmt::format("config: matryoshka_groups need topk or batchtopk, not {}",
                              to_string(activation)));
    }
    long total = 0;
    for (const int size : matryoshka_groups) {
      if (size < 0) throw Error(fmt::format("config: matryoshka group size {} is negative", size));
      total += size;
    }
    if (total != latents) {
      throw Error(
          fmt::format("config: matryoshka_groups sum to {}, not latents ({})", total, latents));
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
  // Only when nested, so that every other config reads and writes as before.
  if (!matryoshka_groups.empty()) json["matryoshka_groups"] = matryoshka_groups;
  if (!source_models.empty()) json["source_models"] = source_models;
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
    if (json.contains("source_models"))
      config.source_models = json.at("source_models").get<std::vector<int>>();
    if (json.contains("matryoshka_groups"))
      config.matryoshka_groups = json.at("matryoshka_groups").get<std::vector<int>>();
  } catch (const nlohmann::json::exception& error) {
    throw Error(fmt::format("crosscoder config: a field has the wrong type: {}", error.what()));
  }
  config.validate();
  return config;
}

}  // namespace crosscoder
