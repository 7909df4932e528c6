// Checkpoints: bit-exact round trips, the dictionary_learning layout, atomic writes, exact
// resume, and a non-finite loss that leaves the last good checkpoint intact.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/io/safetensors.hpp"

namespace crosscoder {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    path_ =
        fs::temp_directory_path() / ("crosscoder-test-" + std::to_string(std::random_device{}()) +
                                     std::to_string(std::random_device{}()));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

SyntheticConfig small_pair(std::uint64_t seed) {
  SyntheticConfig data;
  data.width = 8;
  data.shared_features = 12;
  data.exclusive_features = {4, 4};
  data.seed = seed;
  return data;
}

CrosscoderConfig small_model(Activation activation) {
  CrosscoderConfig c;
  c.sources = 2;
  c.width = 8;
  c.latents = 40;
  c.k = 3;
  c.activation = activation;
  c.exclusive = {5, 5};
  return c;
}

TrainConfig short_training() {
  TrainConfig t;
  t.steps = 24;
  t.batch_size = 64;
  t.warmup_steps = 4;
  t.learning_rate = 5e-3f;
  t.dead_after_tokens = 256;
  return t;
}

void expect_bit_equal(const DeviceArray<float>& a, const DeviceArray<float>& b, const char* what) {
  const auto x = a.download(), y = b.download();
  ASSERT_EQ(x.size(), y.size()) << what;
  if (!x.empty()) {
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0) << what;
  }
}

void expect_same_model(const Crosscoder& a, const Crosscoder& b) {
  EXPECT_EQ(a.config().to_json(), b.config().to_json());
  expect_bit_equal(a.parameters().encoder_weight, b.parameters().encoder_weight, "encoder.weight");
  expect_bit_equal(a.parameters().encoder_bias, b.parameters().encoder_bias, "encoder.bias");
  expect_bit_equal(a.parameters().decoder_weight, b.parameters().decoder_weight, "decoder.weight");
  expect_bit_equal(a.parameters().decoder_bias, b.parameters().decoder_bias, "decoder.bias");
  expect_bit_equal(a.parameters().threshold, b.parameters().threshold, "threshold");
  EXPECT_EQ(a.normaliser().scale, b.normaliser().scale);
  EXPECT_EQ(a.normaliser().mean, b.normaliser().mean);
  const float threshold_a = a.batch_threshold(), threshold_b = b.batch_threshold();
  EXPECT_EQ(std::memcmp(&threshold_a, &threshold_b, sizeof(float)), 0);
}

class Checkpoints : public ::testing::TestWithParam<Activation> {};

TEST_P(Checkpoints, RoundTripIsBitExactAndUsesDictionaryLearningNames) {
  TempDir dir;
  const std::uint64_t seed = std::random_device{}();
  SyntheticPair pair(small_pair(seed));
  const CrosscoderConfig config = small_model(GetParam());
  Crosscoder model(config, make_backend(BackendKind::cpu), seed);
  Trainer trainer(model, short_training());
  TrainingOptions quiet;
  quiet.show_progress = false;
  train(trainer, pair, quiet);
  model.save(dir / "model.safetensors");
  const Crosscoder loaded =
      Crosscoder::load(dir / "model.safetensors", make_backend(BackendKind::cpu));
  expect_same_model(model, loaded);

  const io::SafetensorsFile file = io::SafetensorsFile::open(dir / "model.safetensors");
  const std::int64_t M = 2, d = 8, F = 40;
  EXPECT_EQ(file.read_float("encoder.weight", {M, d, F}).size(),
            static_cast<std::size_t>(M * d * F));
  EXPECT_EQ(file.read_float("decoder.weight", {M, F, d}).size(),
            static_cast<std::size_t>(M * F * d));
  EXPECT_EQ(file.read_float("encoder.bias", {F}).size(), static_cast<std::size_t>(F));
  EXPECT_EQ(file.read_float("decoder.bias", {M, d}).size(), static_cast<std::size_t>(M * d));
  EXPECT_EQ(file.read_int("k").at(0), config.k);
  // decoder.weight[m, f, :] is latent f's direction for source m.
  const auto decoder = file.read_float("decoder.weight", {M, F, d});
  const auto rows = model.decoder_vectors();  // [F, M, d]
  EXPECT_EQ(decoder[(1 * F + 7) * d + 3], rows[(7 * M + 1) * d + 3]);
  EXPECT_EQ(file.metadata().at("config"), config.to_json());
}

