// `crosscoder diff`: the per-latent model-diffing report of a trained crosscoder
// (crosscoder::diff), written as JSON, CSV or HTML and summarised on the terminal.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "crosscoder/dataset.hpp"
#include "crosscoder/diff.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/latent_examples.hpp"
#include "crosscoder/report_csv.hpp"
#include "crosscoder/report_html.hpp"
#include "crosscoder/vocabulary.hpp"

namespace crosscoder::cli {
namespace {

struct DiffFlags {
  std::string model;
  std::vector<std::string> data;
  std::string labels;
  std::int64_t rows = 0;
  std::string json;
  std::string rank_by;
  std::string only_class;
  int top = 20;
  double exclusive_threshold = 0.9;
  std::string cohens_d = "pooled";
  std::string classes = "relative_norm";
  std::string scaling_latents = "auto";
  std::string csv;
  std::string html;
  std::string device = "auto";
  int examples = 20;
  int example_samples = 10;
  int window_before = 16, window_after = 4;
  std::string examples_out;
  std::string vocabulary;
  int feature_pages = 200;
};

// Where the examples go: --examples-out, else beside --json (X.json → X.examples.safetensors);
// empty when neither is given.
std::string examples_path(const DiffFlags& flags) {
  if (!flags.examples_out.empty()) return flags.examples_out;
  if (flags.json.empty()) return {};
  std::filesystem::path path(flags.json);
  if (path.extension() == ".json") path.replace_extension();
  return path.string() + ".examples.safetensors";
}

// `--scaling-latents`: "auto" (those exclusive to the last source, the fine-tuned model by
// convention), "none", or a comma list of latents below `latents`.
void parse_scaling_latents(const std::string& spec, std::int64_t latents, DiffOptions& options) {
  if (spec == "auto") {
    options.scaling = ScalingLatents::exclusive_to_last;
    return;
  }
  if (spec == "none") {
    options.scaling = ScalingLatents::none;
    return;
  }
  options.scaling = ScalingLatents::listed;
  std::size_t start = 0;
  while (start <= spec.size()) {
    const std::size_t end = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, end - start);
    char* rest = nullptr;
    const long value = std::strtol(item.c_str(), &rest, 10);
    if (item.empty() || *rest != '\0' || value < 0 || value >= latents) {
      throw Error(fmt::format("--scaling-latents {}: \"{}\" is not a latent index in [0, {})", spec,
                              item, latents));
    }
    options.scaling_latents.push_back(static_cast<std::int32_t>(value));
    start = end + 1;
  }
}

void print_latent_scaling(const LatentScaling& scaling, int sources) {
  if (scaling.latents.empty()) return;
  // Summaries over latents: the median ν of each non-reference source.
  std::printf(
      "latent scaling of %zu latents (ν = β_source / β_reference; small ν^ε: truly "
      "exclusive, large ν^ε: complete shrinkage, large ν^r: latent decoupling):\n",
      scaling.latents.size());
  for (int m = 0; m < sources; ++m) {
    std::vector<double> error, reconstruction;
    for (std::size_t i = 0; i < scaling.latents.size(); ++i) {
      if (scaling.reference_source[i] == m || scaling.active_rows[i] == 0) continue;
      error.push_back(
          scaling.nu_error[i * static_cast<std::size_t>(sources) + static_cast<std::size_t>(m)]);
      reconstruction.push_back(scaling.nu_reconstruction[i * static_cast<std::size_t>(sources) +
                                                         static_cast<std::size_t>(m)]);
    }
    if (error.empty()) continue;
    const auto median = [](std::vector<double> values) {
      std::nth_element(values.begin(),
                       values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2),
                       values.end());
      return values[values.size() / 2];
    };
    std::printf("  source %d: median ν^ε %.3f, median ν^r %.3f over %zu active latents\n", m,
                median(error), median(reconstruction), error.size());
  }
}

// Fails on an unknown --rank-by before the pass over the data, not after it. The metric names
// depend only on the number of sources and on which parts the report will have.
void check_rank_by(const DiffFlags& flags, const CrosscoderConfig& config, bool with_labels) {
  if (flags.rank_by.empty()) return;
  DiffReport planned;
  planned.weights.sources = config.sources;
  planned.weights.models = config.source_models.empty() ? 0 : config.models();
  if (!flags.data.empty()) planned.data = DataMetrics{};
  if (with_labels) planned.contrast = LatentContrast{};
  const auto names = latent_metric_names(planned);
  if (std::find(names.begin(), names.end(), flags.rank_by) == names.end())
    latent_metric(planned, flags.rank_by);
}

