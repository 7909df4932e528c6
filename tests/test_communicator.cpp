// The single-process communicator, row slices and rank slices of batch sources: the parts of
// data-parallel training that need no MPI (tests/distributed runs the rest under mpirun).
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "crosscoder/batch_source.hpp"
#include "crosscoder/communicator.hpp"
#include "crosscoder/dataset.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/model.hpp"
#include "crosscoder/shuffled_batches.hpp"
#include "crosscoder/trainer.hpp"
#include "expect_error.hpp"

namespace crosscoder {
namespace {

TEST(RowSlice, PartitionsTheBatchInRankOrder) {
  for (std::int64_t rows : {1, 2, 7, 50, 1023}) {
    for (int ranks = 1; ranks <= 5; ++ranks) {
      if (rows < ranks) continue;
      std::int64_t next = 0, smallest = rows, largest = 0;
      for (int r = 0; r < ranks; ++r) {
        const RowSlice slice = row_slice(rows, r, ranks);
        EXPECT_EQ(slice.first, next) << rows << " rows, rank " << r << " of " << ranks;
        next += slice.count;
        smallest = std::min(smallest, slice.count);
        largest = std::max(largest, slice.count);
      }
      EXPECT_EQ(next, rows);
      EXPECT_LE(largest - smallest, 1);
      EXPECT_GE(smallest, 1);
    }
  }
  testing::expect_error([] { row_slice(2, 0, 3); }, "a batch of 2 rows cannot be split over 3");
  testing::expect_error([] { row_slice(8, 3, 3); }, "rank 3 of 3 ranks");
}

TEST(SingleProcessCommunicator, CollectivesAreIdentities) {
  const auto one = single_process_communicator();
  EXPECT_EQ(one->rank(), 0);
  EXPECT_EQ(one->size(), 1);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  std::vector<float> values(17);
  for (float& v : values) v = normal(rng);
  const std::vector<float> before = values;
  one->all_reduce_sum(std::span<float>(values));
  one->all_reduce_min(std::span<float>(values));
  EXPECT_EQ(values, before);
  std::vector<std::int64_t> counts;
  EXPECT_EQ(one->all_gather(values, &counts), before);
  EXPECT_EQ(counts, std::vector<std::int64_t>{17});
  EXPECT_EQ(one->all_gather(std::int64_t{-5}), std::vector<std::int64_t>{-5});
  std::vector<float> block(17);
  one->reduce_scatter_sum(values, block);
  EXPECT_EQ(block, before);
  testing::expect_error([&] { one->reduce_scatter_sum(values, std::span<float>(block).first(3)); },
                        "17 values for a block of 3");
  EXPECT_EQ(one->gather(values, 0, &counts), before);
  EXPECT_EQ(counts, std::vector<std::int64_t>{17});
  testing::expect_error([&] { one->gather(values, 1); }, "root 1 of 1 rank");
  const auto part = one->split(3, 7);
  EXPECT_EQ(part->rank(), 0);
  EXPECT_EQ(part->size(), 1);
}

TEST(Parallelism, AGridOfReplicasAndShards) {
  const Parallelism grid{3};  // 6 ranks: 2 replicas of 3 shards
  EXPECT_NO_THROW(grid.validate(6));
  testing::expect_error([&] { grid.validate(4); }, "3 latent shards do not divide 4 ranks");
  testing::expect_error([&] { Parallelism{0}.validate(4); }, "0 latent shards");
  EXPECT_EQ(grid.data_replicas(6), 2);
  for (int rank = 0; rank < 6; ++rank) {
    EXPECT_EQ(grid.data_replica(rank), rank / 3);
    EXPECT_EQ(grid.latent_shard(rank), rank % 3);
    // A replica's shards read the same rows; the replicas split the batch.
    const RowSlice rows = grid.rows_of(101, rank, 6);
    EXPECT_EQ(rows.first, rank < 3 ? 0 : 50);
    EXPECT_EQ(rows.count, rank < 3 ? 50 : 51);
    const RowSlice latents = grid.latents_of(100, rank);
    EXPECT_EQ(latents.first, 100 * (rank % 3) / 3);
  }
  testing::expect_error([&] { grid.latents_of(2, 0); }, "2 latents cannot be divided into 3");
  EXPECT_EQ(Parallelism::latents(4).latent_shards, 4);
  EXPECT_EQ(Parallelism::data().latent_shards, 1);
}

// A shard initialised alone equals the same latents of the whole crosscoder initialised with
// the same seed, bit for bit, and its dedicated blocks are those of its latents.
TEST(LatentSlice, AnInitialShardEqualsTheWholeModelsLatents) {
  std::mt19937_64 rng(std::random_device{}());
  CrosscoderConfig config;
  config.sources = 2;
  config.width = 5;
  config.latents = 60;
  config.activation = Activation::jumprelu;  // a threshold to slice too
  config.exclusive = {10, 15};               // shared [0, 35), model 0 [35, 45), model 1 [45, 60)
  const auto backend = make_backend(BackendKind::cpu);
  const std::uint64_t seed = rng();
  const Crosscoder whole(config, backend, seed);
  for (const auto& [first, count] : {std::pair{0, 60}, std::pair{0, 20}, std::pair{30, 10},
                                     std::pair{40, 20}, std::pair{59, 1}}) {
    SCOPED_TRACE("latents [" + std::to_string(first) + ", " + std::to_string(first + count) + ")");
    const Crosscoder sliced = Crosscoder::latent_slice(whole, first, count);
    const Crosscoder alone = Crosscoder::initial_latent_slice(config, backend, seed, first, count);
    EXPECT_EQ(alone.config().to_json(), sliced.config().to_json());
    const CrosscoderParameters& p = sliced.parameters();
    const CrosscoderParameters& q = alone.parameters();
    EXPECT_EQ(q.encoder_weight.download(), p.encoder_weight.download());
    EXPECT_EQ(q.decoder_weight.download(), p.decoder_weight.download());
    EXPECT_EQ(q.encoder_bias.download(), p.encoder_bias.download());
    EXPECT_EQ(q.decoder_bias.download(), p.decoder_bias.download());
    EXPECT_EQ(q.threshold.download(), p.threshold.download());
    // Every latent keeps its partition: exclusive blocks of the slice, counted by hand.
    std::vector<int> exclusive(2, 0);
    for (int f = first; f < first + count; ++f) {
      if (f >= 35) ++exclusive[f < 45 ? 0 : 1];
    }
    EXPECT_EQ(alone.config().exclusive, exclusive);
  }
  testing::expect_error([&] { Crosscoder::initial_latent_slice(config, backend, seed, 50, 20); },
                        "not inside");
}

TEST(DefaultCommunicator, IsOneProcessOutsideALauncher) {
  if (launched_by_mpi_launcher()) GTEST_SKIP() << "this test process runs under an MPI launcher";
  EXPECT_EQ(default_communicator()->size(), 1);
  if (!mpi_built()) testing::expect_error([] { mpi_communicator(); }, "built without MPI");
}

// Random rows with a distinct first value per dataset row, so slices can be checked by row.
class RankSlices : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("crosscoder_rank_slices_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(dir_);
    std::mt19937 rng(std::random_device{}());
    std::normal_distribution<float> normal;
    std::vector<float> all(static_cast<std::size_t>(kRows * kSources * kWidth));
    for (float& v : all) v = normal(rng);
    io::write_npy(dir_ / "rows.npy", {kRows, kSources, kWidth}, all);
    dataset_ = std::make_shared<ActivationDataset>(ActivationDataset::open({dir_ / "rows.npy"}));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::unique_ptr<ShuffledBatches> batches() const {
    ShuffleOptions options;
    options.seed = 9;
    options.block_rows = 16;
    options.buffer_bytes = 3 * 16 * kSources * kWidth * static_cast<std::int64_t>(sizeof(float));
    return std::make_unique<ShuffledBatches>(dataset_, options);
  }
  static constexpr std::int64_t kRows = 300;
  static constexpr int kSources = 2, kWidth = 5;
  std::filesystem::path dir_;
  std::shared_ptr<const ActivationDataset> dataset_;
};

// A source that only knows fill(): the base class's fill_rows copies the slice.
class WholeBatchesOnly : public BatchSource {
 public:
  explicit WholeBatchesOnly(std::unique_ptr<BatchSource> inner) : inner_(std::move(inner)) {}
  int sources() const override { return inner_->sources(); }
  int width() const override { return inner_->width(); }
  void fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) override {
    inner_->fill(step, rows, out, labels);
  }
  std::string identity() const override { return inner_->identity(); }

