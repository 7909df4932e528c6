// The CUDA backend's kernels and a full training step, with the counters the floors in
// docs/performance-cuda.md are computed from: bytes/s against the measured copy bandwidth,
// FLOP/s against the measured GEMM rate. Every benchmark reports itself skipped, with the
// reason, where no CUDA device is usable. Each iteration ends with a synchronize, so the time
// is the device's.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/crosscoder.hpp"

namespace {

using namespace crosscoder;

std::shared_ptr<Backend> cuda_or_skip(benchmark::State& state) {
  for (const BackendInfo& info : available_backends()) {
    if (info.kind == BackendKind::cuda && info.usable) return make_backend(BackendKind::cuda);
    if (info.kind == BackendKind::cuda)
      state.SkipWithError(("no CUDA device: " + info.reason).c_str());
  }
  return nullptr;
}

DeviceArray<float> random_array(const std::shared_ptr<Backend>& backend, std::int64_t n,
                                float scale, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> host(static_cast<std::size_t>(n));
  for (float& v : host) v = normal(rng);
  return DeviceArray<float>(backend, std::span<const float>(host));
}

void bytes_per_second(benchmark::State& state, double bytes) {
  state.counters["bytes/s"] =
      benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}

// Device-to-device copy of range(0) MiB: the bandwidth floor (bytes read + written).
void BM_CudaCopy(benchmark::State& state) {
  auto backend = cuda_or_skip(state);
  if (!backend) return;
  const std::int64_t n = state.range(0) << 18;  // floats
  DeviceArray<float> a = random_array(backend, n, 1.0f, 1), b(backend, static_cast<std::size_t>(n));
  for (auto _ : state) {
    backend->copy_on_device(b.data(), a.data(), static_cast<std::size_t>(n) * sizeof(float));
    backend->synchronize();
  }
  bytes_per_second(state, 2.0 * static_cast<double>(n) * sizeof(float));
}

// Args: rows, D, F, precision (0 float32, 1 tf32, 2 bf16).
void BM_CudaEncoderGemm(benchmark::State& state) {
  auto backend = cuda_or_skip(state);
  if (!backend) return;
  const std::int64_t rows = state.range(0), D = state.range(1), F = state.range(2);
  const MatmulPrecision precision = state.range(3) == 0   ? MatmulPrecision::float32
                                    : state.range(3) == 1 ? MatmulPrecision::tf32
                                                          : MatmulPrecision::bfloat16;
  backend->set_matmul_precision(precision);
  DeviceArray<float> x = random_array(backend, rows * D, 1.0f, 1),
                     w = random_array(backend, F * D, 0.02f, 2),
                     bias = random_array(backend, F, 0.1f, 3),
                     pre(backend, static_cast<std::size_t>(rows * F));
  for (auto _ : state) {
    backend->encode(x.data(), rows, D, w.data(), bias.data(), F, /*rectify=*/true, pre.data());
    backend->synchronize();
  }
  state.counters["FLOP/s"] = benchmark::Counter(
      2.0 * static_cast<double>(rows) * static_cast<double>(D) * static_cast<double>(F),
      benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(to_string(precision)));
}

// Args: rows, F, k, selection (0 TopK, 1 BatchTopK). Pre-activations N(0, 1).
void BM_CudaSelect(benchmark::State& state) {
  auto backend = cuda_or_skip(state);
  if (!backend) return;
  const std::int64_t rows = state.range(0), F = state.range(1), k = state.range(2);
  DeviceArray<float> pre = random_array(backend, rows * F, 1.0f, 4);
  DeviceArray<float> weight = random_array(backend, F, 0.1f, 5);
  backend->clamp_min(weight.data(), F, 0.01f);
  SelectionRequest request;
  request.selection = state.range(3) == 0 ? Selection::per_row_top_k : Selection::per_batch_top_k;
  request.k = k;
  if (state.range(3) == 1) request.weight = weight.data();
  float smallest = 0.0f;
  for (auto _ : state) {
    SparseCodes codes = backend->select(pre.data(), rows, F, request, &smallest);
    benchmark::DoNotOptimize(codes.nnz);
    backend->synchronize();
  }
  bytes_per_second(state, static_cast<double>(rows * F) * sizeof(float));  // the read floor
  state.SetLabel(state.range(3) == 0 ? "topk" : "batchtopk");
}

SparseCodes top_k_codes(const std::shared_ptr<Backend>& backend, const DeviceArray<float>& pre,
                        std::int64_t rows, std::int64_t F, std::int64_t k) {
  SelectionRequest request;
  request.selection = Selection::per_row_top_k;
  request.k = k;
  return backend->select(pre.data(), rows, F, request, nullptr);
}

// Args: rows, D, F, k. The sparse decoder, and the decoder and encoder backward passes.
void BM_CudaSparse(benchmark::State& state, int pass) {
  auto backend = cuda_or_skip(state);
  if (!backend) return;
  const std::int64_t rows = state.range(0), D = state.range(1), F = state.range(2),
                     k = state.range(3);
  DeviceArray<float> pre = random_array(backend, rows * F, 1.0f, 6);
  const SparseCodes codes = top_k_codes(backend, pre, rows, F, k);
  DeviceArray<float> decoder = random_array(backend, F * D, 0.02f, 7),
                     upstream = random_array(backend, rows * D, 1.0f, 8),
                     out(backend, static_cast<std::size_t>(rows * D)),
                     d_value(backend, static_cast<std::size_t>(codes.nnz)),
                     d_weight(backend, static_cast<std::size_t>(F * D)),
                     d_bias(backend, static_cast<std::size_t>(F)),
                     d_input = random_array(backend, rows * D, 1.0f, 9),
                     d_encoder(backend, pass == 4 ? static_cast<std::size_t>(F * D) : 0);
  d_weight.zero();
  d_bias.zero();
  for (auto _ : state) {
    if (pass == 0) backend->decode(codes, decoder.data(), nullptr, D, out.data());
    if (pass == 1)
      backend->decoder_backward(codes, upstream.data(), decoder.data(), D, d_value.data(),
                                d_weight.data());
    if (pass == 2)
      backend->encoder_backward(codes, codes.value.data(), upstream.data(), D, d_weight.data(),
                                d_bias.data());
    if (pass == 3) {
      std::vector<double> sse(2);
      ReconstructionRequest request;
      request.decoder = decoder.data();
      request.target = upstream.data();
      request.sources = 2;
      request.width = static_cast<int>(D / 2);
      request.recon = out.data();
      request.grad = d_input.data();
      request.squared_error = sse.data();
      backend->reconstruct(codes, request);
    }
    if (pass == 4) {
      SparseBackwardRequest request;
      request.grad_out = upstream.data();
      request.decoder = decoder.data();
      request.xn = d_input.data();
      request.latents = F;
      request.width = D;
      request.d_decoder = d_weight.data();
      request.d_encoder = d_encoder.data();
      request.d_bias = d_bias.data();
      backend->sparse_backward(codes, request);
    }
    backend->synchronize();
  }
  // Floor: every active parameter row read once (and written once by the backward passes),
  // and each [rows, D] dense array read or written once. The reconstruction reads the target
  // and writes the reconstruction and its gradient; the fused backward reads the decoder, writes
  // both gradient matrices in full and reads the upstream gradient and the input.
  const double rows_touched = static_cast<double>(std::min(F, codes.nnz));
  const double row_bytes = static_cast<double>(D) * sizeof(float);
  const double all_rows = static_cast<double>(F) * row_bytes;
  const double dense = static_cast<double>(rows) * row_bytes;
  const double floors[] = {rows_touched * row_bytes + dense, 2.0 * rows_touched * row_bytes + dense,
                           2.0 * rows_touched * row_bytes + dense,
                           rows_touched * row_bytes + 3.0 * dense,
                           rows_touched * row_bytes + 2.0 * all_rows + 2.0 * dense};
  bytes_per_second(state, floors[pass]);
}

void BM_CudaAdam(benchmark::State& state) {
  auto backend = cuda_or_skip(state);
  if (!backend) return;
  const std::int64_t rows = state.range(0), width = state.range(1), n = rows * width;
  DeviceArray<float> p = random_array(backend, n, 0.02f, 9),
                     g = random_array(backend, n, 1e-3f, 10),
                     m(backend, static_cast<std::size_t>(n)),
                     v(backend, static_cast<std::size_t>(n));
  m.zero();
  v.zero();
  AdamStep step;
  step.rows.row_width = width;  // the TopK decoder: gradient projected, rows renormalised
  step.rows.remove_parallel = true;
  step.rows.unit_norm = true;
  for (auto _ : state) {
    backend->adam_update(p.data(), g.data(), m.data(), v.data(), n, step);
    backend->synchronize();
    ++step.step;
  }
  bytes_per_second(state,
                   7.0 * static_cast<double>(n) * sizeof(float));  // read p g m v, write p m v
}

// Args: d (per source), F, k, B, precision. A full BatchTopK training step (host batch in).
void BM_CudaTrainingStep(benchmark::State& state) {
  auto backend = cuda_or_skip(state);
  if (!backend) return;
  backend->set_matmul_precision(state.range(4) == 2 ? MatmulPrecision::bfloat16
                                                    : MatmulPrecision::float32);
  CrosscoderConfig config;
  config.sources = 2;
  config.width = static_cast<int>(state.range(0));
  config.latents = static_cast<int>(state.range(1));
  config.k = static_cast<int>(state.range(2));
  config.activation = Activation::batchtopk;
  const std::int64_t rows = state.range(3);
  Crosscoder model(config, backend, 1);
  TrainConfig train;
  train.batch_size = rows;
  train.steps = 1'000'000;
  train.dead_after_tokens = 4 * rows;
  Trainer trainer(model, train);
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> batch(static_cast<std::size_t>(rows * config.input_width()));
  for (float& v : batch) v = normal(rng);
  for (int warm = 0; warm < 3; ++warm) trainer.step(batch, rows);
  for (auto _ : state) {
    benchmark::DoNotOptimize(trainer.step(batch, rows).loss);
    backend->synchronize();
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(to_string(backend->matmul_precision())));
}

}  // namespace

BENCHMARK(BM_CudaCopy)->Arg(1024)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CudaEncoderGemm)
    ->ArgsProduct({{4096}, {4608}, {65536}, {0, 1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaSelect)
    ->Args({4096, 65536, 64, 0})
    ->Args({4096, 65536, 1024, 0})
    ->Args({4096, 262144, 64, 0})
    ->Args({4096, 65536, 100, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_CudaSparse, decode, 0)
    ->Args({4096, 4608, 65536, 100})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_CudaSparse, decoder_backward, 1)
    ->Args({4096, 4608, 65536, 100})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_CudaSparse, encoder_backward, 2)
    ->Args({4096, 4608, 65536, 100})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_CudaSparse, reconstruct, 3)
    ->Args({4096, 4608, 65536, 100})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_CudaSparse, fused_backward, 4)
    ->Args({4096, 4608, 65536, 100})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CudaAdam)->Args({65536, 4608})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CudaTrainingStep)
    ->Args({2304, 65536, 100, 4096, 0})
    ->Args({2304, 65536, 100, 4096, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
