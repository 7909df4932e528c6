// One training step of a crosscoder on the CPU backend, and its main phases, in tokens/s.
// Shapes: D = 2·d, F latents, k active, B rows. Pick with --benchmark_filter.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "crosscoder/crosscoder.hpp"

namespace {

using namespace crosscoder;

std::vector<float> random_batch(std::int64_t rows, std::int64_t width, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<std::size_t>(rows * width));
  for (float& v : x) v = normal(rng);
  return x;
}

Activation activation_arg(std::int64_t code) {
  return code == 0 ? Activation::relu : code == 1 ? Activation::topk : Activation::batchtopk;
}

CrosscoderConfig config_from(const benchmark::State& state) {
  CrosscoderConfig config;
  config.sources = 2;
  config.width = static_cast<int>(state.range(0));
  config.latents = static_cast<int>(state.range(1));
  config.k = static_cast<int>(state.range(2));
  config.activation = activation_arg(state.range(4));
  return config;
}

TrainConfig benchmark_training(std::int64_t rows) {
  TrainConfig train;
  train.batch_size = rows;
  train.steps = 1'000'000;
  train.dead_after_tokens = 4 * rows;  // some latents go dead, so AuxK runs as in real training
  return train;
}

void set_counters(benchmark::State& state, std::int64_t rows) {
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
}

void run_training_steps(benchmark::State& state, std::int64_t tile_rows) {
  const CrosscoderConfig config = config_from(state);
  const std::int64_t rows = state.range(3);
  Crosscoder model(config, make_backend(BackendKind::cpu), 1);
  TrainConfig train = benchmark_training(rows);
  train.tile_rows = tile_rows;
  Trainer trainer(model, train);
  const std::vector<float> batch = random_batch(rows, config.input_width(), 7);
  for (int warm = 0; warm < 5; ++warm) trainer.step(batch, rows);
  for (auto _ : state) benchmark::DoNotOptimize(trainer.step(batch, rows).loss);
  set_counters(state, rows);
  state.SetLabel(std::string(to_string(config.activation)));
}

