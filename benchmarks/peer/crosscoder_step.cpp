// The library's side of benchmarks/peer/run_peer_benchmark.py: loads a crosscoder checkpoint
// (Crosscoder::load) and batches from a .npy file, then runs Trainer::step with the settings
// given, printing one JSON line per step (loss terms and wall time). With --serve it waits for
// commands on stdin, so that the runner can alternate it with the PyTorch peer:
//   step N   run N training steps (batch i of the file for step i, cycling)
//   gemm N   time the encoder GEMM alone N times on the current batch (the step's floor)
//   quit
// Every command's output ends with the line {"done":true}.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/io/npy.hpp"

namespace {

using namespace crosscoder;
using Clock = std::chrono::steady_clock;

const char* kUsage =
    "usage: peer_crosscoder_step --model FILE.safetensors --data FILE.npy --batch B\n"
    "         [--steps N] [--serve] [--lr 5e-4] [--gradient-clip 1] [--aux-k 0]\n"
    "         [--auxk-coefficient 0.03125] [--dead-after-tokens 10000000] [--backend cpu]\n"
    "  --data holds [N, M, d] (or [N, M*d]) float32 rows; step i uses rows\n"
    "  [(i mod (N/B))*B, +B). Learning rate constant (no warm-up, no decay).\n"
    "  --backend cpu|cuda: where the model trains (times include a device synchronisation).\n";

struct Options {
  std::string model, data;
  std::int64_t batch = 0, steps = 0;
  bool serve = false;
  float lr = 5e-4f, gradient_clip = 1.0f, auxk_coefficient = 1.0f / 32;
  int aux_k = 0;
  std::int64_t dead_after_tokens = 10'000'000;
  BackendKind backend = BackendKind::cpu;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error("missing value after " + arg);
      return argv[++i];
    };
    if (arg == "--model")
      o.model = value();
    else if (arg == "--data")
      o.data = value();
    else if (arg == "--batch")
      o.batch = std::stoll(value());
    else if (arg == "--steps")
      o.steps = std::stoll(value());
    else if (arg == "--serve")
      o.serve = true;
    else if (arg == "--lr")
      o.lr = std::stof(value());
    else if (arg == "--gradient-clip")
      o.gradient_clip = std::stof(value());
    else if (arg == "--aux-k")
      o.aux_k = std::stoi(value());
    else if (arg == "--auxk-coefficient")
      o.auxk_coefficient = std::stof(value());
    else if (arg == "--dead-after-tokens")
      o.dead_after_tokens = std::stoll(value());
    else if (arg == "--backend")
      o.backend = parse_backend_kind(value());
    else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      throw Error("unknown argument " + arg);
    }
  }
  if (o.model.empty() || o.data.empty() || o.batch < 1) throw Error(kUsage);
  return o;
}

double milliseconds_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  auto backend = make_backend(o.backend);
  Crosscoder model = Crosscoder::load(o.model, backend);
  const CrosscoderConfig& c = model.config();
  const std::int64_t D = c.input_width();

  const io::NpyFile file = io::NpyFile::open(o.data);
  if (file.row_width() != static_cast<std::size_t>(D))
    throw Error("--data rows have " + std::to_string(file.row_width()) + " values, the model " +
                std::to_string(D));
  const auto batches = static_cast<std::int64_t>(file.rows()) / o.batch;
  if (batches < 1) throw Error("--data holds fewer rows than one batch");
  std::vector<float> data(static_cast<std::size_t>(batches * o.batch * D));
  file.read_rows_float(0, static_cast<std::size_t>(batches * o.batch), data.data());
  const auto batch_at = [&](std::int64_t step) {
    return std::span<const float>(data).subspan(
        static_cast<std::size_t>((step % batches) * o.batch * D),
        static_cast<std::size_t>(o.batch * D));
  };

  TrainConfig train;
  train.steps = 1'000'000'000;  // no decay within any run of this program
  train.batch_size = o.batch;
  train.learning_rate = o.lr;
  train.warmup_steps = 0;
  train.decay_fraction = 0.0f;
  train.gradient_clip = o.gradient_clip;
  train.aux_k = o.aux_k;
  train.auxk_coefficient = o.auxk_coefficient;
  train.dead_after_tokens = o.dead_after_tokens;
  Trainer trainer(model, train);

  const auto run_steps = [&](std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
      backend->synchronize();
      const auto start = Clock::now();
      const StepReport r = trainer.step(batch_at(trainer.steps_done()), o.batch);
      backend->synchronize();  // a GPU's queue drained, so the time is the step's
      const double ms = milliseconds_since(start);
      std::printf(
          "{\"step\":%lld,\"loss\":%.9g,\"reconstruction\":%.9g,\"auxk\":%.9g,\"l0\":%.6g,"
          "\"dead_fraction\":%.6g,\"gradient_norm\":%.9g,\"ms\":%.3f}\n",
          static_cast<long long>(r.step), r.loss, r.reconstruction, r.auxk, r.l0, r.dead_fraction,
          r.gradient_norm, ms);
      std::fflush(stdout);
    }
  };

  DeviceArray<float> x(backend, static_cast<std::size_t>(o.batch * D));
  DeviceArray<float> pre(backend, static_cast<std::size_t>(o.batch * c.latents));
  const auto run_gemm = [&](std::int64_t n) {
    x.upload(batch_at(trainer.steps_done()));
    for (std::int64_t i = 0; i < n; ++i) {
      backend->synchronize();
      const auto start = Clock::now();
      backend->ops().encode(x.data(), o.batch, D, model.parameters().encoder_weight.data(),
                            model.parameters().encoder_bias.data(), c.latents,
                            c.activation != Activation::jumprelu, pre.data());
      backend->synchronize();
      std::printf("{\"gemm_ms\":%.3f}\n", milliseconds_since(start));
      std::fflush(stdout);
    }
  };

  if (!o.serve) {
    run_steps(o.steps);
    return 0;
  }
  std::printf("{\"ready\":true,\"backend\":\"%s\"}\n", backend->describe().c_str());
  std::fflush(stdout);
  std::string command;
  long long n = 0;
  while (std::cin >> command) {
    if (command == "quit") break;
    if (!(std::cin >> n)) throw Error("expected a count after " + command);
    if (command == "step")
      run_steps(n);
    else if (command == "gemm")
      run_gemm(n);
    else
      throw Error("unknown command " + command);
    std::printf("{\"done\":true}\n");
    std::fflush(stdout);
  }
  return 0;
} catch (const std::exception& error) {
  std::fprintf(stderr, "peer_crosscoder_step: %s\n", error.what());
  return 1;
}
