// The `crosscoder` command-line tool: `backends`, `demo`, `train`, `diff` and `info`.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/demo.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/io/safetensors.hpp"

namespace {

using namespace crosscoder;

// Fails before any work when a file could not be written later.
void require_writable_parent(const std::filesystem::path& path, const char* flag) {
  const std::filesystem::path parent =
      path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  if (!std::filesystem::is_directory(parent)) {
    throw Error(
        fmt::format("{} {}: directory {} does not exist", flag, path.string(), parent.string()));
  }
  // Creating a file is the test that counts: access(W_OK) says yes to root on a read-only
  // file system or in /proc, and training would then fail only when it saves.
  const std::filesystem::path probe =
      parent / fmt::format(".crosscoder-write-probe-{}", static_cast<long>(::getpid()));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw Error(fmt::format("{} {}: directory {} is not writable ({})", flag, path.string(),
                            parent.string(), std::strerror(errno)));
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

std::shared_ptr<Backend> backend_for(const std::string& device) {
  if (device == "auto") return best_backend();
  return make_backend(parse_backend_kind(device));
}

int list_backends() {
  std::printf("crosscoder %s\n", version_string);
  for (const BackendInfo& info : available_backends()) {
    const std::string name(to_string(info.kind));
    if (info.usable) {
      std::printf("  %-5s usable: %s\n", name.c_str(), info.device.c_str());
    } else {
      std::printf("  %-5s %s: %s\n", name.c_str(), info.built ? "not usable" : "not built",
                  info.reason.c_str());
    }
  }
  return 0;
}

struct DemoFlags {
  DemoOptions options = default_demo_options();
  std::string device = "auto";
  std::string out = "crosscoder-demo.safetensors";
  std::string activation = std::string(to_string(default_demo_options().model.activation));
  int exclusive = 0;
};

int run_demo_command(DemoFlags& flags) {
  DemoOptions& options = flags.options;
  options.model.activation = parse_activation(flags.activation);
  if (flags.exclusive > 0)
    options.model.exclusive.assign(static_cast<std::size_t>(options.data.sources), flags.exclusive);
  options.checkpoint = flags.out;
  if (!flags.out.empty()) require_writable_parent(flags.out, "--out");
  const auto backend = backend_for(flags.device);
  std::printf(
      "crosscoder demo: %d sources of width %d, %d shared + %d/%d exclusive planted features; "
      "%s crosscoder with %d latents, k = %d, on %s\n",
      options.data.sources, options.data.width, options.data.shared_features,
      options.data.exclusive_features.empty() ? 0 : options.data.exclusive_features[0],
      options.data.exclusive_features.size() > 1 ? options.data.exclusive_features[1] : 0,
      std::string(to_string(options.model.activation)).c_str(), options.model.latents,
      options.model.k, backend->describe().c_str());
  const DemoResult result = run_demo(options, backend);
  std::printf("%s", format_demo_result(result, options).c_str());
  if (!options.checkpoint.empty())
    std::printf("checkpoint: %s\n", options.checkpoint.string().c_str());
  return 0;
}

std::vector<std::filesystem::path> as_paths(const std::vector<std::string>& names) {
  return {names.begin(), names.end()};
}

// Accumulates data metrics over rows [first, first + count) of a dataset, with progress.
DataMetrics measure_rows(const Crosscoder& model, const ActivationDataset& data, std::int64_t first,
                         std::int64_t count, const char* label) {
  DataMetricsAccumulator metrics(model);
  constexpr std::int64_t kChunk = 4096;
  std::vector<float> batch(static_cast<std::size_t>(kChunk * model.config().input_width()));
  ProgressBar progress(count, label, "row");
  for (std::int64_t done = 0; done < count; done += kChunk) {
    const std::int64_t n = std::min(kChunk, count - done);
    data.read(first + done, n, batch.data());
    metrics.add({batch.data(), static_cast<std::size_t>(n * model.config().input_width())}, n);
    progress.update(done + n);
  }
  progress.finish();
  return metrics.result();
}

struct TrainFlags {
  std::vector<std::string> data;
  std::int64_t validation_rows = 0;
  double shuffle_buffer_mb = 512;
  int prefetch = 2;
  CrosscoderConfig model;
  TrainConfig train;
  std::string activation = "batchtopk";
  std::string normalisation = "scalar";
  int exclusive = 0;
  std::string device = "auto";
  std::string matmul = "float32";
  std::string out;
  std::string checkpoint;
  std::int64_t checkpoint_every = 1000;
  bool resume = false;
};

int run_train_command(TrainFlags& flags) {
  const auto dataset =
      std::make_shared<ActivationDataset>(ActivationDataset::open(as_paths(flags.data)));
  if (flags.validation_rows < 0 || flags.validation_rows >= dataset->rows()) {
    throw Error(fmt::format("--validation-rows {}: must be in [0, {}) (the dataset's rows)",
                            flags.validation_rows, dataset->rows()));
  }
  if (flags.shuffle_buffer_mb <= 0) {
    throw Error(fmt::format("--shuffle-buffer-mb {}: must be positive", flags.shuffle_buffer_mb));
  }
  ShuffleOptions shuffle;
  shuffle.seed = flags.train.seed;
  shuffle.buffer_bytes = static_cast<std::int64_t>(flags.shuffle_buffer_mb * 1024 * 1024);
  shuffle.row_count = dataset->rows() - flags.validation_rows;
  std::unique_ptr<BatchSource> batches = std::make_unique<ShuffledBatches>(dataset, shuffle);
  if (flags.prefetch > 0)
    batches = std::make_unique<PrefetchingBatchSource>(std::move(batches), flags.prefetch);
  BatchSource& data = *batches;
  CrosscoderConfig config = flags.model;
  config.sources = data.sources();
  config.width = data.width();
  config.activation = parse_activation(flags.activation);
  config.normalisation = parse_normalisation(flags.normalisation);
  if (flags.exclusive > 0)
    config.exclusive.assign(static_cast<std::size_t>(config.sources), flags.exclusive);
  config.validate();
  const std::filesystem::path checkpoint =
      flags.checkpoint.empty() ? std::filesystem::path(flags.out + ".train.safetensors")
                               : std::filesystem::path(flags.checkpoint);
  require_writable_parent(flags.out, "--out");
  require_writable_parent(checkpoint, "--checkpoint");
  if (!flags.resume && std::filesystem::exists(checkpoint)) {
    throw Error(
        fmt::format("training checkpoint {} exists: pass --resume to continue it, or remove it",
                    checkpoint.string()));
  }
  const auto backend = backend_for(flags.device);
  backend->set_matmul_precision(parse_matmul_precision(flags.matmul));
  std::printf(
      "crosscoder train: %lld training + %lld validation rows, %d sources of width %d → %s "
      "crosscoder with %d latents on %s\n",
      static_cast<long long>(shuffle.row_count), static_cast<long long>(flags.validation_rows),
      config.sources, config.width, std::string(to_string(config.activation)).c_str(),
      config.latents, backend->describe().c_str());
  Crosscoder model(config, backend, flags.train.seed);
  Trainer trainer(model, flags.train);
  TrainingOptions options;
  options.checkpoint = checkpoint;
  options.checkpoint_every = flags.checkpoint_every;
  options.resume = flags.resume;
  const StepReport last = train(trainer, data, options);
  model.save(flags.out, {{"train_config", flags.train.to_json()}, {"data", data.identity()}});
  std::string fve;
  for (std::size_t m = 0; m < last.fve.size(); ++m) fve += fmt::format(" {:.4f}", last.fve[m]);
  std::printf(
      "final step %lld: loss %.5f, FVE per source%s, L0 %.1f, dead %.1f%%\nmodel: %s\ntraining "
      "checkpoint: %s\n",
      static_cast<long long>(last.step), last.loss, fve.c_str(), last.l0,
      100.0 * last.dead_fraction, flags.out.c_str(), checkpoint.string().c_str());
  if (flags.validation_rows > 0) {
    const DataMetrics held_out =
        measure_rows(model, *dataset, shuffle.row_count, flags.validation_rows, "validation");
    std::string held_out_fve;
    for (double value : held_out.fve) held_out_fve += fmt::format(" {:.4f}", value);
    std::printf("validation (%lld held-out rows): FVE per source%s, L0 %.1f, dead latents %lld\n",
                static_cast<long long>(held_out.rows), held_out_fve.c_str(), held_out.l0,
                static_cast<long long>(held_out.dead_latents));
  }
  return 0;
}

// The latents `--scaling-latents` names: "auto" (those exclusive to the last source, the
// fine-tuned model by convention, at most 1000 by relative norm), "none", or a comma list.
std::vector<std::int32_t> scaling_latents(const std::string& spec, const WeightMetrics& weights) {
  std::vector<std::int32_t> latents;
  if (spec == "none") return latents;
  const auto F = static_cast<std::int32_t>(weights.latent_class.size());
  if (spec == "auto") {
    if (weights.sources < 2) return latents;
    const int last = weights.sources - 1;
    for (std::int32_t f = 0; f < F; ++f) {
      if (weights.latent_class[static_cast<std::size_t>(f)] == last) latents.push_back(f);
    }
    constexpr std::size_t kMaximum = 1000;
    if (latents.size() > kMaximum) {
      std::partial_sort(
          latents.begin(), latents.begin() + kMaximum, latents.end(),
          [&](std::int32_t a, std::int32_t b) {
            return weights.relative_norm[static_cast<std::size_t>(a * weights.sources + last)] >
                   weights.relative_norm[static_cast<std::size_t>(b * weights.sources + last)];
          });
      latents.resize(kMaximum);
    }
    std::sort(latents.begin(), latents.end());
    return latents;
  }
  std::size_t start = 0;
  while (start <= spec.size()) {
    const std::size_t end = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, end - start);
    char* rest = nullptr;
    const long value = std::strtol(item.c_str(), &rest, 10);
    if (item.empty() || *rest != '\0' || value < 0 || value >= F) {
      throw Error(fmt::format("--scaling-latents {}: \"{}\" is not a latent index in [0, {})", spec,
                              item, F));
    }
    latents.push_back(static_cast<std::int32_t>(value));
    start = end + 1;
  }
  return latents;
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

bool dataset_has_labels(const std::vector<std::string>& inputs) {
  return ActivationDataset::open(as_paths(inputs)).has_labels();
}

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
  std::string scaling_latents = "auto";
  std::string csv;
  std::string html;
  std::string device = "auto";
};

int run_diff_command(DiffFlags& flags) {
  for (const auto& [path, flag] :
       {std::pair{&flags.json, "--json"}, {&flags.csv, "--csv"}, {&flags.html, "--html"}}) {
    if (!path->empty()) require_writable_parent(*path, flag);
  }
  const auto backend = backend_for(flags.device);
  const Crosscoder model = Crosscoder::load(flags.model, backend);
  const CrosscoderConfig& c = model.config();
  DiffReport report;
  report.model_config = c.to_json();
  report.weights = weight_metrics(model, flags.exclusive_threshold);
  {  // Check --rank-by before the pass over the data, not after it.
    DiffReport planned = report;
    if (!flags.data.empty()) planned.data = DataMetrics{};
    if (!flags.labels.empty() || (!flags.data.empty() && dataset_has_labels(flags.data)))
      planned.contrast = LatentContrast{};
    if (!flags.rank_by.empty()) {
      const auto names = latent_metric_names(planned);
      if (std::find(names.begin(), names.end(), flags.rank_by) == names.end())
        latent_metric(planned, flags.rank_by);
    }
    if (!flags.labels.empty() && flags.data.empty()) throw Error("--labels needs --data");
  }
  if (!flags.data.empty()) {
    ActivationDataset dataset = ActivationDataset::open(as_paths(flags.data));
    const std::vector<std::int32_t> scaled = scaling_latents(flags.scaling_latents, report.weights);
    if (dataset.sources() != c.sources || dataset.width() != c.width) {
      throw Error(fmt::format(
          "--data: the crosscoder has {} sources of width {} but the data has {} of width {}",
          c.sources, c.width, dataset.sources(), dataset.width()));
    }
    if (!flags.labels.empty()) dataset.attach_labels(flags.labels);
    report.source_names = dataset.source_names();
    const std::int64_t rows =
        flags.rows > 0 ? std::min(flags.rows, dataset.rows()) : dataset.rows();
    const bool with_labels = dataset.has_labels();
    DataMetricsAccumulator data(model);
    ContrastAccumulator contrast(c.latents);
    std::optional<LatentScalingAccumulator> scaling;
    if (!scaled.empty()) scaling.emplace(model, scaled);
    constexpr std::int64_t kChunk = 4096;
    std::vector<float> batch(static_cast<std::size_t>(kChunk * c.input_width()));
    std::vector<std::int8_t> labels(static_cast<std::size_t>(kChunk));
    ProgressBar progress(rows, "diff", "row");
    for (std::int64_t begin = 0; begin < rows; begin += kChunk) {
      const std::int64_t count = std::min(kChunk, rows - begin);
      dataset.read(begin, count, batch.data());
      const std::span<const float> x(batch.data(),
                                     static_cast<std::size_t>(count * c.input_width()));
      const Crosscoder::Inference inference = model.infer(x, count);  // once for every metric
      data.add(x, inference);
      if (scaling) scaling->add(inference);
      if (with_labels) {
        dataset.read_labels(begin, count, labels.data());
        for (std::int64_t b = 0; b < count; ++b) {
          if (labels[b] != 0 && labels[b] != 1) labels[b] = -1;
        }
        contrast.add(inference.codes,
                     std::span<const std::int8_t>(labels.data(), static_cast<std::size_t>(count)));
      }
      progress.update(begin + count);
    }
    progress.finish();
    report.data = data.result();
    if (with_labels) {
      // Too few positives or negatives: say so, and still report everything else.
      try {
        report.contrast = contrast.result();
      } catch (const Error& error) {
        std::fprintf(stderr, "crosscoder: warning: no contrast ranking: %s\n", error.what());
      }
    }
    if (scaling) report.scaling = scaling->result();
  }
  if (!flags.json.empty()) write_diff_report_json(flags.json, report);
  if (!flags.csv.empty()) write_diff_report_csv(flags.csv, report);
  if (!flags.html.empty()) {
    HtmlReportOptions html;
    html.title = fmt::format("crosscoder diff: {}", flags.model);
    html.top = std::max(flags.top, 100);
    write_diff_report_html(flags.html, report, html);
  }

  std::map<int, std::int64_t> classes;
  for (int latent_class : report.weights.latent_class) ++classes[latent_class];
  std::printf("%lld latents:", static_cast<long long>(c.latents));
  for (const auto& [latent_class, count] : classes) {
    std::printf(" %s %lld", latent_class_name(latent_class).c_str(), static_cast<long long>(count));
  }
  std::printf("\n");
  if (report.data) {
    std::printf("data: %lld rows, L0 %.2f, dead latents %lld, FVE",
                static_cast<long long>(report.data->rows), report.data->l0,
                static_cast<long long>(report.data->dead_latents));
    for (double fve : report.data->fve) std::printf(" %.4f", fve);
    std::printf("\n");
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
  for (const std::string* path : {&flags.json, &flags.csv, &flags.html}) {
    if (!path->empty()) std::printf("report: %s\n", path->c_str());
  }
  return 0;
}

struct ExportFlags {
  std::string model;
  std::vector<int> latents;
  int source = -1;
  int layer = 0;
  std::vector<double> scales;
  std::string format = "gguf";
  std::string out;
  std::string model_hint = "llama";
};

int run_export_command(const ExportFlags& flags) {
  if (flags.format != "gguf" && flags.format != "safetensors") {
    throw Error(fmt::format("--format {}: expected gguf or safetensors", flags.format));
  }
  if (!flags.scales.empty() && flags.scales.size() != 1 &&
      flags.scales.size() != flags.latents.size()) {
    throw Error(
        fmt::format("--scale given {} times for {} latents: give one for all, or one per latent",
                    flags.scales.size(), flags.latents.size()));
  }
  require_writable_parent(flags.out, "--out");
  const Crosscoder model = Crosscoder::load(flags.model, make_backend(BackendKind::cpu));
  const int source = flags.source >= 0 ? flags.source : model.config().sources - 1;
  std::vector<SteeringDirection> directions;
  for (std::size_t i = 0; i < flags.latents.size(); ++i) {
    const double scale = flags.scales.empty()       ? 1.0
                         : flags.scales.size() == 1 ? flags.scales[0]
                                                    : flags.scales[i];
    directions.push_back({flags.latents[i], source, scale});
  }
  if (flags.format == "gguf") {
    write_control_vector(flags.out, model, directions, {flags.layer, flags.model_hint});
    std::printf("control vector: %s (direction.%d, width %d, %zu latent%s of source %d)\n",
                flags.out.c_str(), flags.layer, model.config().width, directions.size(),
                directions.size() == 1 ? "" : "s", source);
  } else {
    write_direction_safetensors(flags.out, model, directions, flags.layer, flags.model);
    std::printf("directions: %s\n", flags.out.c_str());
  }
  return 0;
}

struct InfoFlags {
  std::vector<std::string> inputs;
  bool check = false;
};

// What one file holds, whatever it is: the raw arrays or tensors with their dtypes and shapes.
void print_file_contents(const std::filesystem::path& path) {
  const std::string extension = path.extension().string();
  if (extension == ".npy") {
    const io::NpyFile file = io::NpyFile::open(path);
    std::printf("%s: .npy array '%s' of shape [%s]\n", path.c_str(), file.descr().c_str(),
                fmt::format("{}", fmt::join(file.shape(), ", ")).c_str());
  } else if (extension == ".safetensors") {
    const io::SafetensorsFile file = io::SafetensorsFile::open(path);
    std::printf("%s: safetensors, %zu tensors\n", path.c_str(), file.names().size());
    for (const std::string& name : file.names()) {
      const io::TensorInfo& info = file.info(name);
      std::printf("  %-32s %-4s [%s]\n", name.c_str(),
                  std::string(io::to_string(info.dtype)).c_str(),
                  fmt::format("{}", fmt::join(info.shape, ", ")).c_str());
    }
    for (const auto& [key, value] : file.metadata()) {
      const std::string shown = value.size() > 200 ? value.substr(0, 200) + "…" : value;
      std::printf("  metadata %s: %s\n", key.c_str(), shown.c_str());
    }
  }
}

int run_info_command(const InfoFlags& flags) {
  const auto inputs = as_paths(flags.inputs);
  for (const auto& path : inputs) print_file_contents(path);
  if (inputs.size() == 1 && inputs[0].extension() == ".safetensors") {
    const io::SafetensorsFile file = io::SafetensorsFile::open(inputs[0]);
    const auto format = file.metadata().find("format");
    if (format != file.metadata().end() && format->second.rfind("crosscoder-checkpoint", 0) == 0) {
      std::printf("valid crosscoder checkpoint (%s)\n", format->second.c_str());
      return 0;
    }
  }
  const ActivationDataset dataset = ActivationDataset::open(inputs);
  std::printf("dataset: %s", dataset.describe().c_str());
  if (flags.check) {
    // Reads every row: finds NaN/Inf (the read throws naming file and row) and counts labels.
    constexpr std::int64_t kChunk = 8192;
    std::vector<float> batch(
        static_cast<std::size_t>(kChunk * dataset.sources() * dataset.width()));
    std::vector<std::int8_t> labels(static_cast<std::size_t>(kChunk));
    std::int64_t positives = 0, negatives = 0;
    ProgressBar progress(dataset.rows(), "check", "row");
    for (std::int64_t begin = 0; begin < dataset.rows(); begin += kChunk) {
      const std::int64_t count = std::min(kChunk, dataset.rows() - begin);
      dataset.read(begin, count, batch.data());
      if (dataset.has_labels()) {
        dataset.read_labels(begin, count, labels.data());
        for (std::int64_t i = 0; i < count; ++i) {
          positives += labels[i] == 1;
          negatives += labels[i] == 0;
        }
      }
      progress.update(begin + count);
    }
    progress.finish();
    std::printf("every value is finite\n");
    if (dataset.has_labels()) {
      std::printf("labels: %lld positive, %lld negative, %lld ignored\n",
                  static_cast<long long>(positives), static_cast<long long>(negatives),
                  static_cast<long long>(dataset.rows() - positives - negatives));
    }
  }
  std::printf("valid dataset: %lld rows, %d source%s of width %d\n",
              static_cast<long long>(dataset.rows()), dataset.sources(),
              dataset.sources() == 1 ? "" : "s", dataset.width());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"crosscoder: sparse crosscoders for model diffing"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(version_string));

  app.add_subcommand("backends", "List the compute backends and whether each is usable here");

  DemoFlags demo;
  CLI::App* demo_command = app.add_subcommand("demo",
                                              "Train a crosscoder on a synthetic model pair with "
                                              "planted shared, exclusive and 'tool' features, "
                                              "and report what it recovered");
  demo_command->add_option("--steps", demo.options.train.steps, "Training steps")
      ->capture_default_str();
  demo_command->add_option("--batch", demo.options.train.batch_size, "Rows per step")
      ->capture_default_str();
  demo_command->add_option("--latents", demo.options.model.latents, "Dictionary size F")
      ->capture_default_str();
  demo_command->add_option("--k", demo.options.model.k, "Active latents per row (topk, batchtopk)")
      ->capture_default_str();
  demo_command->add_option("--activation", demo.activation, "relu | topk | batchtopk | jumprelu")
      ->capture_default_str();
  demo_command
      ->add_option("--exclusive", demo.exclusive,
                   "Latents reserved exclusively for each source (dedicated-feature crosscoder)")
      ->capture_default_str();
  demo_command->add_option("--lr", demo.options.train.learning_rate, "Peak learning rate")
      ->capture_default_str();
  demo_command->add_option("--seed", demo.options.train.seed, "Initialisation seed")
      ->capture_default_str();
  demo_command->add_option("--data-seed", demo.options.data.seed, "Seed of the synthetic pair")
      ->capture_default_str();
  demo_command->add_option("--width", demo.options.data.width, "Width d of each synthetic source")
      ->capture_default_str();
  demo_command->add_option("--device", demo.device, "auto | cpu | cuda")->capture_default_str();
  demo_command->add_option("--out", demo.out, "Where to write the trained model (empty: nowhere)")
      ->capture_default_str();

  TrainFlags train;
  train.model.latents = 16384;
  train.model.k = 64;
  CLI::App* train_command = app.add_subcommand("train", "Train a crosscoder on paired activations");
  train_command
      ->add_option("--data", train.data,
                   "Paired activations: one .npy [N, d] per source (in source order), one .npy "
                   "[N, M, d], one .safetensors with a tensor per source, or a manifest .json "
                   "(docs/formats.md)")
      ->required()
      ->check(CLI::ExistingFile);
  train_command
      ->add_option("--validation-rows", train.validation_rows,
                   "Hold out the dataset's last N rows; report FVE, L0 and dead latents on them")
      ->capture_default_str();
  train_command
      ->add_option("--shuffle-buffer-mb", train.shuffle_buffer_mb,
                   "Memory for the shuffle buffer (rows mix freely within it)")
      ->capture_default_str();
  train_command
      ->add_option("--prefetch", train.prefetch, "Batches read ahead in the background (0: none)")
      ->capture_default_str();
  train_command->add_option("--latents", train.model.latents, "Dictionary size F")
      ->capture_default_str();
  train_command->add_option("--k", train.model.k, "Active latents per row (topk, batchtopk)")
      ->capture_default_str();
  train_command->add_option("--activation", train.activation, "relu | topk | batchtopk | jumprelu")
      ->capture_default_str();
  train_command
      ->add_option("--exclusive", train.exclusive, "Latents reserved exclusively for each source")
      ->capture_default_str();
  train_command
      ->add_option("--normalisation", train.normalisation, "none | scalar | mean_and_scale")
      ->capture_default_str();
  train_command->add_option("--steps", train.train.steps, "Training steps")->capture_default_str();
  train_command->add_option("--batch", train.train.batch_size, "Rows per step")
      ->capture_default_str();
  train_command
      ->add_option("--tile-rows", train.train.tile_rows,
                   "Rows encoded at once (their B x F pre-activations held); 0: the whole batch "
                   "unless that exceeds 2 GiB. Same result, less memory")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  train_command->add_option("--lr", train.train.learning_rate, "Peak learning rate")
      ->capture_default_str();
  train_command->add_option("--warmup", train.train.warmup_steps, "Warm-up steps")
      ->capture_default_str();
  train_command->add_option("--l1", train.train.l1_coefficient, "L1 coefficient (relu)")
      ->capture_default_str();
  train_command->add_option("--l0", train.train.l0_coefficient, "L0 coefficient (jumprelu)")
      ->capture_default_str();
  train_command
      ->add_option("--auxk", train.train.auxk_coefficient, "AuxK coefficient (topk, batchtopk)")
      ->capture_default_str();
  train_command
      ->add_option("--dead-after", train.train.dead_after_tokens,
                   "Tokens without firing after which a latent is dead")
      ->capture_default_str();
  train_command->add_option("--seed", train.train.seed, "Initialisation and shuffling seed")
      ->capture_default_str();
  train_command->add_option("--device", train.device, "auto | cpu | cuda")->capture_default_str();
  train_command
      ->add_option("--matmul", train.matmul,
                   "Encoder GEMM arithmetic on CUDA: float32 | tf32 | bf16 (bf16 operands, float32 "
                   "accumulation and weights); the CPU always uses float32")
      ->check(CLI::IsMember({"float32", "tf32", "bf16"}))
      ->capture_default_str();
  train_command->add_option("--out", train.out, "Trained model (safetensors)")->required();
  train_command->add_option("--checkpoint", train.checkpoint,
                            "Training checkpoint (default: OUT.train.safetensors)");
  train_command
      ->add_option("--checkpoint-every", train.checkpoint_every,
                   "Steps between training checkpoints")
      ->capture_default_str();
  train_command->add_flag("--resume", train.resume, "Continue from the training checkpoint");

  DiffFlags diff;
  CLI::App* diff_command = app.add_subcommand(
      "diff",
      "Per-latent model-diffing metrics of a trained crosscoder: decoder norms, relative norms, "
      "cosines, classes; with --data, activation statistics and FVE; with --labels, Cohen's d and "
      "AUROC");
  diff_command
      ->add_option("model,--model", diff.model,
                   "Trained crosscoder (safetensors), as the first argument or after --model")
      ->required()
      ->check(CLI::ExistingFile);
  diff_command
      ->add_option("--data", diff.data,
                   "Held-out paired activations, any layout `train --data` takes (docs/formats.md)")
      ->check(CLI::ExistingFile);
  diff_command
      ->add_option("--labels", diff.labels,
                   ".npy of N integer labels: 1 positive, 0 negative, others ignored (default: "
                   "the dataset's own labels, if any)")
      ->check(CLI::ExistingFile);
  diff_command->add_option("--rows", diff.rows, "Use only the first N rows (0: all)")
      ->capture_default_str();
  diff_command->add_option("--json", diff.json, "Write the full report as JSON");
  diff_command->add_option("--csv", diff.csv, "Write every per-latent metric as CSV");
  diff_command->add_option("--html", diff.html,
                           "Write a self-contained HTML report (plots and a sortable table)");
  diff_command->add_option(
      "--rank-by", diff.rank_by,
      "Metric to rank by (default: cohens_d with labels, else relative_norm of the last source)");
  diff_command->add_option("--class", diff.only_class,
                           "Rank only latents of this class: shared, mixed or exclusive:<source>");
  diff_command->add_option("--top", diff.top, "How many ranked latents to print")
      ->capture_default_str();
  diff_command
      ->add_option("--exclusive-threshold", diff.exclusive_threshold,
                   "Relative norm from which a latent counts as exclusive to a source")
      ->capture_default_str();
  diff_command
      ->add_option("--scaling-latents", diff.scaling_latents,
                   "With --data, Latent Scaling (Minder et al. 2025) of: auto (latents exclusive "
                   "to the last source), none, or a comma list of latents")
      ->capture_default_str();
  diff_command->add_option("--device", diff.device, "auto | cpu | cuda")->capture_default_str();

  ExportFlags exporting;
  CLI::App* export_command = app.add_subcommand("export",
                                                "Export latents' decoder directions (raw units) as "
                                                "a llama.cpp control vector or safetensors");
  export_command
      ->add_option("model,--model", exporting.model,
                   "Trained crosscoder (safetensors), as the first argument or after --model")
      ->required()
      ->check(CLI::ExistingFile);
  export_command
      ->add_option("--latent", exporting.latents, "Latent(s) to export; several are summed")
      ->required();
  export_command->add_option(
      "--source", exporting.source,
      "Which source's decoder direction (default: the last, the fine-tuned model)");
  export_command
      ->add_option("--layer", exporting.layer,
                   "gguf: llama.cpp block N whose output gets the vector (N ≥ 1; Hugging Face "
                   "hidden_states[L] is N = L − 1); safetensors: recorded in the metadata")
      ->required();
  export_command->add_option("--scale", exporting.scales,
                             "Strength α: one for all latents, or one per latent");
  export_command->add_option("--format", exporting.format, "gguf | safetensors")
      ->capture_default_str();
  export_command->add_option("--out", exporting.out, "Output file")->required();
  export_command->add_option("--model-hint", exporting.model_hint, "gguf: controlvector.model_hint")
      ->capture_default_str();

  InfoFlags info;
  CLI::App* info_command = app.add_subcommand(
      "info", "Print what a dataset, manifest, .npy or safetensors file holds and check it");
  info_command
      ->add_option("inputs", info.inputs,
                   "A file, or the inputs of a dataset as `train --data` takes them")
      ->required()
      ->check(CLI::ExistingFile);
  info_command->add_flag("--check", info.check,
                         "Read every row: report NaN/Inf values and count the labels");

  CLI11_PARSE(app, argc, argv);
  try {
    if (app.got_subcommand("backends")) return list_backends();
    if (app.got_subcommand("demo")) return run_demo_command(demo);
    if (app.got_subcommand("train")) return run_train_command(train);
    if (app.got_subcommand("diff")) return run_diff_command(diff);
    if (app.got_subcommand("info")) return run_info_command(info);
    if (app.got_subcommand("export")) return run_export_command(exporting);
  } catch (const Error& error) {
    std::fprintf(stderr, "crosscoder: error: %s\n", error.what());
    return 1;
  }
  return 0;
}
