#pragma once
/// @file train_loop.hpp
/// The training loop: batches from a BatchSource, steps, progress, periodic atomic
/// checkpoints and exact resume.

#include <cstdint>
#include <filesystem>
#include <functional>

#include "crosscoder/batch_source.hpp"
#include "crosscoder/trainer.hpp"

namespace crosscoder {

/// How train() checkpoints, resumes and reports progress.
struct TrainingOptions {
  /// Training checkpoint path (optimiser state included); empty = none.
  std::filesystem::path checkpoint;
  /// Steps between checkpoints (and one at the end); 0 = only at the end.
  std::int64_t checkpoint_every = 0;
  /// Continue from `checkpoint` if it exists (and refuse one written for other data).
  bool resume = false;
  /// Draw a progress bar / log lines on stderr.
  bool show_progress = true;
  /// Called after every step with its report (loss, FVE, L0, dead fraction, ...).
  std::function<void(const StepReport&, double tokens_per_second)> on_step;
  /// Polled after every step; returning true ends the run there: the training checkpoint is
  /// written (when there is one), so that `resume` continues exactly, and train() throws
  /// Cancelled naming the step.
  std::function<bool()> should_stop;
};

/// Runs `trainer` from its current step to config().steps on batches of config().batch_size
/// rows from `data`. On a non-finite loss it throws Error naming the step; the last checkpoint
/// written stays intact. Returns the last step's report.
///
/// Over several ranks every rank calls train() with `data` giving its replica's rows of each
/// global batch (a RankSliceBatches over the same global source, with the slice
/// Parallelism::rows_of(batch_size, rank, ranks); latent shards of one replica read the same
/// rows). Rank 0 alone draws progress and writes the checkpoint (the whole model, gathered
/// from the shards), after checking that the ranks' parameters agree; every rank reads it to
/// resume, at this or any other number of ranks and shards; a stop request on any rank stops
/// all of them at the same step.
/// @throws Cancelled when options.should_stop asks, after writing the checkpoint.
StepReport train(Trainer& trainer, BatchSource& data, const TrainingOptions& options);

}  // namespace crosscoder
