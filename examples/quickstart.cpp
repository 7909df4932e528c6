// The smallest complete program: train a crosscoder on two models' activations and print the
// latents that belong most to the second model.
//
//   quickstart base.npy finetuned.npy [model.safetensors]
//
// Each .npy is float32 or float16 [N, d]: row i of both files is the same token, seen by each
// model. Any other dataset layout (one [N, 2, d] file, safetensors, a sharded manifest) works the
// same way through ActivationDataset::open.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <numeric>
#include <vector>

#include <crosscoder/crosscoder.hpp>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s base.npy finetuned.npy [model.safetensors]\n", argv[0]);
    return 2;
  }
  try {
    auto dataset = std::make_shared<crosscoder::ActivationDataset>(
        crosscoder::ActivationDataset::open({argv[1], argv[2]}));
    crosscoder::ShuffledBatches data(dataset, {.seed = 0});

    crosscoder::CrosscoderConfig config;
    config.sources = data.sources();
    config.width = data.width();
    config.latents = 8 * data.width();
    config.k = 4;
    config.activation = crosscoder::Activation::batchtopk;

    crosscoder::TrainConfig train;
    train.steps = 500;
    train.batch_size = 512;
    train.learning_rate = 2e-3f;

    crosscoder::Crosscoder model(config, crosscoder::best_backend(), /*seed=*/0);
    crosscoder::Trainer trainer(model, train);
    crosscoder::train(trainer, data, {});
    model.save(argc > 3 ? argv[3] : "quickstart.safetensors");

    // Relative decoder norm r = ‖d_finetuned‖ / (‖d_base‖ + ‖d_finetuned‖): near 1 means
    // the latent exists only in the fine-tuned model.
    const std::vector<float> relative = model.relative_decoder_norms();  // [F, 2]
    std::vector<int> order(static_cast<std::size_t>(config.latents));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return relative[2 * a + 1] > relative[2 * b + 1]; });
    std::printf("latents most specific to the fine-tuned model:\n");
    for (int i = 0; i < 10 && i < config.latents; ++i) {
      std::printf("  latent %5d  relative norm %.3f\n", order[i], relative[2 * order[i] + 1]);
    }
  } catch (const crosscoder::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
