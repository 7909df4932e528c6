#include "crosscoder/demo.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "crosscoder/diff.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/model.hpp"
#include "crosscoder/train_loop.hpp"

namespace crosscoder {

DemoOptions default_demo_options() {
  DemoOptions options;
  options.model.activation = Activation::batchtopk;
  options.model.latents = 384;
  options.model.k = 2;
  options.train.steps = 3000;
  options.train.batch_size = 1024;
  options.train.learning_rate = 2e-3f;
  options.train.warmup_steps = 100;
  options.train.dead_after_tokens = 200'000;
  // The threshold from the first step, as before threshold_start_step existed: the demo's
  // recovery expectations were set with it.
  options.train.threshold_start_step = 0;
  options.train.seed = 1;
  options.data.seed = 2026;
  return options;
}

DemoResult run_demo(const DemoOptions& options, const std::shared_ptr<Backend>& backend) {
  SyntheticPair pair(options.data);
  CrosscoderConfig config = options.model;
  config.sources = options.data.sources;
  config.width = options.data.width;
  Crosscoder model(config, backend, options.train.seed);
  Trainer trainer(model, options.train);
  TrainingOptions loop;
  loop.show_progress = options.show_progress;
  double tokens = 0.0;
  loop.on_step = [&](const StepReport&, double) {
    tokens += static_cast<double>(options.train.batch_size);
  };
  const auto started = std::chrono::steady_clock::now();
  train(trainer, pair, loop);
  DemoResult result;
  result.training_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  result.tokens_per_second = tokens / result.training_seconds;
  if (!options.checkpoint.empty()) model.save(options.checkpoint, {{"demo_data", pair.identity()}});

  // Held-out rows: a stream the training never used.
  const std::int64_t rows = options.evaluation_rows;
  const int M = config.sources;
  const std::int64_t D = config.input_width();
  std::vector<float> x(static_cast<std::size_t>(rows * D));
  std::vector<std::int8_t> labels(static_cast<std::size_t>(rows));
  pair.sample(rows, 0xE7A1'0000'0000ull, x.data(), labels.data());
  RecoveryOptions recovery;
  recovery.norm_scale.assign(model.normaliser().scale.begin(), model.normaliser().scale.end());
  const std::vector<float> raw_decoder = model.raw_decoder_vectors();
  result.recovery = evaluate_recovery(pair, raw_decoder.data(),
                                      static_cast<std::size_t>(config.latents), recovery);

  // One inference pass over the held-out rows for the data metrics and the contrast ranking.
  DiffOptions analysis;
  analysis.exclusive_threshold = recovery.exclusive_threshold;
  analysis.scaling = ScalingLatents::none;
  DiffAccumulator held_out(model, analysis, /*with_labels=*/true);
  held_out.add(x, rows, labels);
  const DiffReport report = held_out.result();
  if (!report.contrast) throw Error("demo: the held-out rows lack positives or negatives");
  const DataMetrics& metrics = *report.data;
  result.fve = metrics.fve;
  result.l0 = metrics.l0;
  result.dead_fraction = static_cast<double>(metrics.dead_latents) / config.latents;
  // Contrast ranking among latents classified exclusive to the last (fine-tuned) source.
  const LatentContrast& statistics = *report.contrast;
  const std::vector<float>& relative = report.weights.relative_norm;  // [F, M]
  std::vector<bool> exclusive_to_last(static_cast<std::size_t>(config.latents));
  for (int f = 0; f < config.latents; ++f) {
    exclusive_to_last[f] = relative[f * M + (M - 1)] >= recovery.exclusive_threshold;
    result.exclusive_latents += exclusive_to_last[f] ? 1 : 0;
  }
  result.tool_latent = result.recovery.tool_best_latent;
  if (result.tool_latent >= 0) {
    result.tool_cohens_d = statistics.cohens_d[result.tool_latent];
    result.tool_auroc = statistics.auroc[result.tool_latent];
    const std::vector<std::int32_t> ranking = statistics.ranking(&exclusive_to_last);
    for (std::size_t i = 0; i < ranking.size(); ++i) {
      if (ranking[i] == result.tool_latent) result.tool_rank = static_cast<std::int64_t>(i) + 1;
    }
    const std::vector<std::int32_t> overall = statistics.ranking(nullptr);
    for (std::size_t i = 0; i < overall.size(); ++i) {
      if (overall[i] == result.tool_latent)
        result.tool_overall_rank = static_cast<std::int64_t>(i) + 1;
    }
  }
  return result;
}

std::string format_demo_result(const DemoResult& r, const DemoOptions& options) {
  std::string fve;
  for (std::size_t m = 0; m < r.fve.size(); ++m)
    fve += fmt::format("{}{:.4f}", m ? "  " : "", r.fve[m]);
  std::string text = fmt::format(
      "trained {} steps × {} rows in {:.1f} s ({:.0f} tokens/s)\n"
      "held-out rows: {}\n"
      "FVE per source: {}\n"
      "L0: {:.2f}   dead latents: {:.1f}%\n",
      options.train.steps, options.train.batch_size, r.training_seconds, r.tokens_per_second,
      options.evaluation_rows, fve, r.l0, 100.0 * r.dead_fraction);
  text += format_recovery_report(r.recovery);
  if (!text.empty() && text.back() != '\n') text += '\n';
  if (r.tool_latent >= 0) {
    text += fmt::format(
        "planted tool feature → latent {} (cosine {:.3f}, Cohen's d {:.2f}, AUROC {:.3f}): rank {} "
        "of {} latents exclusive to source {}, rank {} of all {} latents\n",
        r.tool_latent, r.recovery.tool_best_cosine, r.tool_cohens_d, r.tool_auroc,
        r.tool_rank > 0 ? std::to_string(r.tool_rank) : std::string("— (not classified exclusive)"),
        r.exclusive_latents, options.data.sources - 1, r.tool_overall_rank, options.model.latents);
  }
  return text;
}

}  // namespace crosscoder