 private:
  std::unique_ptr<BatchSource> inner_;
};

TEST_F(RankSlices, EveryRanksRowsAreItsSliceOfTheGlobalBatch) {
  const std::int64_t B = 70;  // batches straddle buffers and epochs
  const std::size_t row = kSources * kWidth;
  auto reference = batches();
  for (int ranks : {1, 2, 3}) {
    std::vector<std::unique_ptr<BatchSource>> sliced, copied;
    for (int r = 0; r < ranks; ++r) {
      sliced.push_back(std::make_unique<RankSliceBatches>(batches(), B, row_slice(B, r, ranks)));
      copied.push_back(std::make_unique<RankSliceBatches>(
          std::make_unique<WholeBatchesOnly>(batches()), B, row_slice(B, r, ranks)));
    }
    for (std::int64_t step : {0, 4, 1, 9}) {
      std::vector<float> whole(B * row);
      reference->fill(step, B, whole.data(), nullptr);
      for (int r = 0; r < ranks; ++r) {
        const RowSlice slice = row_slice(B, r, ranks);
        std::vector<float> mine(slice.count * row), via_copy(slice.count * row);
        sliced[r]->fill(step, slice.count, mine.data(), nullptr);
        copied[r]->fill(step, slice.count, via_copy.data(), nullptr);
        const std::vector<float> want(whole.begin() + slice.first * row,
                                      whole.begin() + (slice.first + slice.count) * row);
        EXPECT_EQ(mine, want) << "step " << step << ", rank " << r << " of " << ranks;
        EXPECT_EQ(via_copy, want) << "step " << step << ", rank " << r << " of " << ranks;
      }
    }
    EXPECT_EQ(sliced[0]->identity(), reference->identity()) << "the data position is global";
  }
  RankSliceBatches one(batches(), B, row_slice(B, 1, 2));
  std::vector<float> out(B * row);
  testing::expect_error([&] { one.fill(0, 36, out.data(), nullptr); },
                        "slice of each batch has 35 rows, not 36");
  testing::expect_error(
      [&] {
        RankSliceBatches(batches(), 10, RowSlice{8, 3});
      },
      "rows [8, 11) are not inside a batch of 10 rows");
}

// Ranks read disjoint rows: of every buffer, each reads the rows its slice delivers, and
// together they read what one process reads, once.
TEST_F(RankSlices, EachRankReadsOnlyTheRowsItDelivers) {
  const std::int64_t B = 60;  // 5 batches: one epoch of 300 rows, every buffer used up
  const std::size_t row = kSources * kWidth;
  auto whole = batches();
  std::vector<float> out(B * row);
  for (std::int64_t step = 0; step < 5; ++step) whole->fill(step, B, out.data(), nullptr);
  EXPECT_EQ(whole->rows_read(), kRows);
  for (int ranks : {2, 3, 4}) {
    std::int64_t total = 0;
    for (int r = 0; r < ranks; ++r) {
      auto shuffled = batches();
      const ShuffledBatches& reader = *shuffled;
      const RowSlice slice = row_slice(B, r, ranks);
      RankSliceBatches mine(std::move(shuffled), B, slice);
      for (std::int64_t step = 0; step < 5; ++step)
        mine.fill(step, slice.count, out.data(), nullptr);
      EXPECT_EQ(reader.rows_read(), 5 * slice.count) << "rank " << r << " of " << ranks;
      total += reader.rows_read();
    }
    EXPECT_EQ(total, kRows) << ranks << " ranks";
  }
}

}  // namespace
}  // namespace crosscoder
