// The steering hook per row at realistic widths: add (O(d)), scale on a ReLU crosscoder (one
// dot product per steered latent) and scale on a TopK crosscoder (a full encoder pass with
// selection). Two sources of width d; the steered rows are one source's.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "crosscoder/crosscoder.hpp"

namespace {

using namespace crosscoder;

// Args: d, F, kind (0 add, 1 scale/relu, 2 scale/topk), rows per call.
void BM_SteeringHook(benchmark::State& state) {
  const int width = static_cast<int>(state.range(0));
  const int latents = static_cast<int>(state.range(1));
  const std::int64_t kind = state.range(2);
  const int rows = static_cast<int>(state.range(3));
  CrosscoderConfig config;
  config.sources = 2;
  config.width = width;
  config.latents = latents;
  config.k = 64;
  config.activation = kind == 2 ? Activation::topk : Activation::relu;
  Crosscoder model(config, make_backend(BackendKind::cpu), 1);
  std::mt19937_64 rng(2);
  std::normal_distribution<float> normal;
  std::vector<float> sample(static_cast<std::size_t>(256) * config.input_width());
  for (float& v : sample) v = normal(rng);
  model.fit_normaliser(sample, 256);
  const Intervention intervention{kind == 0 ? InterventionKind::add : InterventionKind::scale,
                                  latents / 3, 32.0};
  Steerer steerer(model, 1, {intervention});
  const ActivationHook hook = steerer.hook(13);
  std::vector<float> activations(static_cast<std::size_t>(rows) * width);
  for (float& v : activations) v = normal(rng);
  std::vector<RowInfo> info(static_cast<std::size_t>(rows));
  for (int t = 0; t < rows; ++t) info[t] = {t, true, t == rows - 1};
  const std::vector<float> original = activations;
  for (auto _ : state) {
    hook(13, activations.data(), rows, width, info.data());
    benchmark::DoNotOptimize(activations.data());
    state.PauseTiming();
    activations = original;  // steer the same rows each time, not an ever-growing vector
    state.ResumeTiming();
  }
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(kind == 0 ? "add" : kind == 1 ? "scale relu" : "scale topk");
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"d", "F", "kind", "rows"});
  for (std::int64_t latents : {16384, 65536})
    for (std::int64_t kind : {0, 1, 2}) b->Args({2304, latents, kind, 32});
  b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

BENCHMARK(BM_SteeringHook)->Apply(shapes);

}  // namespace

BENCHMARK_MAIN();
