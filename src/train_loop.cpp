#include "crosscoder/train_loop.hpp"

#include <fmt/format.h>

#include <chrono>
#include <vector>

#include "crosscoder/error.hpp"
#include "crosscoder/log.hpp"
#include "crosscoder/progress.hpp"

namespace crosscoder {
namespace {

std::string status_line(const StepReport& report) {
  std::string fve;
  for (std::size_t m = 0; m < report.fve.size(); ++m)
    fve += fmt::format("{}{:.3f}", m ? "/" : "", report.fve[m]);
  return fmt::format("loss {:.4f}  FVE {}  L0 {:.1f}  dead {:.1f}%", report.loss, fve, report.l0,
                     100.0 * report.dead_fraction);
}

}  // namespace

StepReport train(Trainer& trainer, BatchSource& data, const TrainingOptions& options) {
  const CrosscoderConfig& c = trainer.model().config();
  if (data.sources() != c.sources || data.width() != c.width) {
    throw Error(fmt::format(
        "training data has {} sources of width {}, but the crosscoder expects {} of width {}",
        data.sources(), data.width(), c.sources, c.width));
  }
  if (options.resume && !options.checkpoint.empty() &&
      std::filesystem::exists(options.checkpoint)) {
    const std::string identity = trainer.load_checkpoint(options.checkpoint);
    if (identity != data.identity()) {
      throw Error(fmt::format("cannot resume from {}: it was trained on '{}', not on '{}'",
                              options.checkpoint.string(), identity, data.identity()));
    }
    log_message(LogLevel::info, fmt::format("resumed from {} at step {}",
                                            options.checkpoint.string(), trainer.steps_done()));
  }
  const TrainConfig& config = trainer.config();
  Communicator& ranks = trainer.communicator();
  const bool lead = ranks.rank() == 0;
  // This rank's rows of each global batch: its replica's (all of them in one process).
  const std::int64_t rows =
      trainer.parallelism().rows_of(config.batch_size, ranks.rank(), ranks.size()).count;
  std::vector<float> batch(static_cast<std::size_t>(rows * c.input_width()));
  ProgressBar progress(config.steps, "train", "step",
                       options.show_progress && lead ? stderr : nullptr, std::chrono::seconds(10),
                       trainer.steps_done());
  StepReport report;
  const auto save = [&] {
    if (options.checkpoint.empty()) return;
    if (ranks.size() > 1) trainer.check_ranks_agree();
    trainer.save_checkpoint(options.checkpoint, data.identity());  // rank 0 writes
    ranks.barrier();  // the file is whole before any rank goes on (or reads it)
  };
  const auto stop_requested = [&] {
    std::int64_t requests = options.should_stop && options.should_stop() ? 1 : 0;
    ranks.all_reduce_sum(std::span<std::int64_t>(&requests, 1));
    return requests > 0;
  };
  bool stopped = false;  // by options.should_stop, after the checkpoint below
  while (trainer.steps_done() < config.steps) {
    const auto started = std::chrono::steady_clock::now();
    data.fill(trainer.steps_done(), rows, batch.data(), nullptr);
    report = trainer.step(batch, rows);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double tokens_per_second =
        seconds > 0 ? static_cast<double>(config.batch_size) / seconds : 0.0;
    if (options.on_step) options.on_step(report, tokens_per_second);
    progress.update(report.step, status_line(report));
    if (options.checkpoint_every > 0 && report.step % options.checkpoint_every == 0 &&
        report.step < config.steps) {
      save();
    }
    if (report.step < config.steps && stop_requested()) {
      stopped = true;
      break;
    }
  }
  progress.finish(status_line(report));
  save();
  if (stopped) {
    throw Cancelled(
        options.checkpoint.empty()
            ? fmt::format("training stopped at step {} of {}", report.step, config.steps)
            : fmt::format("training stopped at step {} of {}; {} holds it (resume to continue)",
                          report.step, config.steps, options.checkpoint.string()));
  }
  return report;
}

}  // namespace crosscoder