// An uninterrupted run of short_training(), and a run resumed from `checkpoint` by a model of
// another initialisation, which must end bit for bit where the uninterrupted one did.
class ResumeCase {
 public:
  explicit ResumeCase(Activation activation)
      : seed_(std::random_device{}()), pair_(small_pair(seed_)), config_(small_model(activation)) {
    quiet_.show_progress = false;
  }
  SyntheticPair& pair() { return pair_; }
  const CrosscoderConfig& config() const { return config_; }
  std::uint64_t seed() const { return seed_; }
  const TrainingOptions& quiet() const { return quiet_; }

  void expect_resume_equals_uninterrupted(const fs::path& checkpoint) {
    Crosscoder uninterrupted(config_, make_backend(BackendKind::cpu), seed_);
    Trainer full(uninterrupted, short_training());
    train(full, pair_, quiet_);
    Crosscoder resumed(config_, make_backend(BackendKind::cpu),
                       seed_ + 1);  // different init on purpose
    Trainer trainer(resumed, short_training());
    TrainingOptions resume = quiet_;
    resume.checkpoint = checkpoint;
    resume.resume = true;
    train(trainer, pair_, resume);
    EXPECT_EQ(trainer.steps_done(), full.steps_done());
    expect_same_model(uninterrupted, resumed);
    EXPECT_EQ(trainer.tokens_since_fired(), full.tokens_since_fired());
  }

 private:
  std::uint64_t seed_;
  SyntheticPair pair_;
  CrosscoderConfig config_;
  TrainingOptions quiet_;
};

TEST_P(Checkpoints, ResumedRunEqualsUninterruptedRunBitForBit) {
  TempDir dir;
  ResumeCase run(GetParam());
  {  // The first half, then "killed" at step 12.
    Crosscoder first(run.config(), make_backend(BackendKind::cpu), run.seed());
    TrainConfig half = short_training();
    Trainer trainer(first, half);
    std::vector<float> batch(
        static_cast<std::size_t>(half.batch_size * run.config().input_width()));
    for (std::int64_t step = 0; step < 12; ++step) {
      run.pair().fill(step, half.batch_size, batch.data(), nullptr);
      trainer.step(batch, half.batch_size);
    }
    trainer.save_checkpoint(dir / "run.safetensors", run.pair().identity());
  }
  run.expect_resume_equals_uninterrupted(dir / "run.safetensors");
}

TEST_P(Checkpoints, StopHookCheckpointsAndTheResumedRunEqualsAnUninterruptedOne) {
  TempDir dir;
  ResumeCase run(GetParam());
  TrainingOptions stoppable = run.quiet();
  stoppable.checkpoint = dir / "run.safetensors";
  stoppable.checkpoint_every = 100;  // only the stop writes one before the end
  std::int64_t steps_seen = 0;
  stoppable.on_step = [&](const StepReport&, double) { ++steps_seen; };
  stoppable.should_stop = [&] { return steps_seen == 9; };  // as a Ctrl-C handler would set
  {
    Crosscoder stopped(run.config(), make_backend(BackendKind::cpu), run.seed());
    Trainer trainer(stopped, short_training());
    try {
      train(trainer, run.pair(), stoppable);
      FAIL() << "the stop hook was ignored";
    } catch (const Cancelled& error) {
      EXPECT_NE(std::string(error.what()).find("stopped at step 9 of 24"), std::string::npos)
          << error.what();
    }
    EXPECT_EQ(trainer.steps_done(), 9);
  }
  run.expect_resume_equals_uninterrupted(dir / "run.safetensors");
}

INSTANTIATE_TEST_SUITE_P(Activations, Checkpoints,
                         ::testing::Values(Activation::relu, Activation::topk,
                                           Activation::batchtopk, Activation::jumprelu),
                         [](const auto& param_info) {
                           return std::string(to_string(param_info.param));
                         });

