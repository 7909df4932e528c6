// Data-parallel training steps under MPI: the time of a step and the share of it spent in the
// communicator's collectives. Run by benchmarks/distributed/compare.sh, which sets the same
// shape running as 1 process × T threads and as N processes × 1 thread, alternately, and
// reports the ratio from one run.
//   [mpirun -np N] bench_data_parallel [--width d] [--latents F] [--k k] [--batch B]
//                                      [--steps S] [--warmup W] [--activation A]
//                                      [--all-reduce-only yes]  (the gradients' all-reduce alone)
//                                      [--parallelism data|latents]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "crosscoder/crosscoder.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using crosscoder::Communicator;

// What the collectives of a communicator and of those split from it took.
struct CommunicationTotals {
  double seconds = 0.0;
  std::size_t bytes = 0;  // floats all-reduced
};

// Times every collective of the communicator it wraps (and of those split from it, into the
// same totals).
class TimedCommunicator final : public Communicator {
 public:
  explicit TimedCommunicator(
      std::shared_ptr<Communicator> inner,
      std::shared_ptr<CommunicationTotals> totals = std::make_shared<CommunicationTotals>())
      : inner_(std::move(inner)), totals_(std::move(totals)) {}
  int rank() const noexcept override { return inner_->rank(); }
  int size() const noexcept override { return inner_->size(); }
  std::string describe() const override { return inner_->describe(); }
  void all_reduce_sum(std::span<double> v) override {
    timed([&] { inner_->all_reduce_sum(v); });
  }
  void all_reduce_sum(std::span<float> v) override {
    totals_->bytes += v.size() * sizeof(float);
    timed([&] { inner_->all_reduce_sum(v); });
  }
  void all_reduce_sum(std::span<std::int64_t> v) override {
    timed([&] { inner_->all_reduce_sum(v); });
  }
  void all_reduce_min(std::span<float> v) override {
    timed([&] { inner_->all_reduce_min(v); });
  }
  void reduce_scatter_sum(std::span<const float> v, std::span<float> b) override {
    timed([&] { inner_->reduce_scatter_sum(v, b); });
  }
  std::vector<std::int64_t> all_gather(std::int64_t value) override {
    std::vector<std::int64_t> out;
    timed([&] { out = inner_->all_gather(value); });
    return out;
  }
  std::vector<float> all_gather(std::span<const float> v,
                                std::vector<std::int64_t>* counts) override {
    std::vector<float> out;
    timed([&] { out = inner_->all_gather(v, counts); });
    return out;
  }
  std::vector<std::int64_t> all_gather(std::span<const std::int64_t> v,
                                       std::vector<std::int64_t>* counts) override {
    std::vector<std::int64_t> out;
    timed([&] { out = inner_->all_gather(v, counts); });
    return out;
  }
  std::vector<float> gather(std::span<const float> v, int root,
                            std::vector<std::int64_t>* counts) override {
    std::vector<float> out;
    timed([&] { out = inner_->gather(v, root, counts); });
    return out;
  }
  void broadcast(std::span<std::uint8_t> b, int root) override {
    timed([&] { inner_->broadcast(b, root); });
  }
  std::shared_ptr<Communicator> split(int color, int key) override {
    return std::make_shared<TimedCommunicator>(inner_->split(color, key), totals_);
  }
  void barrier() override {
    timed([&] { inner_->barrier(); });
  }
  [[noreturn]] void abort(const std::string& message) override {
    inner_->abort(message);
    std::abort();  // not reached: the inner abort ends the job
  }

  double seconds() const noexcept { return totals_->seconds; }
  std::size_t gradient_bytes() const noexcept { return totals_->bytes; }
  void reset() noexcept { *totals_ = CommunicationTotals{}; }

 private:
  template <typename F>
  void timed(F f) {
    const auto start = Clock::now();
    f();
    totals_->seconds += std::chrono::duration<double>(Clock::now() - start).count();
  }
  std::shared_ptr<Communicator> inner_;
  std::shared_ptr<CommunicationTotals> totals_;
};

long long flag(int argc, char** argv, const char* name, long long fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == name) return std::atoll(argv[i + 1]);
  return fallback;
}

