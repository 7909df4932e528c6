#pragma once
/// @file activation_writer.hpp
/// Writing a sharded activation dataset (docs/formats.md) from inference code.

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/dataset_manifest.hpp"

namespace crosscoder {

struct ActivationWriterOptions {
  /// One name per source, used in the manifest and in shard file names ([A-Za-z0-9._-]+).
  std::vector<std::string> source_names;
  int width = 0;
  /// How activations are stored: f32, f16 or bf16 (bf16 as '<u2' .npy).
  StoredType dtype = StoredType::F32;
  /// Rows per shard file.
  std::int64_t shard_rows = 65536;
  bool labels = false;     ///< expect append_labels (stored as int8)
  bool token_ids = false;  ///< expect append_token_ids (int32)
  /// Expect append_document_ids (int32), stored as documents-NNNNN.npy (so no source may then
  /// be named "documents").
  bool document_ids = false;
  /// Replace an existing manifest in the directory (default: refuse).
  bool overwrite = false;
};

/// Appends rows per source (and labels, token ids, document ids) as a capture hook produces them,
/// writes each full shard as a .npy file at once (atomically), and at close() writes the last
/// shards and the manifest, atomically, so a reader sees either no dataset or a complete one.
/// Sources may be appended at different paces (e.g. one model's forward pass, then the other's); at
/// close every column must have the same number of rows. Thread-safe: appends from several threads
/// are serialised.
class ActivationWriter {
 public:
  /// Creates `directory` if needed.
  /// @throws Error for an empty or invalid source name, duplicate names, width or shard_rows
  ///         ≤ 0, an activation dtype other than f32/f16/bf16, or an existing manifest.json
  ///         without `overwrite`.
  ActivationWriter(std::filesystem::path directory, ActivationWriterOptions options);
  /// Without close(), no manifest is written: shards already on disk stay, unreferenced.
  ~ActivationWriter();
  ActivationWriter(const ActivationWriter&) = delete;
  ActivationWriter& operator=(const ActivationWriter&) = delete;

  /// Appends rows [n, d] of one source. @throws Error naming the source when the size is not a
  ///         multiple of the width, a value is not finite, or the writer is closed.
  void append(int source, std::span<const float> rows);
  /// Appends rows [n, M, d] of all sources at once.
  void append_all(std::span<const float> rows);
  /// @throws Error unless the writer was created with labels = true.
  void append_labels(std::span<const std::int8_t> labels);
  /// @throws Error unless the writer was created with token_ids = true.
  void append_token_ids(std::span<const std::int32_t> token_ids);
  /// Which document each row's token is from. Ids need only differ between neighbouring
  /// documents (e.g. the sequence's index). @throws Error unless created with document_ids.
  void append_document_ids(std::span<const std::int32_t> document_ids);

  /// Rows appended so far to a source.
  std::int64_t rows(int source) const;
  int sources() const noexcept { return static_cast<int>(options_.source_names.size()); }
  int width() const noexcept { return options_.width; }
  /// Writes the remaining rows and the manifest; returns the manifest's path.
  /// @throws Error naming the columns whose row counts differ, or when nothing was written.
  std::filesystem::path close();
  /// True once close() has written the manifest.
  bool closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
  }

 private:
  struct PendingColumn {
    std::string file_prefix;
    std::string descr;
    std::size_t element_size = 0;
    std::int64_t row_elements = 0;
    std::int64_t rows = 0;  // total appended
    std::vector<std::byte> pending;
    ManifestColumn manifest;
  };

  void add_rows(PendingColumn& column, const std::byte* data, std::int64_t rows);
  // Appends to an integer column (labels, token ids, document ids) if the options asked for it.
  void append_integers(PendingColumn& column, bool expected, const char* what,
                       std::span<const std::byte> values);
  void write_shard(PendingColumn& column);

  std::filesystem::path directory_;
  ActivationWriterOptions options_;
  std::vector<PendingColumn> sources_;
  PendingColumn labels_, token_ids_, document_ids_;
  std::vector<std::byte> converted_;
  bool closed_ = false;
  mutable std::mutex mutex_;
};

}  // namespace crosscoder