void print_summary(const DiffFlags& flags, const DiffReport& report, const CrosscoderConfig& c) {
  std::map<int, std::int64_t> classes;
  for (int latent_class : report.weights.latent_class) ++classes[latent_class];
  std::printf("%lld latents:", static_cast<long long>(c.latents));
  for (const auto& [latent_class, count] : classes) {
    std::printf(" %s %lld", latent_class_name(latent_class).c_str(), static_cast<long long>(count));
  }
  std::printf("\n");
  if (report.weights.models > 0) {
    std::map<int, std::int64_t> by_model;
    for (int latent_class : report.weights.model_class) ++by_model[latent_class];
    std::printf("by model (all of a model's sources together):");
    for (const auto& [latent_class, count] : by_model) {
      std::printf(" %s %lld", latent_class_name(latent_class).c_str(),
                  static_cast<long long>(count));
    }
    std::printf("\n");
  }
  if (report.data) {
    std::printf("data: %lld rows, L0 %.2f, dead latents %lld, FVE",
                static_cast<long long>(report.data->rows), report.data->l0,
                static_cast<long long>(report.data->dead_latents));
    for (double fve : report.data->fve) std::printf(" %.4f", fve);
    std::printf("\n");
  }
  if (report.contrast) {
    std::printf("contrast: %lld positive, %lld negative rows (Cohen's d: %s SD)\n",
                static_cast<long long>(report.contrast->positives),
                static_cast<long long>(report.contrast->negatives),
                std::string(to_string(report.contrast->cohens_d_kind)).c_str());
  }
  if (report.scaling) print_latent_scaling(*report.scaling, c.sources);
  // The summary ranks by the relative norm of the last source and, with labels, by Cohen's d;
  // --rank-by asks for one metric instead.
  std::vector<std::string> metrics;
  if (!flags.rank_by.empty()) {
    metrics.push_back(flags.rank_by);
  } else {
    metrics.push_back(fmt::format("relative_norm_{}", c.sources - 1));
    if (report.contrast) metrics.push_back("cohens_d");
  }
  std::optional<int> only;
  if (!flags.only_class.empty()) only = parse_latent_class(flags.only_class);
  for (const std::string& metric : metrics) {
    const std::vector<std::int32_t> ranking = rank_latents(report, metric, false, only);
    const std::vector<double> values = latent_metric(report, metric);
    std::printf("top latents by %s%s:\n", metric.c_str(),
                only ? (" among " + flags.only_class).c_str() : "");
    for (std::size_t i = 0; i < ranking.size() && i < static_cast<std::size_t>(flags.top); ++i) {
      const std::int32_t f = ranking[i];
      std::printf("  %3zu. latent %6d  %-12s %s %.4f\n", i + 1, f,
                  latent_class_name(report.weights.latent_class[f]).c_str(), metric.c_str(),
                  values[f]);
    }
  }
}

int run(const DiffFlags& flags) {
  for (const auto& [path, flag] :
       {std::pair{&flags.json, "--json"}, {&flags.csv, "--csv"}, {&flags.html, "--html"}}) {
    if (!path->empty()) require_writable_parent(*path, flag);
  }
  if (!flags.labels.empty() && flags.data.empty()) throw Error("--labels needs --data");
  if (!flags.examples_out.empty() && flags.data.empty()) throw Error("--examples-out needs --data");
  const std::string examples_file =
      !flags.data.empty() && flags.examples + flags.example_samples > 0 ? examples_path(flags)
                                                                        : std::string();
  if (!examples_file.empty()) require_writable_parent(examples_file, "--examples-out");
  // Read before the pass, so that a bad vocabulary fails at once.
  std::optional<Vocabulary> vocabulary;
  if (!flags.vocabulary.empty()) vocabulary = Vocabulary::load(flags.vocabulary);
  const Crosscoder model = Crosscoder::load(flags.model, backend_for(flags.device));
  DiffOptions options;
  options.exclusive_threshold = flags.exclusive_threshold;
  options.cohens_d = parse_cohens_d(flags.cohens_d);
  options.class_rule = parse_class_rule(flags.classes);
  options.rows = flags.rows;
  std::optional<ActivationDataset> dataset;
  if (!flags.data.empty()) {
    dataset.emplace(ActivationDataset::open(as_paths(flags.data)));
    if (!flags.labels.empty()) dataset->attach_labels(flags.labels);
  }
  check_rank_by(flags, model.config(), dataset && dataset->has_labels());
  if (dataset) {
    try {
      check_fits(model, *dataset);
    } catch (const Error& error) {
      throw Error(fmt::format("--data: {}", error.what()));
    }
    parse_scaling_latents(flags.scaling_latents, model.config().latents, options);
    if (!examples_file.empty()) {
      ExampleOptions examples;
      examples.top = flags.examples;
      examples.samples = flags.example_samples;
      examples.reservoir = std::max(examples.reservoir, 4 * examples.samples);
      examples.window_before = flags.window_before;
      examples.window_after = flags.window_after;
      examples.validate();
      options.examples = examples;
    }
  }
  const DiffReport report = dataset ? diff(model, *dataset, options) : diff(model, options);
  if (!flags.json.empty()) write_diff_report_json(flags.json, report);
  if (!flags.csv.empty()) write_diff_report_csv(flags.csv, report);
  if (!flags.html.empty()) {
    HtmlReportOptions html;
    html.title = fmt::format("crosscoder diff: {}", flags.model);
    html.top = std::max(flags.top, 100);
    html.feature_pages = flags.feature_pages;
    if (vocabulary) html.vocabulary = &*vocabulary;
    write_diff_report_html(flags.html, report, html);
  }
  if (report.examples) {
    save_examples(examples_file, *report.examples,
                  {{"model", flags.model}, {"data", dataset->identity()}});
  }
  print_summary(flags, report, model.config());
  for (const std::string* path : {&flags.json, &flags.csv, &flags.html}) {
    if (!path->empty()) std::printf("report: %s\n", path->c_str());
  }
  if (report.examples) {
    std::printf("examples: %s (%s; `crosscoder examples %s --latent N` shows them)\n",
                examples_file.c_str(),
                !report.examples->has_windows() ? "no token ids in the data, so rows without text"
                : report.examples->windows_stop_at_documents
                    ? "token windows stop at document boundaries"
                    : "no document ids in the data: token windows may cross documents",
                examples_file.c_str());
  }
  return 0;
}

}  // namespace