std::string text_flag(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == name) return argv[i + 1];
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace crosscoder;
  try {
    auto timed = std::make_shared<TimedCommunicator>(default_communicator());
    CrosscoderConfig config;
    config.sources = 2;
    config.width = static_cast<int>(flag(argc, argv, "--width", 512));
    config.latents = static_cast<int>(flag(argc, argv, "--latents", 16384));
    config.k = static_cast<int>(flag(argc, argv, "--k", 64));
    config.activation = parse_activation(text_flag(argc, argv, "--activation", "batchtopk"));
    TrainConfig train;
    train.batch_size = flag(argc, argv, "--batch", 1024);
    const long long steps = flag(argc, argv, "--steps", 8);
    const long long warmup = flag(argc, argv, "--warmup", 2);
    train.steps = steps + warmup;
    train.warmup_steps = 1;
    train.threshold_start_step = 0;

    const bool sharded = text_flag(argc, argv, "--parallelism", "data") == "latents";
    // Data parallel: this rank's rows; latent sharded: every row.
    const RowSlice slice = sharded ? RowSlice{0, train.batch_size}
                                   : row_slice(train.batch_size, timed->rank(), timed->size());
    const std::size_t D = static_cast<std::size_t>(config.input_width());
    std::mt19937_64 rng(1234 + static_cast<std::uint64_t>(slice.first));
    // (Under latent sharding every rank draws the same rows: the same seed.)
    std::normal_distribution<float> normal;
    std::vector<float> rows(static_cast<std::size_t>(slice.count) * D);
    for (float& x : rows) x = normal(rng);

    Crosscoder model(config, make_backend(BackendKind::cpu), 7);
    if (text_flag(argc, argv, "--all-reduce-only", "no") == "yes") {
      // The model's one input that can be measured here: the bus bandwidth of an all-reduce of
      // the gradients' size, alone (bus bandwidth = bytes · 2(N − 1)/N / time, as NCCL's).
      const CrosscoderParameters& p = model.parameters();
      std::vector<float> gradient(p.encoder_weight.size() + p.decoder_weight.size() +
                                      p.encoder_bias.size() + p.decoder_bias.size(),
                                  1.0f);
      std::vector<double> seconds;
      for (long long t = 0; t < steps + warmup; ++t) {
        timed->barrier();
        const auto start = Clock::now();
        timed->all_reduce_sum(std::span<float>(gradient));
        if (t >= warmup)
          seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
      }
      std::sort(seconds.begin(), seconds.end());
      const double median = seconds[seconds.size() / 2];
      const double bytes = static_cast<double>(gradient.size() * sizeof(float));
      const int n = timed->size();
      if (timed->rank() == 0) {
        std::printf(
            "all-reduce of %.1f MB on %d ranks: %.1f ms (median of %lld), bus bandwidth %.2f "
            "GB/s\n",
            bytes / 1e6, n, 1e3 * median, steps, bytes * 2.0 * (n - 1) / n / median / 1e9);
      }
      return 0;
    }
    const RowSlice latents = row_slice(config.latents, timed->rank(), timed->size());
    std::optional<Crosscoder> shard;
    if (sharded) shard.emplace(Crosscoder::latent_slice(model, latents.first, latents.count));
    Crosscoder& trained = sharded ? *shard : model;
    Trainer trainer(trained, train, timed,
                    sharded ? Parallelism::latents(timed->size()) : Parallelism::data());
    // Parameters, gradients and Adam's two moments: 16 bytes a parameter on this rank.
    const CrosscoderParameters& p = trained.parameters();
    const double state_bytes =
        16.0 * static_cast<double>(p.encoder_weight.size() + p.decoder_weight.size() +
                                   p.encoder_bias.size() + p.decoder_bias.size());
    std::vector<double> step_seconds, communication_seconds;
    std::size_t gradient_bytes = 0;
    for (long long t = 0; t < train.steps; ++t) {
      timed->reset();
      const auto start = Clock::now();
      trainer.step(rows, slice.count);
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (t < warmup) continue;
      step_seconds.push_back(seconds);
      communication_seconds.push_back(timed->seconds());
      gradient_bytes = timed->gradient_bytes();
    }
    // The slowest rank sets the pace: report rank 0's view of the maxima over the ranks.
    const auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    std::vector<double> summary{median(step_seconds), median(communication_seconds)};
    std::vector<float> as_float(summary.begin(), summary.end());
    for (float& x : as_float) x = -x;  // maximum = −min(−x)
    timed->all_reduce_min(as_float);
    if (timed->rank() == 0) {
      const double step = -as_float[0], communication = -as_float[1];
      const char* threads = std::getenv("OMP_NUM_THREADS");
      std::printf(
          "ranks %d threads %s (%s): step %.1f ms (median of %lld), communication %.1f ms "
          "(%.1f%%), floats all-reduced %.1f MB per step, rows/s %.0f, model state per rank "
          "%.0f MB\n",
          timed->size(), threads ? threads : "default",
          sharded ? "latent sharded" : "data parallel", 1e3 * step, steps, 1e3 * communication,
          100.0 * communication / step, static_cast<double>(gradient_bytes) / 1e6,
          static_cast<double>(train.batch_size) / step, state_bytes / 1e6);
    }
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench_data_parallel: %s\n", error.what());
    return 1;
  }
}
