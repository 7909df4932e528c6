#pragma once
/// @file dataset.hpp
/// Paired activation datasets: N rows of M sources of width d, with optional per-row labels,
/// token ids and document ids, memory-mapped from .npy files, safetensors tensors or a sharded
/// manifest.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "crosscoder/dataset_manifest.hpp"
#include "crosscoder/progress.hpp"

namespace crosscoder {

/// Random access to paired rows. Files stay memory-mapped, never read whole, so a dataset may be
/// far larger than RAM. Reading is const and safe from several threads at once.
class ActivationDataset {
 public:
  /// Opens what `crosscoder train --data` accepts:
  ///  - one manifest (.json);
  ///  - one .npy per source, each [N, d];
  ///  - one .npy of shape [N, M, d];
  ///  - one .safetensors file whose 2-D float tensors [N, d] are the sources, in the order of
  ///    its `__metadata__` key "sources" (a JSON list of tensor names) or else by name, with
  ///    optional 1-D integer tensors "labels", "token_ids" and "document_ids" (the last two
  ///    I32).
  /// Float16 and bfloat16 are converted on the fly; bfloat16 in .npy is stored as '<u2' or
  /// '<i2' and is recognised only through a manifest ("dtype": "bf16").
  /// @throws Error naming the file (and tensor or shard) that is missing, malformed, of an
  ///         unsupported dtype, or whose shape disagrees with the others or the manifest.
  static ActivationDataset open(const std::vector<std::filesystem::path>& inputs);
  /// Opens a manifest and every shard it lists, checking each against the manifest.
  static ActivationDataset open_manifest(const std::filesystem::path& manifest);

  ActivationDataset(ActivationDataset&&) noexcept;
  ActivationDataset& operator=(ActivationDataset&&) noexcept;
  ~ActivationDataset();

  int sources() const noexcept;        ///< M, the number of sources
  int width() const noexcept;          ///< d, the width of each source's rows
  std::int64_t rows() const noexcept;  ///< N, rows of every source (row i is the same token)
  const std::vector<std::string>& source_names() const noexcept;  ///< [M], in source order
  bool has_labels() const noexcept;     ///< per-row labels are present (manifest or attached)
  bool has_token_ids() const noexcept;  ///< per-row token ids are present
  /// Per-row document ids are present: which document (text, sequence) a row's token is from.
  bool has_document_ids() const noexcept;

  /// Rows [first, first + count) as float32 into out[count, M, d].
  /// @throws Error for a range outside [0, rows()), or naming the file, source and row when a
  ///         value is NaN or infinite.
  void read(std::int64_t first, std::int64_t count, float* out) const;
  /// One source's rows [first, first + count) into out[count, d] (no finiteness check).
  void read_source(int source, std::int64_t first, std::int64_t count, float* out) const;
  /// Labels of rows [first, first + count); values outside int8 are refused when opening.
  /// @throws Error when the dataset has no labels or the range is out of bounds.
  void read_labels(std::int64_t first, std::int64_t count, std::int8_t* out) const;
  /// Token ids of rows [first, first + count). @throws Error as read_labels.
  void read_token_ids(std::int64_t first, std::int64_t count, std::int32_t* out) const;
  /// Document ids of rows [first, first + count). Ids need only differ between neighbouring
  /// documents: a document is a run of consecutive rows with equal ids, so compare a row's id
  /// with its neighbours', not with ids further away (they may be reused).
  /// @throws Error as read_labels.
  void read_document_ids(std::int64_t first, std::int64_t count, std::int32_t* out) const;

  /// Replaces (or adds) the labels with a separate 1-D integer .npy of exactly rows() values.
  /// @throws Error naming the file when its length or dtype does not fit.
  void attach_labels(const std::filesystem::path& labels);

  /// What was opened (absolute paths and row count), for checkpoints to recognise the data.
  std::string identity() const;
  /// A human-readable description: inputs, sources with dtypes, rows, shards, labels, token and
  /// document ids.
  std::string describe() const;
  /// Number of shards (1 unless opened from a manifest).
  std::size_t shards() const noexcept;

 private:
  struct Impl;
  explicit ActivationDataset(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// What check_dataset found besides that every value is finite.
struct DatasetCheck {
  std::int64_t rows = 0;
  std::int64_t positives = 0, negatives = 0;  ///< rows labelled 1 and 0 (0 without labels)
  std::int64_t ignored = 0;                   ///< labelled rows with any other label
};

/// Reads every row of `dataset` once and counts its labels.
/// @throws Error naming the file, source and row of the first NaN or infinite value;
///         Cancelled when pass.should_stop asks.
DatasetCheck check_dataset(const ActivationDataset& dataset, const PassControl& pass = {});

}  // namespace crosscoder