TEST(CheckpointErrors, ResumeOnOtherDataIsRefused) {
  TempDir dir;
  SyntheticPair pair(small_pair(1)), other(small_pair(2));
  const CrosscoderConfig config = small_model(Activation::topk);
  Crosscoder model(config, make_backend(BackendKind::cpu), 3);
  Trainer trainer(model, short_training());
  trainer.save_checkpoint(dir / "run.safetensors", pair.identity());
  TrainingOptions options;
  options.show_progress = false;
  options.checkpoint = dir / "run.safetensors";
  options.resume = true;
  Trainer again(model, short_training());
  EXPECT_THROW(train(again, other, options), Error);
}

TEST(CheckpointErrors, UnwritablePathIsAnErrorAndKeepsTheOldFile) {
  TempDir dir;
  Crosscoder model(small_model(Activation::topk), make_backend(BackendKind::cpu), 3);
  try {
    model.save(dir / "missing-directory" / "model.safetensors");
    FAIL() << "expected an Error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("missing-directory"), std::string::npos)
        << error.what();
  }
  // A directory where the file should go: the write fails and the directory is untouched.
  fs::create_directories(dir / "taken" / "inside");
  EXPECT_THROW(model.save(dir / "taken"), Error);
  EXPECT_TRUE(fs::is_directory(dir / "taken" / "inside"));
  // Saving over an existing checkpoint replaces it whole.
  model.save(dir / "model.safetensors");
  Crosscoder other(small_model(Activation::topk), make_backend(BackendKind::cpu), 4);
  other.save(dir / "model.safetensors");
  expect_same_model(other,
                    Crosscoder::load(dir / "model.safetensors", make_backend(BackendKind::cpu)));
}

TEST(CheckpointErrors, CorruptOrForeignFilesAreErrors) {
  TempDir dir;
  { std::ofstream(dir / "garbage.safetensors") << "definitely not a checkpoint"; }
  EXPECT_THROW(Crosscoder::load(dir / "garbage.safetensors", make_backend(BackendKind::cpu)),
               Error);
  EXPECT_THROW(Crosscoder::load(dir / "absent.safetensors", make_backend(BackendKind::cpu)), Error);
  Crosscoder model(small_model(Activation::topk), make_backend(BackendKind::cpu), 3);
  model.save(dir / "model.safetensors");
  Crosscoder other(small_model(Activation::relu), make_backend(BackendKind::cpu), 3);
  Trainer trainer(other, short_training());
  EXPECT_THROW(trainer.load_checkpoint(dir / "model.safetensors"), Error);  // other config
}

TEST(CheckpointErrors, NonFiniteLossStopsNamingTheStepAndKeepsTheLastCheckpoint) {
  TempDir dir;
  SyntheticPair pair(small_pair(5));
  const CrosscoderConfig config = small_model(Activation::batchtopk);
  Crosscoder model(config, make_backend(BackendKind::cpu), 3);
  TrainConfig t = short_training();
  Trainer trainer(model, t);
  TrainingOptions options;
  options.show_progress = false;
  options.checkpoint = dir / "run.safetensors";
  options.checkpoint_every = 5;
  int steps_seen = 0;
  options.on_step = [&](const StepReport& report, double) {
    if (++steps_seen == 7) {
      // Poison the decoder bias: the next step's loss is NaN.
      std::vector<float> bias = model.parameters().decoder_bias.download();
      bias[0] = std::numeric_limits<float>::infinity();
      model.parameters().decoder_bias.upload(bias);
    }
    (void)report;
  };
  try {
    train(trainer, pair, options);
    FAIL() << "expected an Error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("step 8"), std::string::npos) << error.what();
  }
  Crosscoder good(config, make_backend(BackendKind::cpu), 99);
  Trainer resumed(good, t);
  EXPECT_EQ(resumed.load_checkpoint(dir / "run.safetensors"), pair.identity());
  EXPECT_EQ(resumed.steps_done(), 5);
  for (float value : good.parameters().decoder_bias.download()) EXPECT_TRUE(std::isfinite(value));
}

}  // namespace
}  // namespace crosscoder