Runner add_diff_command(CLI::App& app) {
  auto flags = std::make_shared<DiffFlags>();
  DiffFlags& diff = *flags;
  CLI::App* command = app.add_subcommand(
      "diff",
      "Per-latent model-diffing metrics of a trained crosscoder: decoder norms, relative norms, "
      "cosines, classes; with --data, activation statistics and FVE; with --labels, Cohen's d and "
      "AUROC");
  command
      ->add_option("model,--model", diff.model,
                   "Trained crosscoder (safetensors), as the first argument or after --model")
      ->required()
      ->check(CLI::ExistingFile);
  command
      ->add_option("--data", diff.data,
                   "Held-out paired activations, any layout `train --data` takes (docs/formats.md)")
      ->check(CLI::ExistingFile);
  command
      ->add_option("--labels", diff.labels,
                   ".npy of N integer labels: 1 positive, 0 negative, others ignored (default: "
                   "the dataset's own labels, if any)")
      ->check(CLI::ExistingFile);
  command->add_option("--rows", diff.rows, "Use only the first N rows (0: all)")
      ->capture_default_str();
  command->add_option("--json", diff.json, "Write the full report as JSON");
  command->add_option("--csv", diff.csv, "Write every per-latent metric as CSV");
  command->add_option("--html", diff.html,
                      "Write a self-contained HTML report (plots and a sortable table)");
  command->add_option(
      "--rank-by", diff.rank_by,
      "Metric to rank by (default: cohens_d with labels, else relative_norm of the last source)");
  command->add_option("--class", diff.only_class,
                      "Rank only latents of this class: shared, mixed or exclusive:<source>");
  command->add_option("--top", diff.top, "How many ranked latents to print")->capture_default_str();
  command
      ->add_option("--exclusive-threshold", diff.exclusive_threshold,
                   "Relative norm from which a latent counts as exclusive to a source")
      ->capture_default_str();
  command
      ->add_option("--classes", diff.classes,
                   "Class thresholds: relative_norm (exclusive when a relative norm reaches "
                   "--exclusive-threshold) or minder (Minder et al. 2025, two sources: exclusive "
                   "when the normalised difference is below 0.1 or above 0.9, shared in (0.4, "
                   "0.6))")
      ->check(CLI::IsMember({"relative_norm", "minder"}))
      ->capture_default_str();
  command
      ->add_option("--cohens-d", diff.cohens_d,
                   "Cohen's d standardiser: pooled (n-weighted pooled SD) or average "
                   "(sqrt((s1^2 + s0^2)/2), as the study's rank_features.py); equal for balanced "
                   "groups")
      ->check(CLI::IsMember({"pooled", "average"}))
      ->capture_default_str();
  command
      ->add_option("--scaling-latents", diff.scaling_latents,
                   "With --data, Latent Scaling (Minder et al. 2025) of: auto (latents exclusive "
                   "to the last source), none, or a comma list of latents")
      ->capture_default_str();
  command
      ->add_option("--examples", diff.examples,
                   "With --data, keep each latent's N highest activations with their rows and "
                   "token windows (0: none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command
      ->add_option("--example-samples", diff.example_samples,
                   "With --data, also N examples spread over each latent's activation "
                   "distribution (quantiles of a uniform sample)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("--window-before", diff.window_before, "Tokens shown before an example")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  command->add_option("--window-after", diff.window_after, "Tokens shown after an example")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  command
      ->add_option("--vocab", diff.vocabulary,
                   "With --html: show the examples as text (tokenizer.json, llama2.c "
                   "tokenizer.bin or a .txt with one token per line)")
      ->check(CLI::ExistingFile);
  command
      ->add_option("--feature-pages", diff.feature_pages,
                   "With --html and examples: pages for the first N latents of each ranking")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("--examples-out", diff.examples_out,
                      "Examples file (safetensors; default: beside --json as "
                      "X.examples.safetensors)");
  add_device_option(*command, diff.device);
  return [flags] { return run(*flags); };
}

}  // namespace crosscoder::cli
