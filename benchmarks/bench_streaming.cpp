// Streaming activations from disk: how fast the dataset layer turns stored rows into float32
// training batches, from the page cache ("warm") and from storage ("cold": the files' cached
// pages are dropped with posix_fadvise before each pass). Rows/s and GB/s (of stored bytes).
//
// Arguments: dtype (0 = f32, 1 = bf16), d per source (two sources), and for the batcher the
// batch size. Data: a sharded manifest written once per dtype/width into $TMPDIR (or /tmp) with
// ActivationWriter; CROSSCODER_BENCH_ROWS sets its rows (default 65536).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "crosscoder/crosscoder.hpp"

namespace {

using namespace crosscoder;
namespace fs = std::filesystem;

std::int64_t dataset_rows() {
  const char* value = std::getenv("CROSSCODER_BENCH_ROWS");
  return value ? std::atoll(value) : 65536;
}

StoredType dtype_arg(std::int64_t code) { return code == 0 ? StoredType::F32 : StoredType::BF16; }

// Writes (once per process) a two-source dataset in 8192-row shards and returns its manifest.
fs::path dataset_path(StoredType dtype, int width) {
  static std::map<std::pair<int, int>, fs::path> made;
  const auto key = std::make_pair(static_cast<int>(dtype), width);
  if (auto it = made.find(key); it != made.end()) return it->second;
  const char* tmp = std::getenv("TMPDIR");
  const fs::path directory =
      fs::path(tmp ? tmp : "/tmp") /
      fmt::format("crosscoder-bench-{}-{}-{}", ::getpid(), to_string(dtype), width);
  fs::remove_all(directory);
  ActivationWriterOptions options;
  options.source_names = {"base", "tuned"};
  options.width = width;
  options.dtype = dtype;
  options.shard_rows = 8192;
  ActivationWriter writer(directory, options);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal;
  const std::int64_t rows = dataset_rows();
  constexpr std::int64_t kChunk = 4096;
  std::vector<float> chunk(static_cast<std::size_t>(kChunk * 2 * width));
  for (std::int64_t done = 0; done < rows; done += kChunk) {
    const std::int64_t n = std::min(kChunk, rows - done);
    for (std::size_t i = 0; i < static_cast<std::size_t>(n * 2 * width); ++i)
      chunk[i] = normal(rng);
    writer.append_all({chunk.data(), static_cast<std::size_t>(n * 2 * width)});
  }
  made[key] = writer.close();
  return made[key];
}

void remove_datasets() {
  const char* tmp = std::getenv("TMPDIR");
  for (const auto& entry : fs::directory_iterator(tmp ? tmp : "/tmp")) {
    if (entry.path().filename().string().rfind(fmt::format("crosscoder-bench-{}-", ::getpid()),
                                               0) == 0)
      fs::remove_all(entry.path());
  }
}

// Drops the dataset's pages from the page cache (clean pages only, which these are after fsync).
// Pages that a live mapping holds stay cached, so a cold pass must drop the cache with the
// dataset closed and open it afresh.
void drop_cache(const fs::path& manifest) {
  for (const auto& entry : fs::directory_iterator(manifest.parent_path())) {
    const int fd = ::open(entry.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

void set_counters(benchmark::State& state, std::int64_t rows, std::int64_t stored_row_bytes) {
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(rows), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(rows * stored_row_bytes) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

// Sequential ActivationDataset::read of every row in 4096-row chunks (conversion + NaN check).
void BM_SequentialRead(benchmark::State& state, bool cold) {
  const StoredType dtype = dtype_arg(state.range(0));
  const int width = static_cast<int>(state.range(1));
  const fs::path manifest = dataset_path(dtype, width);
  std::optional<ActivationDataset> data = ActivationDataset::open({manifest});
  const std::int64_t rows = data->rows();
  constexpr std::int64_t kChunk = 4096;
  std::vector<float> out(static_cast<std::size_t>(kChunk * 2 * width));
  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      data.reset();
      drop_cache(manifest);
      data = ActivationDataset::open({manifest});
      state.ResumeTiming();
    }
    for (std::int64_t begin = 0; begin < rows; begin += kChunk)
      data->read(begin, std::min(kChunk, rows - begin), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, rows, 2 * width * (dtype == StoredType::F32 ? 4 : 2));
}

// Shuffled training batches through the prefetching batcher, one epoch per iteration: what the
// training loop sees (a 64 MiB shuffle buffer, so the epoch spans several buffer loads).
void BM_ShuffledBatches(benchmark::State& state, bool cold) {
  const StoredType dtype = dtype_arg(state.range(0));
  const int width = static_cast<int>(state.range(1));
  const std::int64_t batch = state.range(2);
  const fs::path manifest = dataset_path(dtype, width);
  ShuffleOptions options;
  options.buffer_bytes = std::int64_t{64} << 20;
  const auto open_source = [&] {
    auto data = std::make_shared<ActivationDataset>(ActivationDataset::open({manifest}));
    return std::make_unique<PrefetchingBatchSource>(
        std::make_unique<ShuffledBatches>(data, options), 2);
  };
  std::unique_ptr<PrefetchingBatchSource> source = open_source();
  std::vector<float> out(static_cast<std::size_t>(batch * 2 * width));
  const std::int64_t steps = ActivationDataset::open({manifest}).rows() / batch;
  std::int64_t step = 0;
  for (auto _ : state) {
    if (cold) {
      state.PauseTiming();
      source.reset();  // unmaps the shards, so that their pages can leave the cache
      drop_cache(manifest);
      source = open_source();
      state.ResumeTiming();
    }
    for (std::int64_t i = 0; i < steps; ++i) source->fill(step++, batch, out.data(), nullptr);
    benchmark::DoNotOptimize(out.data());
  }
  set_counters(state, steps * batch, 2 * width * (dtype == StoredType::F32 ? 4 : 2));
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"bf16", "d"})->Args({0, 512})->Args({1, 512})->Args({0, 2304})->Args({1, 2304});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
void batch_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"bf16", "d", "B"})
      ->Args({0, 512, 1024})
      ->Args({1, 512, 1024})
      ->Args({0, 2304, 1024})
      ->Args({1, 2304, 1024});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_CAPTURE(BM_SequentialRead, warm, false)->Apply(shapes);
BENCHMARK_CAPTURE(BM_SequentialRead, cold, true)->Apply(shapes);
BENCHMARK_CAPTURE(BM_ShuffledBatches, warm, false)->Apply(batch_shapes);
BENCHMARK_CAPTURE(BM_ShuffledBatches, cold, true)->Apply(batch_shapes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  remove_datasets();
  return 0;
}