double median(std::vector<double> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

// The target, step ÷ encoder GEMM, from one process: each iteration times the encoder
// GEMM alone and then a whole training step, so that the two see the same state of a shared,
// noisy host; the counters are the medians of each and the median of the per-iteration ratios.
void BM_StepOverGemm(benchmark::State& state) {
  using Clock = std::chrono::steady_clock;
  const CrosscoderConfig config = config_from(state);
  const std::int64_t rows = state.range(3);
  auto backend = make_backend(BackendKind::cpu);
  Crosscoder model(config, backend, 1);
  Trainer trainer(model, benchmark_training(rows));
  const std::vector<float> batch = random_batch(rows, config.input_width(), 7);
  DeviceArray<float> x(backend, std::span<const float>(batch));
  DeviceArray<float> pre(backend, static_cast<std::size_t>(rows * config.latents));
  for (int warm = 0; warm < 5; ++warm) trainer.step(batch, rows);
  std::vector<double> gemm_ms, step_ms, ratios;
  for (auto _ : state) {
    const auto start = Clock::now();
    backend->ops().encode(x.data(), rows, config.input_width(),
                          model.parameters().encoder_weight.data(),
                          model.parameters().encoder_bias.data(), config.latents, true, pre.data());
    const auto between = Clock::now();
    benchmark::DoNotOptimize(trainer.step(batch, rows).loss);
    const auto end = Clock::now();
    gemm_ms.push_back(std::chrono::duration<double, std::milli>(between - start).count());
    step_ms.push_back(std::chrono::duration<double, std::milli>(end - between).count());
    ratios.push_back(step_ms.back() / gemm_ms.back());
    state.SetIterationTime(step_ms.back() / 1e3);
  }
  state.counters["gemm_ms"] = median(gemm_ms);
  state.counters["step_ms"] = median(step_ms);
  state.counters["step/gemm"] = median(ratios);
  state.SetLabel(std::string(to_string(config.activation)));
}

// Args: d (per source), F, k, B, activation (0 relu, 1 topk, 2 batchtopk).
void BM_TrainingStep(benchmark::State& state) { run_training_steps(state, 0); }

// A BatchTopK step with a Matryoshka dictionary of `groups` nested prefixes (sizes doubling, as
// 1/15, 2/15, 4/15, 8/15 of F for four) against the plain dictionary (groups = 1), one process.
// Args: d (per source), F, k, B, groups.
void BM_MatryoshkaStep(benchmark::State& state) {
  CrosscoderConfig config = config_from(state);
  config.activation = Activation::batchtopk;
  const auto groups = static_cast<int>(state.range(4));
  if (groups > 1) {
    const int unit = config.latents / ((1 << groups) - 1);
    for (int g = 0; g + 1 < groups; ++g) config.matryoshka_groups.push_back(unit << g);
    int used = 0;
    for (const int size : config.matryoshka_groups) used += size;
    config.matryoshka_groups.push_back(config.latents - used);
  }
  const std::int64_t rows = state.range(3);
  Crosscoder model(config, make_backend(BackendKind::cpu), 1);
  Trainer trainer(model, benchmark_training(rows));
  const std::vector<float> batch = random_batch(rows, config.input_width(), 7);
  for (int warm = 0; warm < 5; ++warm) trainer.step(batch, rows);
  for (auto _ : state) benchmark::DoNotOptimize(trainer.step(batch, rows).loss);
  set_counters(state, rows);
}

// Args: as BM_TrainingStep, then the rows per tile of the batch (TrainConfig::tile_rows).
void BM_TrainingStepInTiles(benchmark::State& state) { run_training_steps(state, state.range(5)); }

// The dense encoder GEMM alone: the floor of a training step.
void BM_EncoderGemm(benchmark::State& state) {
  const CrosscoderConfig config = config_from(state);
  const std::int64_t rows = state.range(3);
  auto backend = make_backend(BackendKind::cpu);
  Crosscoder model(config, backend, 1);
  const std::vector<float> host = random_batch(rows, config.input_width(), 7);
  DeviceArray<float> x(backend, std::span<const float>(host));
  DeviceArray<float> pre(backend, static_cast<std::size_t>(rows * config.latents));
  for (auto _ : state) {
    backend->ops().encode(x.data(), rows, config.input_width(),
                          model.parameters().encoder_weight.data(),
                          model.parameters().encoder_bias.data(), config.latents,
                          config.activation != Activation::jumprelu, pre.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, rows);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(rows) *
                             static_cast<double>(config.input_width()) * config.latents / 1e9,
                         benchmark::Counter::kIsIterationInvariantRate);
}

// Selection of active latents from random pre-activations.
void BM_Select(benchmark::State& state) {
  const CrosscoderConfig config = config_from(state);
  const std::int64_t rows = state.range(3);
  auto backend = make_backend(BackendKind::cpu);
  const std::vector<float> pre = random_batch(rows, config.latents, 3);
  const std::vector<float> weight(static_cast<std::size_t>(config.latents), 1.0f);
  SelectionRequest request;
  request.k = config.k;
  request.selection =
      config.activation == Activation::topk ? Selection::per_row_top_k : Selection::per_batch_top_k;
  if (config.activation == Activation::batchtopk) request.weight = weight.data();
  for (auto _ : state)
    benchmark::DoNotOptimize(
        backend->ops().select(pre.data(), rows, config.latents, request, nullptr).nnz);
  set_counters(state, rows);
}

// The optimiser's dense passes over the encoder and decoder weights (2·F·D parameters), bound
// by memory bandwidth, as the trainer runs them for TopK/BatchTopK: the gradient norm for
// clipping (the decoder's gradient without its component along each row) and Adam (p, g, m, v
// read; p, m, v written: 28 bytes a parameter; the decoder's rows projected and renormalised in
// the same pass). (The unfused projection pass these replaced, measured side by side in
// docs/tuning-log.md change 13, left the backend with its last caller.)
void BM_ParameterUpdate(benchmark::State& state) {
  const CrosscoderConfig config = config_from(state);
  const std::int64_t D = config.input_width(), F = config.latents, n = F * D;
  auto backend = make_backend(BackendKind::cpu);
  const std::vector<float> host = random_batch(F, D, 5);
  std::vector<DeviceArray<float>> arrays;
  for (int i = 0; i < 8; ++i) arrays.emplace_back(backend, std::span<const float>(host));
  for (auto& a : {2, 3, 6, 7}) backend->ops().clamp_min(arrays[a].data(), n, 0.0f);  // v ≥ 0
  RowConstraint decoder_rows;
  decoder_rows.row_width = D;
  decoder_rows.remove_parallel = true;
  decoder_rows.unit_norm = true;
  AdamStep step;
  const std::int64_t variant = state.range(4);
  for (auto _ : state) {
    ++step.step;
    if (variant == 0) {
      benchmark::DoNotOptimize(backend->ops().sum_of_squares(arrays[1].data(), n) +
                               backend->ops().constrained_sum_of_squares(
                                   arrays[5].data(), arrays[4].data(), n, decoder_rows));
      continue;
    }
    step.rows = RowConstraint{};
    backend->ops().adam_update(arrays[0].data(), arrays[1].data(), arrays[2].data(),
                               arrays[3].data(), n, step);
    step.rows = decoder_rows;
    backend->ops().adam_update(arrays[4].data(), arrays[5].data(), arrays[6].data(),
                               arrays[7].data(), n, step);
  }
  // Bytes at the floor: the norm reads the encoder's gradient and the decoder's gradient and
  // rows; Adam moves 28 bytes a parameter.
  const double per_parameter[] = {12.0, 56.0};
  state.counters["GB/s"] = benchmark::Counter(per_parameter[variant] * static_cast<double>(n) / 1e9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  const char* labels[] = {"gradient norm (decoder projected)",
                          "adam (encoder; decoder projected, unit rows)"};
  state.SetLabel(labels[variant]);
}

// The step's sparse passes on the codes of a BatchTopK selection (B·k entries over F latents),
// with the caches emptied between iterations as the optimiser's 940 MB stream empties them in a
// step: variant 0 reconstruct (decode fused with the squared error), 1 sparse_backward, 2
// sparse_backward also writing the row statistics the clipping norm is taken from; on AuxK's
// codes (few latents, many entries each), 3 the accumulating sparse_backward and 4 reconstruct.
void BM_SparsePasses(benchmark::State& state) {
  const CrosscoderConfig config = config_from(state);
  const std::int64_t rows = state.range(3), D = config.input_width(), F = config.latents;
  auto backend = make_backend(BackendKind::cpu);
  const std::vector<float> pre = random_batch(rows, F, 3);
  const std::int64_t variant = state.range(4);
  const bool auxk = variant >= 3;
  SelectionRequest request;
  request.selection = Selection::per_batch_top_k;
  request.k = config.k;
  // AuxK's codes: the positive pre-activations of 2% of the latents (dead ones), up to D/2 a row
  // (as the trainer selects them), so a few hundred latents carry hundreds of entries each.
  std::vector<std::uint8_t> dead(static_cast<std::size_t>(F), 0);
  for (std::int64_t f = 0; f < F; f += 50) dead[static_cast<std::size_t>(f)] = 1;
  DeviceArray<std::uint8_t> dead_mask(backend, std::span<const std::uint8_t>(dead));
  if (auxk) {
    request.selection = Selection::per_row_top_k;
    request.k = D / 2;
    request.allowed = dead_mask.data();
    request.positive_only = true;
  }
  const SparseCodes codes = backend->ops().select(pre.data(), rows, F, request, nullptr);
  const std::vector<float> host_decoder = random_batch(F, D, 4),
                           host_rows = random_batch(rows, D, 5);
  DeviceArray<float> decoder(backend, std::span<const float>(host_decoder));
  DeviceArray<float> target(backend, std::span<const float>(host_rows));
  DeviceArray<float> recon(backend, static_cast<std::size_t>(rows * D)),
      grad(backend, static_cast<std::size_t>(rows * D));
  DeviceArray<float> d_decoder(backend, static_cast<std::size_t>(F * D)),
      d_encoder(backend, static_cast<std::size_t>(F * D)),
      d_bias(backend, static_cast<std::size_t>(F));
  DeviceArray<double> statistics(backend, static_cast<std::size_t>(F * 2 * 4));
  std::vector<float> flush(std::size_t{64} << 20, 1.0f);  // 256 MiB, beyond the L3
  std::vector<double> sse(2);
  for (auto _ : state) {
    state.PauseTiming();
    float sink = 0.0f;
    for (std::size_t i = 0; i < flush.size(); i += 16) sink += flush[i] += 1.0f;
    benchmark::DoNotOptimize(sink);
    state.ResumeTiming();
    if (variant == 0 || variant == 4) {
      ReconstructionRequest r;
      r.decoder = decoder.data();
      r.target = target.data();
      r.sources = 2;
      r.width = config.width;
      r.gradient_scale = 1.0f;
      r.recon = recon.data();
      r.grad = grad.data();
      r.squared_error = sse.data();
      backend->ops().reconstruct(codes, r);
      continue;
    }
    SparseBackwardRequest r;
    r.grad_out = target.data();
    r.decoder = decoder.data();
    r.xn = target.data();
    r.latents = F;
    r.width = D;
    r.d_decoder = d_decoder.data();
    r.d_encoder = d_encoder.data();
    r.d_bias = d_bias.data();
    if (variant >= 2) {
      r.row_statistics = statistics.data();
      r.statistics_blocks = 2;
    }
    r.accumulate = auxk;
    backend->ops().sparse_backward(codes, r);
  }
  set_counters(state, rows);
  const char* labels[] = {"reconstruct", "sparse_backward", "sparse_backward with row statistics",
                          "AuxK: sparse_backward accumulating, row statistics",
                          "AuxK: reconstruct"};
  state.SetLabel(std::string(labels[variant]) + " (" + std::to_string(codes.nnz) + " entries)");
}

void shapes(benchmark::internal::Benchmark* b, bool large) {
  b->Unit(benchmark::kMillisecond)->UseRealTime();
  for (int activation : {1, 2}) b->Args({512, 16384, 64, 1024, activation});
  if (large) b->Args({2304, 16384, 64, 1024, 2});
}

BENCHMARK(BM_TrainingStep)->Apply([](auto* b) { shapes(b, true); }) -> MinTime(2.0);
BENCHMARK(BM_StepOverGemm)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->Iterations(12)
    ->ArgsProduct({{512}, {16384}, {64}, {1024}, {1, 2}});
// Tiles of the batch at the reference shape: whether pre-activations that stay in cache pay for
// the smaller GEMMs and, for BatchTopK, the tiles' candidates.
BENCHMARK(BM_TrainingStepInTiles)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0)
    ->ArgsProduct({{512}, {16384}, {64}, {1024}, {1, 2}, {128, 512}});
BENCHMARK(BM_MatryoshkaStep)
    ->ArgNames({"d", "F", "k", "B", "groups"})
    ->ArgsProduct({{512}, {16384}, {64}, {1024}, {1, 4}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);
BENCHMARK(BM_EncoderGemm)->Apply([](auto* b) { shapes(b, true); });
BENCHMARK(BM_Select)->Apply([](auto* b) { shapes(b, false); });
BENCHMARK(BM_SparsePasses)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ArgsProduct({{512}, {16384}, {64}, {1024}, {0, 1, 2, 3, 4}});
BENCHMARK(BM_ParameterUpdate)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Args({512, 16384, 64, 1024, 0})
    ->Args({512, 16384, 64, 1024, 1});

}  // namespace

BENCHMARK_MAIN();
