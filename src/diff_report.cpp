#include "crosscoder/diff_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "crosscoder/error.hpp"
#include "io/atomic_file.hpp"

namespace crosscoder {

std::string latent_class_name(int latent_class) {
  if (latent_class == kSharedLatent) return "shared";
  if (latent_class == kMixedLatent) return "mixed";
  return fmt::format("exclusive:{}", latent_class);
}

int parse_latent_class(std::string_view text) {
  if (text == "shared") return kSharedLatent;
  if (text == "mixed") return kMixedLatent;
  if (text.starts_with("exclusive:")) {
    const std::string number(text.substr(10));
    if (!number.empty() && std::all_of(number.begin(), number.end(), ::isdigit))
      return std::stoi(number);
  }
  throw Error(
      fmt::format("unknown latent class '{}': expected shared, mixed or exclusive:<source>", text));
}

std::vector<std::string> latent_metric_names(const DiffReport& report) {
  std::vector<std::string> names;
  for (int m = 0; m < report.weights.sources; ++m) {
    names.push_back(fmt::format("decoder_norm_{}", m));
    names.push_back(fmt::format("relative_norm_{}", m));
  }
  for (int k = 0; k < report.weights.models; ++k) {
    names.push_back(fmt::format("model_norm_{}", k));
    names.push_back(fmt::format("model_relative_norm_{}", k));
  }
  if (report.weights.sources == 2) names.push_back("normalised_difference");
  if (report.weights.sources >= 2) {
    names.push_back("decoder_cosine");
    names.push_back("encoder_cosine");
  }
  if (report.data) names.insert(names.end(), {"frequency", "mean_activation", "max_activation"});
  if (report.contrast) names.insert(names.end(), {"cohens_d", "auroc", "freq_pos", "freq_neg"});
  if (report.scaling) {
    for (const char* prefix :
         {"beta_error", "beta_reconstruction", "nu_error", "nu_reconstruction"})
      for (int m = 0; m < report.weights.sources; ++m)
        names.push_back(fmt::format("{}_{}", prefix, m));
  }
  return names;
}

std::vector<double> latent_metric(const DiffReport& report, std::string_view name) {
  const WeightMetrics& w = report.weights;
  const auto F = static_cast<std::size_t>(w.latents);
  const auto per_source = [&](const std::vector<float>& values, int m) {
    std::vector<double> out(F);
    for (std::size_t f = 0; f < F; ++f)
      out[f] = values[f * static_cast<std::size_t>(w.sources) + static_cast<std::size_t>(m)];
    return out;
  };
  const auto first_pair = [&](const std::vector<float>& values) {
    const std::size_t pairs = values.size() / std::max<std::size_t>(F, 1);
    std::vector<double> out(F);
    for (std::size_t f = 0; f < F; ++f) out[f] = values[f * pairs];
    return out;
  };
  for (int m = 0; m < w.sources; ++m) {
    if (name == fmt::format("decoder_norm_{}", m)) return per_source(w.decoder_norm, m);
    if (name == fmt::format("relative_norm_{}", m)) return per_source(w.relative_norm, m);
  }
  for (int k = 0; k < w.models; ++k) {
    const auto per_model = [&](const std::vector<float>& values) {
      std::vector<double> out(F);
      for (std::size_t f = 0; f < F; ++f)
        out[f] = values[f * static_cast<std::size_t>(w.models) + static_cast<std::size_t>(k)];
      return out;
    };
    if (name == fmt::format("model_norm_{}", k)) return per_model(w.model_norm);
    if (name == fmt::format("model_relative_norm_{}", k)) return per_model(w.model_relative_norm);
  }
  if (name == "normalised_difference" && !w.normalised_difference.empty()) {
    return {w.normalised_difference.begin(), w.normalised_difference.end()};
  }
  if (name == "decoder_cosine" && w.sources >= 2) return first_pair(w.decoder_cosine);
  if (name == "encoder_cosine" && w.sources >= 2) return first_pair(w.encoder_cosine);
  if (report.data) {
    if (name == "frequency") return report.data->frequency;
    if (name == "mean_activation") return report.data->mean_activation;
    if (name == "max_activation") return report.data->max_activation;
  }
  if (report.contrast) {
    if (name == "cohens_d") return report.contrast->cohens_d;
    if (name == "auroc") return report.contrast->auroc;
    if (name == "freq_pos") return report.contrast->firing_positive;
    if (name == "freq_neg") return report.contrast->firing_negative;
  }
  if (report.scaling) {
    const LatentScaling& s = report.scaling.value();
    const auto M = static_cast<std::size_t>(w.sources);
    for (int m = 0; m < w.sources; ++m) {
      const std::pair<const char*, const std::vector<double>*> tables[] = {
          {"beta_error", &s.beta_error},
          {"beta_reconstruction", &s.beta_reconstruction},
          {"nu_error", &s.nu_error},
          {"nu_reconstruction", &s.nu_reconstruction}};
      for (const auto& [prefix, table] : tables) {
        if (name != fmt::format("{}_{}", prefix, m)) continue;
        std::vector<double> out(F, std::numeric_limits<double>::quiet_NaN());
        for (std::size_t i = 0; i < s.latents.size(); ++i)
          out[static_cast<std::size_t>(s.latents[i])] =
              (*table)[i * M + static_cast<std::size_t>(m)];
        return out;
      }
    }
  }
  std::string known;
  for (const std::string& n : latent_metric_names(report)) known += (known.empty() ? "" : ", ") + n;
  throw Error(
      fmt::format("unknown or unavailable latent metric '{}' (available: {})", name, known));
}

std::vector<std::int32_t> rank_latents(const DiffReport& report, std::string_view metric,
                                       bool ascending, std::optional<int> only_class) {
  const std::vector<double> values = latent_metric(report, metric);
  std::vector<std::int32_t> order;
  for (std::int64_t f = 0; f < report.weights.latents; ++f) {
    if (!only_class || report.weights.latent_class[f] == *only_class)
      order.push_back(static_cast<std::int32_t>(f));
  }
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    if (std::isnan(values[a]) || std::isnan(values[b]))
      return !std::isnan(values[a]) && std::isnan(values[b]);
    return ascending ? values[a] < values[b] : values[a] > values[b];
  });
  return order;
}

