// The model-diffing analyses on the CPU backend: the streaming statistics pass over data (one
// inference pass feeding data metrics, contrast statistics and latent scaling) against encoding
// alone, and the weight-only metrics. Two sources; pick shapes with --benchmark_filter.
#include <benchmark/benchmark.h>

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

// The `crosscoder diff --data --labels` pass per batch: one inference, then data metrics,
// contrast and latent scaling of 64 latents.
void BM_StatisticsPass(benchmark::State& state) {
  const Crosscoder model =
      make_model(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)),
                 static_cast<int>(state.range(2)));
  const std::int64_t rows = state.range(3);
  const std::vector<float> x = random_rows(rows, model.config().input_width(), 7);
  std::vector<std::int8_t> labels(static_cast<std::size_t>(rows));
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int8_t>(i % 2);
  DataMetricsAccumulator data(model);
  ContrastAccumulator contrast(model.config().latents);
  std::vector<std::int32_t> measured(64);
  std::iota(measured.begin(), measured.end(), 0);
  LatentScalingAccumulator scaling(model, measured);
  for (auto _ : state) {
    const Crosscoder::Inference inference = model.infer(x, rows);
    data.add(x, inference);
    contrast.add(inference.codes, labels);
    scaling.add(inference);
  }
  benchmark::DoNotOptimize(data.result().l0);
  set_rows_per_second(state, rows);
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
BENCHMARK(BM_StatisticsPass)
    ->ArgNames({"d", "F", "k", "B"})
    ->Args({512, 65536, 64, 4096})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_WeightMetrics)
    ->ArgNames({"d", "F"})
    ->Args({512, 131072})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
