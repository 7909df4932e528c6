// The CUDA backend's kernels and a full training step, with the counters the floors in
// docs/performance-cuda.md are computed from: bytes/s against the measured copy bandwidth,
// FLOP/s against the measured GEMM rate. Every benchmark reports itself skipped, with the
// reason, where no CUDA device is usable. Each iteration ends with a synchronize, so the time
// is the device's.
//
// The inputs are drawn on the device (cuRAND's Philox generator, normal with the same mean and
// scale as before), not on the host: Benchmark calls a benchmark's function again for every
// trial iteration count and every repetition, and drawing the 300 million normals of one
// F x D matrix with std::normal_distribution took seconds each time. The values are other
// draws of the same distributions, so the kernels see the same kind of data (TopK the same
// N(0, 1) pre-activations). The training step keeps its model between those calls (below).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/crosscoder.hpp"

#if defined(CROSSCODER_BENCH_CURAND)
#include <cuda_runtime.h>
#include <curand.h>
#endif

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

#if defined(CROSSCODER_BENCH_CURAND)
// A failure here means the device itself is not working; the run stops with the reason.
void curand_check(curandStatus_t status, const char* what) {
  if (status == CURAND_STATUS_SUCCESS) return;
  std::fprintf(stderr, "bench_cuda: %s failed: cuRAND status %d\n", what, static_cast<int>(status));
  std::exit(1);
}

void cuda_check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  std::fprintf(stderr, "bench_cuda: %s failed: %s\n", what, cudaGetErrorString(status));
  std::exit(1);
}
#endif

// n values N(0, scale^2) in the backend's memory (a CUDA backend's: every caller has one).
DeviceArray<float> random_array(const std::shared_ptr<Backend>& backend, std::int64_t n,
                                float scale, std::uint64_t seed) {
  DeviceArray<float> array(backend, static_cast<std::size_t>(n));
#if defined(CROSSCODER_BENCH_CURAND)
  // The backend allocates on its own non-blocking stream and cuRAND writes on the legacy
  // default stream: wait for the allocation before, and for the values after.
  backend->synchronize();
  curandGenerator_t generator = nullptr;
  curand_check(curandCreateGenerator(&generator, CURAND_RNG_PSEUDO_PHILOX4_32_10),
               "curandCreateGenerator");
  curand_check(curandSetPseudoRandomGeneratorSeed(generator, seed), "curandSetSeed");
  // curandGenerateNormal fills an even count; an odd array's last value comes from a pair.
  const std::size_t even = static_cast<std::size_t>(n) & ~std::size_t{1};
  if (even > 0)
    curand_check(curandGenerateNormal(generator, array.data(), even, 0.0f, scale),
                 "curandGenerateNormal");
  if (static_cast<std::size_t>(n) != even) {
    float* pair = nullptr;
    cuda_check(cudaMalloc(&pair, 2 * sizeof(float)), "cudaMalloc");
    curand_check(curandGenerateNormal(generator, pair, 2, 0.0f, scale), "curandGenerateNormal");
    cuda_check(cudaMemcpy(array.data() + even, pair, sizeof(float), cudaMemcpyDeviceToDevice),
               "cudaMemcpy");
    cuda_check(cudaFree(pair), "cudaFree");
  }
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after cuRAND");
  curand_check(curandDestroyGenerator(generator), "curandDestroyGenerator");
#else
  // Without cuRAND (a toolkit lacking it; in a build without CUDA every benchmark skips before
  // this): drawn on the host as before.
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> host(static_cast<std::size_t>(n));
  for (float& v : host) v = normal(rng);
  array.upload(host);
#endif
  return array;
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
    backend->ops().encode(x.data(), rows, D, w.data(), bias.data(), F, /*rectify=*/true,
                          pre.data());
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
  backend->ops().clamp_min(weight.data(), F, 0.01f);
  SelectionRequest request;
  request.selection = state.range(3) == 0 ? Selection::per_row_top_k : Selection::per_batch_top_k;
  request.k = k;
  if (state.range(3) == 1) request.weight = weight.data();
  float smallest = 0.0f;
  for (auto _ : state) {
    SparseCodes codes = backend->ops().select(pre.data(), rows, F, request, &smallest);
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
  return backend->ops().select(pre.data(), rows, F, request, nullptr);
}

// Args: rows, D, F, k. The sparse decoder, the decoder backward pass, the fused
// reconstruction and the fused sparse backward.
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
    if (pass == 0) backend->ops().decode(codes, decoder.data(), nullptr, D, out.data());
    if (pass == 1)
      backend->ops().decoder_backward(codes, upstream.data(), decoder.data(), D, d_value.data(),
                                      d_weight.data());
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
      backend->ops().reconstruct(codes, request);
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
      backend->ops().sparse_backward(codes, request);
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
    backend->ops().adam_update(p.data(), g.data(), m.data(), v.data(), n, step);
    backend->synchronize();
    ++step.step;
  }
  bytes_per_second(state,
                   7.0 * static_cast<double>(n) * sizeof(float));  // read p g m v, write p m v
}