std::string diff_report_json(const DiffReport& report) {
  using json = nlohmann::ordered_json;
  const WeightMetrics& w = report.weights;
  json summary;
  std::map<std::string, std::int64_t> classes;
  for (int c : w.latent_class) ++classes[latent_class_name(c)];
  summary["class_rule"] = std::string(to_string(w.class_rule));
  summary["exclusive_threshold"] = w.exclusive_threshold;
  summary["classes"] = classes;
  if (w.models > 0) {
    // A crosscoder across layers: classes by the model norms (all of a model's blocks).
    std::map<std::string, std::int64_t> model_classes;
    for (int c : w.model_class) ++model_classes[latent_class_name(c)];
    summary["model_classes"] = model_classes;
    summary["source_models"] = w.source_models;
  }
  if (report.data) {
    summary["fve"] = report.data->fve;
    summary["l0"] = report.data->l0;
    summary["dead_fraction"] = static_cast<double>(report.data->dead_latents) /
                               static_cast<double>(std::max<std::int64_t>(w.latents, 1));
    summary["data"] = {{"rows", report.data->rows},
                       {"fve", report.data->fve},
                       {"mse", report.data->mse},
                       {"l0", report.data->l0},
                       {"dead_latents", report.data->dead_latents}};
    // Density: how many latents fire often, overall and per class (dense latents are as
    // suspect as dead ones; SAEBench reports the same thresholds).
    std::map<std::string, std::array<std::int64_t, 4>> by_class;  // latents, dead, >1%, >10%
    std::int64_t over_1 = 0, over_10 = 0;
    for (std::size_t f = 0; f < static_cast<std::size_t>(w.latents); ++f) {
      const double frequency = report.data->frequency[f];
      auto& counts = by_class[latent_class_name(w.latent_class[f])];
      ++counts[0];
      counts[1] += frequency == 0.0 ? 1 : 0;
      counts[2] += frequency > 0.01 ? 1 : 0;
      counts[3] += frequency > 0.1 ? 1 : 0;
      over_1 += frequency > 0.01 ? 1 : 0;
      over_10 += frequency > 0.1 ? 1 : 0;
    }
    summary["data"]["freq_over_1pct"] = over_1;
    summary["data"]["freq_over_10pct"] = over_10;
    json density;
    for (const auto& [name, counts] : by_class) {
      density[name] = {{"latents", counts[0]},
                       {"dead", counts[1]},
                       {"freq_over_1pct", counts[2]},
                       {"freq_over_10pct", counts[3]}};
    }
    summary["data"]["density_by_class"] = std::move(density);
  }
  if (report.examples) {
    const LatentExamples& e = *report.examples;
    summary["examples"] = {{"top", e.options.top},
                           {"samples", e.options.samples},
                           {"rows", e.rows},
                           {"token_windows", e.has_windows()},
                           {"windows_stop_at_documents", e.windows_stop_at_documents}};
  }
  if (report.contrast) {
    summary["contrast"] = {{"positives", report.contrast->positives},
                           {"negatives", report.contrast->negatives},
                           {"cohens_d", std::string(to_string(report.contrast->cohens_d_kind))}};
  }
  std::vector<std::int64_t> scaling_slot(static_cast<std::size_t>(w.latents), -1);
  if (report.scaling) {
    summary["latent_scaling"] = {{"latents", report.scaling->latents.size()}};
    for (std::size_t i = 0; i < report.scaling->latents.size(); ++i)
      scaling_slot[static_cast<std::size_t>(report.scaling->latents[i])] =
          static_cast<std::int64_t>(i);
  }
  json latents = json::array();
  const auto M = static_cast<std::size_t>(w.sources);
  const std::size_t pairs = M * (M - 1) / 2;
  for (std::size_t f = 0; f < static_cast<std::size_t>(w.latents); ++f) {
    json entry;
    entry["index"] = f;
    entry["class"] = latent_class_name(w.latent_class[f]);
    entry["decoder_norm"] =
        std::vector<float>(w.decoder_norm.begin() + static_cast<std::ptrdiff_t>(f * M),
                           w.decoder_norm.begin() + static_cast<std::ptrdiff_t>((f + 1) * M));
    entry["relative_norm"] =
        std::vector<float>(w.relative_norm.begin() + static_cast<std::ptrdiff_t>(f * M),
                           w.relative_norm.begin() + static_cast<std::ptrdiff_t>((f + 1) * M));
    if (!w.normalised_difference.empty())
      entry["normalised_difference"] = w.normalised_difference[f];
    if (w.models > 0) {
      const auto K = static_cast<std::size_t>(w.models);
      entry["model_norm"] =
          std::vector<float>(w.model_norm.begin() + static_cast<std::ptrdiff_t>(f * K),
                             w.model_norm.begin() + static_cast<std::ptrdiff_t>((f + 1) * K));
      entry["model_relative_norm"] = std::vector<float>(
          w.model_relative_norm.begin() + static_cast<std::ptrdiff_t>(f * K),
          w.model_relative_norm.begin() + static_cast<std::ptrdiff_t>((f + 1) * K));
      entry["model_class"] = latent_class_name(w.model_class[f]);
      entry["peak_source"] = w.peak_source[f];
    }
    if (pairs > 0) {
      entry["cosine"] = w.decoder_cosine[f * pairs];  // sources 0 and 1: the usual pair
      entry["decoder_cosine"] = std::vector<float>(
          w.decoder_cosine.begin() + static_cast<std::ptrdiff_t>(f * pairs),
          w.decoder_cosine.begin() + static_cast<std::ptrdiff_t>((f + 1) * pairs));
      entry["encoder_cosine"] = std::vector<float>(
          w.encoder_cosine.begin() + static_cast<std::ptrdiff_t>(f * pairs),
          w.encoder_cosine.begin() + static_cast<std::ptrdiff_t>((f + 1) * pairs));
    }
    if (report.data) {
      entry["frequency"] = report.data->frequency[f];
      entry["mean_activation"] = report.data->mean_activation[f];
      entry["max_activation"] = report.data->max_activation[f];
    }
    if (report.contrast) {
      entry["cohens_d"] = report.contrast->cohens_d[f];
      entry["auroc"] = report.contrast->auroc[f];
      entry["freq_pos"] = report.contrast->firing_positive[f];
      entry["freq_neg"] = report.contrast->firing_negative[f];
    }
    if (scaling_slot[f] >= 0) {
      const LatentScaling& s = report.scaling.value();
      const auto i = static_cast<std::size_t>(scaling_slot[f]);
      const auto row = [&](const std::vector<double>& table) {
        return std::vector<double>(table.begin() + static_cast<std::ptrdiff_t>(i * M),
                                   table.begin() + static_cast<std::ptrdiff_t>((i + 1) * M));
      };
      entry["latent_scaling"] = {{"reference_source", s.reference_source[i]},
                                 {"active_rows", s.active_rows[i]},
                                 {"beta_error", row(s.beta_error)},
                                 {"beta_reconstruction", row(s.beta_reconstruction)},
                                 {"nu_error", row(s.nu_error)},
                                 {"nu_reconstruction", row(s.nu_reconstruction)}};
    }
    latents.push_back(std::move(entry));
  }
  json root;
  root["format"] = "crosscoder-diff-1";
  root["n_sources"] = w.sources;
  root["n_latents"] = w.latents;
  const json config = json::parse(report.model_config);
  root["d"] = config.contains("width") ? config["width"] : json(nullptr);
  std::vector<std::string> names = report.source_names;
  for (int m = static_cast<int>(names.size()); m < w.sources; ++m)
    names.push_back(fmt::format("source{}", m));
  root["source_names"] = names;
  root["config"] = config;
  root["summary"] = std::move(summary);
  root["latents"] = std::move(latents);
  return root.dump(1);
}

void write_diff_report_json(const std::filesystem::path& path, const DiffReport& report) {
  const std::string text = diff_report_json(report);
  io::write_file_atomically(
      path, [&](std::FILE* stream) { io::write_bytes(stream, text.data(), text.size(), path); });
}

}  // namespace crosscoder
