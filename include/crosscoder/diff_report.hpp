#pragma once
/// @file diff_report.hpp
/// The model-diffing report: every per-latent metric in one table, ranking by any metric, and
/// JSON output.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "crosscoder/contrast.hpp"
#include "crosscoder/data_metrics.hpp"
#include "crosscoder/latent_examples.hpp"
#include "crosscoder/latent_metrics.hpp"
#include "crosscoder/latent_scaling.hpp"

namespace crosscoder {

/// What is known about a crosscoder's latents: weight metrics always, data metrics and the
/// contrast between labelled rows when data (and labels) were given.
struct DiffReport {
  std::string model_config;  ///< CrosscoderConfig JSON
  /// One name per source (the dataset's when data was given; else "source0", ...).
  std::vector<std::string> source_names;
  WeightMetrics weights;
  std::optional<DataMetrics> data;
  std::optional<LatentContrast> contrast;
  std::optional<LatentScaling> scaling;  ///< for the latents it measured
  /// Top and sampled examples per latent (DiffOptions::examples), with token windows when the
  /// dataset has token ids. Not part of the JSON: save_examples writes them to their own file.
  std::optional<LatentExamples> examples;
};

/// Names accepted by rank_latents and latent_metric: decoder_norm_<m>, relative_norm_<m>,
/// normalised_difference (two sources), decoder_cosine, encoder_cosine (first source pair),
/// frequency, mean_activation, max_activation (need data), cohens_d, auroc, freq_pos,
/// freq_neg (need labels), beta_error_<m>, beta_reconstruction_<m>, nu_error_<m>,
/// nu_reconstruction_<m> (Latent Scaling; NaN for latents it did not measure).
std::vector<std::string> latent_metric_names(const DiffReport& report);

/// The named metric for every latent, [F]. @throws Error naming the metric when it is unknown
/// or needs data the report lacks.
std::vector<double> latent_metric(const DiffReport& report, std::string_view name);

/// Latents sorted by the named metric (descending unless `ascending`; ties by index; NaN last),
/// keeping
/// only those of class `only_class` when given (kSharedLatent, kMixedLatent or a source index).
std::vector<std::int32_t> rank_latents(const DiffReport& report, std::string_view metric,
                                       bool ascending = false,
                                       std::optional<int> only_class = std::nullopt);

/// "shared", "exclusive:<m>" or "mixed"; parse_latent_class is its inverse.
std::string latent_class_name(int latent_class);
int parse_latent_class(std::string_view text);

/// The report as JSON: a summary (class counts, data and contrast totals) and one object per
/// latent with every metric (docs/diff.md has the schema).
std::string diff_report_json(const DiffReport& report);
/// Writes diff_report_json atomically. @throws Error naming the path.
void write_diff_report_json(const std::filesystem::path& path, const DiffReport& report);

}  // namespace crosscoder