// The training step's model, trainer and batch, kept from one call of BM_CudaTrainingStep to the
// next with the same arguments (Benchmark calls it once per trial iteration count and per
// repetition): the library's own initialisation draws the F x D decoder on the host (302 million
// normals at the target shape, seconds), and the 3 warm-up steps ran each time. The steps
// timed are the same steps of the same model; later calls continue its training. Released
// when the arguments change and before the program ends (main, below).
struct TrainingSetup {
  std::vector<std::int64_t> args;
  std::shared_ptr<Backend> backend;
  std::unique_ptr<Crosscoder> model;
  std::unique_ptr<Trainer> trainer;
  std::vector<float> batch;
  ~TrainingSetup() {
    trainer.reset();  // it refers to the model
    model.reset();
  }
};

std::unique_ptr<TrainingSetup>& training_setup() {
  static std::unique_ptr<TrainingSetup> setup;
  return setup;
}

// Args: d (per source), F, k, B, precision. A full BatchTopK training step (host batch in).
void BM_CudaTrainingStep(benchmark::State& state) {
  const std::vector<std::int64_t> args = {state.range(0), state.range(1), state.range(2),
                                          state.range(3), state.range(4)};
  std::unique_ptr<TrainingSetup>& setup = training_setup();
  if (!setup || setup->args != args) {
    setup.reset();  // free the last shape's model before making this one
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
    auto fresh = std::make_unique<TrainingSetup>();
    fresh->args = args;
    fresh->backend = backend;
    fresh->model = std::make_unique<Crosscoder>(config, backend, 1);
    TrainConfig train;
    train.batch_size = rows;
    train.steps = 1'000'000;
    train.dead_after_tokens = 4 * rows;
    fresh->trainer = std::make_unique<Trainer>(*fresh->model, train);
    // The batch stays a host array (Trainer::step uploads it, as training from data does).
    fresh->batch = random_array(backend, rows * config.input_width(), 1.0f, 11).download();
    for (int warm = 0; warm < 3; ++warm) fresh->trainer->step(fresh->batch, rows);
    setup = std::move(fresh);
  }
  const std::int64_t rows = state.range(3);
  Backend& backend = *setup->backend;
  Trainer& trainer = *setup->trainer;
  const std::vector<float>& batch = setup->batch;
  for (auto _ : state) {
    benchmark::DoNotOptimize(trainer.step(batch, rows).loss);
    backend.synchronize();
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(to_string(backend.matmul_precision())));
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
BENCHMARK_CAPTURE(BM_CudaSparse, reconstruct, 3)
    ->Args({4096, 4608, 65536, 100})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_CudaSparse, fused_backward, 4)
    ->Args({4096, 4608, 65536, 100})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CudaAdam)->Args({65536, 4608})->UseRealTime()->Unit(benchmark::kMicrosecond);
// The target of docs/performance-cuda.md: D = 2 x 2304 = 4608, F = 65,536, k = 100, B = 4,096,
// float32 and bf16 GEMMs (bf16: >= 450,000 tokens/s).
BENCHMARK(BM_CudaTrainingStep)
    ->Args({2304, 65536, 100, 4096, 0})
    ->Args({2304, 65536, 100, 4096, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// BENCHMARK_MAIN, plus freeing the training step's kept model while the CUDA runtime is alive.
int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  training_setup().reset();
  benchmark::Shutdown();
  return 0;
}
