// Steering inside an inference loop, end to end on the synthetic model pair:
//   1. train a crosscoder on paired activations of a "base" and a "fine-tuned" model;
//   2. rank latents by Cohen's d between labelled request and plain prompts;
//   3. run an inference loop that calls an ActivationHook at its layer for every prompt, with a
//      Steerer that scales the top latent at the last prompt token, as in arXiv 2606.26474.
//
// The "engine" here is a stand-in: the fine-tuned model's activations at the hooked layer come
// from the synthetic pair, and the layers after it are a fixed readout of the planted tool
// direction (what "calls a tool" means for this toy). A real engine calls the same hook with its
// residual stream; see docs/steering.md.
//
//   steering_loop [steps]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <crosscoder/crosscoder.hpp>

namespace {

using namespace crosscoder;

constexpr int kHookedLayer = 1;
constexpr int kTokensPerPrompt = 6;

// The toy engine: for each prompt, the hooked layer's rows [T, d] (the last one carries the
// prompt's feature content), then the downstream readout of the last row.
struct ToyEngine {
  const SyntheticPair& pair;
  std::vector<double> tool_direction;  // unit, in the fine-tuned source's raw space

  double run_prompt(const std::vector<float>& last_row, const ActivationHook& hook) const {
    const int d = pair.width();
    std::vector<float> rows(static_cast<std::size_t>(kTokensPerPrompt) * d);
    std::vector<RowInfo> info(kTokensPerPrompt);
    for (int t = 0; t < kTokensPerPrompt; ++t) {
      // Earlier tokens: the source's mean; the last prompt token: the sampled activation.
      for (int i = 0; i < d; ++i)
        rows[static_cast<std::size_t>(t * d + i)] =
            t + 1 < kTokensPerPrompt ? pair.source_mean(1)[i] : last_row[i];
      info[t] = {t, true, t + 1 == kTokensPerPrompt};
    }
    hook(kHookedLayer, rows.data(), kTokensPerPrompt, d, info.data());
    // Downstream layers: the tool is called when the last row projects far enough on the tool
    // direction (threshold at half a typical firing).
    double projection = 0.0;
    const float* last = rows.data() + static_cast<std::ptrdiff_t>(kTokensPerPrompt - 1) * d;
    for (int i = 0; i < d; ++i)
      projection += (last[i] - pair.source_mean(1)[i]) * tool_direction[i];
    return projection > 0.5 * pair.source_scale(1) * pair.magnitude_mean(pair.tool_feature()) ? 1.0
                                                                                              : 0.0;
  }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    SyntheticConfig data;
    data.width = 32;
    data.shared_features = 48;
    data.exclusive_features = {12, 12};
    data.label_fraction = 0.5;
    SyntheticPair pair(data);

    CrosscoderConfig config;
    config.sources = 2;
    config.width = data.width;
    config.latents = 192;
    config.k = 3;
    config.activation = Activation::batchtopk;
    TrainConfig train;
    train.steps = argc > 1 ? std::atoi(argv[1]) : 1500;
    train.batch_size = 512;
    train.learning_rate = 2e-3f;
    Crosscoder model(config, best_backend(), 0);
    Trainer trainer(model, train);
    TrainingOptions quiet;
    quiet.show_progress = false;
    crosscoder::train(trainer, pair, quiet);

    // Held-out labelled rows: rank latents by Cohen's d (label 1 = a request for a tool).
    const int rows = 4000;
    std::vector<float> x(static_cast<std::size_t>(rows) * config.input_width());
    std::vector<std::int8_t> labels(rows);
    pair.sample(rows, 1'000'000, x.data(), labels.data());
    ContrastAccumulator contrast(config.latents);
    contrast.add(model.encode(x, rows), labels);
    const LatentContrast stats = contrast.result();
    int top = 0;
    for (int j = 1; j < config.latents; ++j)
      if (stats.cohens_d[j] > stats.cohens_d[top]) top = j;
    std::printf("top latent by Cohen's d: %d (d = %.2f, AUROC %.3f)\n", top, stats.cohens_d[top],
                stats.auroc[top]);

    ToyEngine engine{pair, {}};
    const std::vector<double> raw = pair.raw_direction(pair.tool_feature());
    double norm = 0.0;
    for (int i = 0; i < data.width; ++i) norm += raw[data.width + i] * raw[data.width + i];
    for (int i = 0; i < data.width; ++i)
      engine.tool_direction.push_back(raw[data.width + i] / std::sqrt(norm));

    // The fine-tuned model's last-token activations for request and plain prompts.
    std::printf("alpha  tool calls on requests  on plain prompts\n");
    for (double alpha : {0.0, 1.0, 4.0, 8.0, 32.0}) {
      Steerer steerer(model, /*source=*/1, {{InterventionKind::scale, top, alpha}},
                      {PositionMode::last_prompt, {}, false});
      const ActivationHook hook = steerer.hook(kHookedLayer);
      double calls[2] = {0, 0}, prompts[2] = {0, 0};
      for (int r = 0; r < rows; ++r) {
        const std::vector<float> last(x.begin() + (2 * r + 1) * data.width,
                                      x.begin() + (2 * r + 2) * data.width);
        calls[labels[r]] += engine.run_prompt(last, hook);
        prompts[labels[r]] += 1.0;
      }
      std::printf("%5.0f  %22.3f  %16.3f\n", alpha, calls[1] / prompts[1], calls[0] / prompts[0]);
    }
  } catch (const Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
