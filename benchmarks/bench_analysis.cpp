// The model-diffing analyses on the CPU backend: the streaming statistics pass over data (one
// inference pass feeding data metrics, contrast statistics and latent scaling) against encoding
// alone, and the weight-only metrics. Two sources; pick shapes with --benchmark_filter.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <numeric>
#include <random>
#include <vector>

#include "crosscoder/crosscoder.hpp"

namespace {

using namespace crosscoder;

std::vector<float> random_rows(std::int64_t rows, std::int64_t width, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<std::size_t>(rows * width));
  for (float& v : x) v = normal(rng);
  return x;
}

// A TopK model with a fitted normaliser (the analyses run on trained models; random weights
// cost the same).
Crosscoder make_model(int width, int latents, int k) {
  CrosscoderConfig config;
  config.sources = 2;
  config.width = width;
  config.latents = latents;
  config.k = k;
  config.activation = Activation::topk;
  Crosscoder model(config, make_backend(BackendKind::cpu), 1);
  const std::vector<float> sample = random_rows(256, config.input_width(), 3);
  model.fit_normaliser(sample, 256);
  return model;
}

void set_rows_per_second(benchmark::State& state, std::int64_t rows) {
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
}

// Args: d per source, F, k, rows per batch.
void BM_EncodeOnly(benchmark::State& state) {
  const Crosscoder model =
      make_model(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)),
                 static_cast<int>(state.range(2)));
  const std::int64_t rows = state.range(3);
  const std::vector<float> x = random_rows(rows, model.config().input_width(), 7);
  for (auto _ : state) benchmark::DoNotOptimize(model.encode(x, rows).latent.data());
  set_rows_per_second(state, rows);
}

// The `crosscoder diff --data --labels` pass per batch (DiffAccumulator, the core of
// crosscoder::diff): one inference, then data metrics, contrast and latent scaling of 64 latents,
// and with examples = 1 the latent examples (the CLI's defaults: top 20, 10 samples). Args: d per
// source, F, k, B, examples.
void BM_StatisticsPass(benchmark::State& state) {
  const Crosscoder model =
      make_model(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)),
                 static_cast<int>(state.range(2)));
  const std::int64_t rows = state.range(3);
  const std::vector<float> x = random_rows(rows, model.config().input_width(), 7);
  std::vector<std::int8_t> labels(static_cast<std::size_t>(rows));
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int8_t>(i % 2);
  DiffOptions options;
  options.scaling = ScalingLatents::listed;
  options.scaling_latents.resize(64);
  std::iota(options.scaling_latents.begin(), options.scaling_latents.end(), 0);
  if (state.range(4) != 0) options.examples = ExampleOptions{};
  DiffAccumulator pass(model, options, /*with_labels=*/true);
  for (auto _ : state) pass.add(x, rows, labels);
  benchmark::DoNotOptimize(pass.result().data->l0);
  set_rows_per_second(state, rows);
}

// After the pass: the token windows of every kept example (F × (top + samples) reads from the
// dataset's token ids; here a 1,000,000-row sharded dataset written once). Args: F.
void BM_AttachWindows(benchmark::State& state) {
  const std::int64_t F = state.range(0), rows = 1'000'000;
  const std::filesystem::path directory =
      std::filesystem::temp_directory_path() / "crosscoder-bench-windows";
  std::filesystem::remove_all(directory);
  {
    ActivationWriterOptions options;
    options.source_names = {"a", "b"};
    options.width = 1;
    options.token_ids = true;
    ActivationWriter writer(directory, options);
    writer.append_all(random_rows(rows, 2, 5));
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(rows));
    std::iota(tokens.begin(), tokens.end(), 0);
    writer.append_token_ids(tokens);
    writer.close();
  }
  const ActivationDataset dataset = ActivationDataset::open({directory / "manifest.json"});
  LatentExamples examples;  // the CLI's defaults, every slot used, rows all over the data
  examples.latents = F;
  examples.rows = rows;
  std::mt19937_64 rng(9);
  examples.top_rows.resize(static_cast<std::size_t>(F * examples.options.top));
  examples.sample_rows.resize(static_cast<std::size_t>(F * examples.options.samples));
  for (auto* slots : {&examples.top_rows, &examples.sample_rows})
    for (std::int64_t& row : *slots) row = static_cast<std::int64_t>(rng() % rows);
  for (auto _ : state) {
    attach_windows(examples, dataset);
    benchmark::DoNotOptimize(examples.top_windows.data());
  }
  state.counters["windows/s"] = benchmark::Counter(
      static_cast<double>(examples.top_rows.size() + examples.sample_rows.size()),
      benchmark::Counter::kIsIterationInvariantRate);
  std::filesystem::remove_all(directory);
}

// Weight-only metrics (norms, relative norms, cosines, classes). Args: d per source, F.
void BM_WeightMetrics(benchmark::State& state) {
  const Crosscoder model =
      make_model(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)), 32);
  for (auto _ : state) benchmark::DoNotOptimize(weight_metrics(model).decoder_cosine.data());
  state.counters["latents/s"] = benchmark::Counter(static_cast<double>(state.range(1)),
                                                   benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_EncodeOnly)
    ->ArgNames({"d", "F", "k", "B"})
    ->Args({512, 65536, 64, 4096})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// Without and with examples, side by side; d = 2304 per source is the shape (2 × 2304).
BENCHMARK(BM_StatisticsPass)
    ->ArgNames({"d", "F", "k", "B", "examples"})
    ->Args({512, 65536, 64, 4096, 0})
    ->Args({512, 65536, 64, 4096, 1})
    ->Args({2304, 65536, 64, 512, 0})
    ->Args({2304, 65536, 64, 512, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_AttachWindows)
    ->ArgNames({"F"})
    ->Arg(65536)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_WeightMetrics)
    ->ArgNames({"d", "F"})
    ->Args({512, 131072})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
