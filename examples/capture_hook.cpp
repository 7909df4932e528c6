// Capturing paired activations from your own inference engine: the engine calls an
// ActivationHook after each block with that block's output rows; capture_hook appends the rows of
// one block to an ActivationWriter, one source per model. Run the base and the fine-tuned model
// on the same token sequences and the writer's shards line up row for row: a dataset that
// `crosscoder train --data DIR/manifest.json` (or ActivationDataset::open) reads directly.
//
//   capture_hook [out-dir]
//
// The engine here is a stand-in (a residual stack of random tanh blocks, its "fine-tune" a
// perturbed copy); a real engine calls the hook the same way (examples/llama2c does).
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <crosscoder/crosscoder.hpp>

namespace {

constexpr int kWidth = 32, kBlocks = 4, kVocabulary = 100;

// The stand-in engine: token embeddings, then kBlocks residual blocks x += tanh(W x); after each
// block it calls the hook with the rows of the whole sequence.
class ToyEngine {
 public:
  ToyEngine(unsigned seed, double perturbation) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(float(kWidth)));
    embedding_.resize(kVocabulary * kWidth);
    for (float& v : embedding_) v = normal(rng);
    blocks_.assign(kBlocks, std::vector<float>(kWidth * kWidth));
    for (auto& block : blocks_)
      for (float& v : block) v = normal(rng);
    std::mt19937 tune(seed + 1);
    for (auto& block : blocks_)
      for (float& v : block) v += static_cast<float>(perturbation) * normal(tune);
  }

  void forward(const std::vector<int>& tokens, int prompt_length,
               const crosscoder::ActivationHook& hook) const {
    const int T = static_cast<int>(tokens.size());
    std::vector<float> x(static_cast<std::size_t>(T) * kWidth);
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < kWidth; ++i) x[t * kWidth + i] = embedding_[tokens[t] * kWidth + i];
    std::vector<crosscoder::RowInfo> info(T);
    for (int t = 0; t < T; ++t)
      info[t] = {.position = t, .prompt = t < prompt_length, .last_prompt = t == prompt_length - 1};
    std::vector<float> update(kWidth);
    for (int block = 0; block < kBlocks; ++block) {
      for (int t = 0; t < T; ++t) {
        for (int i = 0; i < kWidth; ++i) {
          float sum = 0.0f;
          for (int j = 0; j < kWidth; ++j)
            sum += blocks_[block][i * kWidth + j] * x[t * kWidth + j];
          update[i] = std::tanh(sum);
        }
        for (int i = 0; i < kWidth; ++i) x[t * kWidth + i] += update[i];
      }
      if (hook) hook(block + 1, x.data(), T, kWidth, info.data());  // block N's output
    }
  }

 private:
  std::vector<float> embedding_;
  std::vector<std::vector<float>> blocks_;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "captured";
  try {
    const ToyEngine base(7, 0.0), finetuned(7, 0.3);
    constexpr int kLayer = 3;  // capture block 3's output of both models

    crosscoder::ActivationWriterOptions options;
    options.source_names = {"base", "finetuned"};
    options.width = kWidth;
    options.dtype = crosscoder::StoredType::BF16;
    options.shard_rows = 4096;
    options.overwrite = true;
    crosscoder::ActivationWriter writer(out, options);
    const crosscoder::ActivationHook capture_base = crosscoder::capture_hook(writer, 0, kLayer);
    const crosscoder::ActivationHook capture_tuned = crosscoder::capture_hook(writer, 1, kLayer);

    std::mt19937 rng(1);
    std::uniform_int_distribution<int> token(0, kVocabulary - 1);
    for (int sequence = 0; sequence < 200; ++sequence) {
      std::vector<int> tokens(24);
      for (int& t : tokens) t = token(rng);
      // The same tokens through both models, so row i of each source is the same token.
      base.forward(tokens, 16, capture_base);
      finetuned.forward(tokens, 16, capture_tuned);
    }
    const auto manifest = writer.close();

    const crosscoder::ActivationDataset dataset = crosscoder::ActivationDataset::open({manifest});
    std::printf("captured %s", dataset.describe().c_str());
    std::printf(
        "train on it: crosscoder train --data %s --latents 256 --k 8 --out model.safetensors\n",
        manifest.c_str());
  } catch (const crosscoder::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
