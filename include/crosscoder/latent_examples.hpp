#pragma once
/// @file latent_examples.hpp
/// What a latent responds to: for every latent its highest activations, examples sampled across
/// its activation distribution, and a histogram, collected in one streaming pass with memory
/// bounded by the number of latents (not rows); then the token windows that make the examples
/// readable, and a compact file for them (docs/formats.md, "Latent examples").
///
///   crosscoder::LatentExampleCollector collector(model.config().latents, {});
///   collector.add(model.encode(x, rows), first_row);       // for each batch, rows in order
///   crosscoder::LatentExamples examples = collector.result();
///   crosscoder::attach_windows(examples, dataset);          // needs the dataset's token ids
///   crosscoder::save_examples("diff.examples.safetensors", examples);

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/dataset.hpp"
#include "crosscoder/sparse_codes.hpp"

namespace crosscoder {

/// How many examples are kept per latent, and how much context they carry.
struct ExampleOptions {
  int top = 20;  ///< highest activations kept per latent
  /// Examples spread over the activation distribution: order statistics at evenly spaced
  /// quantiles of a uniform sample (`reservoir`) of the latent's non-zero activations.
  int samples = 10;
  int reservoir = 40;      ///< size of that uniform sample per latent (at least `samples`)
  int window_before = 16;  ///< tokens of context before the example's own token
  int window_after = 4;    ///< tokens of context after it
  std::uint64_t seed = 0;  ///< reservoir sampling
  /// @throws Error naming the field when a count is negative, top + samples is 0, reservoir <
  ///         samples, or a window side exceeds 4096.
  void validate() const;
};

/// The activation histogram's bins, shared by every latent: bin 0 counts activations below
/// 1e-3, bins 1 … 28 four per decade over [1e-3, 1e4), bin 29 the rest (the crosscoder's
/// normalised units).
inline constexpr int kHistogramBins = 30;
/// The histogram's 29 inner edges, 10^(−3 + i/4) for i = 0 … 28.
std::vector<double> histogram_edges();
/// The bin of a positive activation.
int histogram_bin(double activation);

/// Per-latent examples. Rows are dataset row indices; an unused slot has row −1 and value 0.
struct LatentExamples {
  ExampleOptions options;
  std::int64_t latents = 0;               ///< F
  std::int64_t rows = 0;                  ///< rows the examples were collected from
  std::vector<std::int64_t> top_rows;     ///< [F, top], highest activation first (ties: lower row)
  std::vector<float> top_values;          ///< [F, top]
  std::vector<std::int64_t> sample_rows;  ///< [F, samples], lowest activation first
  std::vector<float> sample_values;       ///< [F, samples]
  std::vector<std::int64_t> histogram;    ///< [F, kHistogramBins] counts of non-zero activations
  std::vector<std::int64_t> active_rows;  ///< [F] rows where the latent was non-zero
  /// Token ids around each example, [F, top, W] and [F, samples, W] with
  /// W = window_before + 1 + window_after, the example's own token at window_before; −1 where
  /// there is no token: before the first row or after the last, in another document (when the
  /// dataset has document ids), or for an unused slot. Empty until attach_windows.
  std::vector<std::int32_t> top_windows, sample_windows;
  /// Whether the windows stop at document boundaries (the dataset had document ids); false:
  /// neighbouring rows are shown whatever document they belong to.
  bool windows_stop_at_documents = false;

  int window() const noexcept { return options.window_before + 1 + options.window_after; }
  bool has_windows() const noexcept { return !top_windows.empty() || !sample_windows.empty(); }
};

/// Collects LatentExamples from sparse codes batch by batch (the rows of each batch given by
/// their first dataset row). Deterministic for a seed and a sequence of batches.
class LatentExampleCollector {
 public:
  /// @throws Error when latents < 1 or the options are invalid.
  LatentExampleCollector(std::int64_t latents, const ExampleOptions& options);
  /// Adds the codes of rows [first_row, first_row + codes.rows). Latents outside [0, F) and
  /// non-positive values are refused (Error) / ignored respectively.
  void add(const HostSparseCodes& codes, std::int64_t first_row);
  /// The examples so far (no windows).
  LatentExamples result() const;

 private:
  struct Entry {
    float value;
    std::int64_t row;
  };
  ExampleOptions options_;
  std::int64_t latents_;
  std::int64_t rows_ = 0;
  std::vector<Entry> top_;  // [F, top], a min-heap per latent over its first count slots
  std::vector<std::int32_t> top_count_;
  std::vector<Entry> reservoir_;    // [F, reservoir]
  std::vector<std::int64_t> seen_;  // [F] non-zero activations seen
  std::vector<std::int64_t> histogram_;
  std::uint64_t random_state_;
};

/// Fills the token windows of `examples` from `dataset` (the dataset the rows index); with
/// document ids, a window stops where the id changes on either side of the example's row.
/// @throws Error when the dataset has no token ids or fewer rows than an example's row.
void attach_windows(LatentExamples& examples, const ActivationDataset& dataset);

/// Writes the examples as safetensors (docs/formats.md, "Latent examples"), atomically;
/// `metadata` is added to the file's metadata. @throws Error naming the path.
void save_examples(const std::filesystem::path& path, const LatentExamples& examples,
                   const std::vector<std::pair<std::string, std::string>>& metadata = {});
/// Reads save_examples' file. @throws Error naming the file and tensor when it is missing,
/// malformed or inconsistent.
LatentExamples load_examples(const std::filesystem::path& path);

}  // namespace crosscoder
