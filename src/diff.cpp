#include "crosscoder/diff.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>

#include "crosscoder/error.hpp"
#include "crosscoder/log.hpp"
#include "dataset_pass.hpp"

namespace crosscoder {

void check_fits(const Crosscoder& model, const ActivationDataset& dataset) {
  const CrosscoderConfig& c = model.config();
  if (dataset.sources() != c.sources || dataset.width() != c.width) {
    throw Error(
        fmt::format("the crosscoder has {} sources of width {} but the data has {} of width {}",
                    c.sources, c.width, dataset.sources(), dataset.width()));
  }
}

std::vector<std::int32_t> latents_exclusive_to_last(const WeightMetrics& weights,
                                                    std::size_t maximum) {
  std::vector<std::int32_t> latents;
  if (weights.sources < 2) return latents;
  const auto F = static_cast<std::int32_t>(weights.latent_class.size());
  const int last = weights.sources - 1;
  for (std::int32_t f = 0; f < F; ++f) {
    if (weights.latent_class[static_cast<std::size_t>(f)] == last) latents.push_back(f);
  }
  if (latents.size() > maximum) {
    const auto relative = [&](std::int32_t f) {
      return weights.relative_norm[static_cast<std::size_t>(f * weights.sources + last)];
    };
    std::partial_sort(latents.begin(), latents.begin() + static_cast<std::ptrdiff_t>(maximum),
                      latents.end(),
                      [&](std::int32_t a, std::int32_t b) { return relative(a) > relative(b); });
    latents.resize(maximum);
  }
  std::sort(latents.begin(), latents.end());
  return latents;
}

DiffReport diff(const Crosscoder& model, const DiffOptions& options) {
  DiffReport report;
  report.model_config = model.config().to_json();
  report.weights = weight_metrics(model, options.exclusive_threshold, options.class_rule);
  return report;
}

struct DiffAccumulator::State {
  State(const Crosscoder& crosscoder, const DiffOptions& options, bool labelled)
      : model(crosscoder),
        base(diff(crosscoder, options)),
        data(crosscoder),
        contrast(crosscoder.config().latents),
        cohens_d(options.cohens_d),
        with_labels(labelled) {
    std::vector<std::int32_t> measured;
    switch (options.scaling) {
      case ScalingLatents::exclusive_to_last:
        measured = latents_exclusive_to_last(base.weights, options.max_scaling_latents);
        break;
      case ScalingLatents::listed:
        measured = options.scaling_latents;
        break;
      case ScalingLatents::none:
        break;
    }
    if (!measured.empty()) scaling.emplace(crosscoder, std::move(measured));
    if (options.examples) examples.emplace(crosscoder.config().latents, *options.examples);
  }

  const Crosscoder& model;
  DiffReport base;  // the weight metrics, computed once
  DataMetricsAccumulator data;
  ContrastAccumulator contrast;
  std::optional<LatentScalingAccumulator> scaling;
  std::optional<LatentExampleCollector> examples;
  std::int64_t rows_added = 0;
  CohensD cohens_d;
  bool with_labels;
};

DiffAccumulator::DiffAccumulator(const Crosscoder& model, const DiffOptions& options,
                                 bool with_labels)
    : state_(std::make_unique<State>(model, options, with_labels)) {}

DiffAccumulator::~DiffAccumulator() = default;

void DiffAccumulator::add(std::span<const float> x, std::int64_t rows,
                          std::span<const std::int8_t> labels) {
  State& s = *state_;
  if (s.with_labels && labels.size() != static_cast<std::size_t>(rows)) {
    throw Error(fmt::format("diff: {} labels for a batch of {} rows", labels.size(), rows));
  }
  if (!s.with_labels && !labels.empty()) {
    throw Error("diff: labels given to a DiffAccumulator constructed without labels");
  }
  const Crosscoder::Inference inference = s.model.infer(x, rows);  // once for every metric
  s.data.add(x, inference);
  if (s.scaling) s.scaling->add(inference);
  // ContrastAccumulator ignores labels other than 0 and 1 itself.
  if (s.with_labels) s.contrast.add(inference.codes, labels);
  if (s.examples) s.examples->add(inference.codes, s.rows_added);
  s.rows_added += rows;
}

DiffReport DiffAccumulator::result() const {
  const State& s = *state_;
  DiffReport report = s.base;
  report.data = s.data.result();
  if (s.with_labels) {
    // Too few positives or negatives: say so, and still report everything else.
    try {
      report.contrast = s.contrast.result(s.cohens_d);
    } catch (const Error& error) {
      log_message(LogLevel::warning, fmt::format("no contrast ranking: {}", error.what()));
    }
  }
  if (s.scaling) report.scaling = s.scaling->result();
  if (s.examples) report.examples = s.examples->result();
  return report;
}

DiffReport diff(const Crosscoder& model, const ActivationDataset& dataset,
                const DiffOptions& options) {
  check_fits(model, dataset);
  if (options.rows < 0) throw Error(fmt::format("diff: rows {} is negative", options.rows));
  const std::int64_t rows =
      options.rows > 0 ? std::min(options.rows, dataset.rows()) : dataset.rows();
  if (options.labels && options.labels->size() < static_cast<std::size_t>(rows)) {
    throw Error(fmt::format("diff: {} labels for {} rows", options.labels->size(), rows));
  }
  const bool with_labels = options.labels.has_value() || dataset.has_labels();
  DiffAccumulator accumulator(model, options, with_labels);
  std::vector<std::int8_t> labels;
  detail::for_each_chunk(dataset, 0, rows, options.pass, "diff",
                         [&](std::int64_t begin, std::int64_t n, std::span<const float> x) {
                           if (!with_labels) return accumulator.add(x, n);
                           if (options.labels) {
                             const auto start = options.labels->begin() + begin;
                             labels.assign(start, start + n);
                           } else {
                             labels.resize(static_cast<std::size_t>(n));
                             dataset.read_labels(begin, n, labels.data());
                           }
                           accumulator.add(x, n, labels);
                         });
  DiffReport report = accumulator.result();
  report.source_names = dataset.source_names();
  if (report.examples && dataset.has_token_ids()) attach_windows(*report.examples, dataset);
  return report;
}

DataMetrics measure_data(const Crosscoder& model, const ActivationDataset& dataset,
                         std::int64_t first, std::int64_t count, const PassControl& pass) {
  check_fits(model, dataset);
  if (first < 0 || count <= 0 || first + count > dataset.rows()) {
    throw Error(fmt::format("measure_data: rows [{}, {}) are not within the dataset's {} rows",
                            first, first + count, dataset.rows()));
  }
  DataMetricsAccumulator metrics(model);
  detail::for_each_chunk(
      dataset, first, count, pass, "measure",
      [&](std::int64_t, std::int64_t n, std::span<const float> x) { metrics.add(x, n); });
  return metrics.result();
}

}  // namespace crosscoder
