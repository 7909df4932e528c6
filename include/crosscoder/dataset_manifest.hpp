#pragma once
/// @file dataset_manifest.hpp
/// The JSON manifest of a sharded activation dataset (docs/formats.md, "Dataset manifests").
///
///     {
///       "format": "crosscoder-activations-1",
///       "width": 512,
///       "sources": [
///         {"name": "base", "dtype": "bf16",
///          "shards": [{"path": "base-00000.npy", "rows": 65536}, ...]},
///         {"name": "tuned", "dtype": "bf16",
///          "shards": [{"path": "tuned.safetensors", "tensor": "layer6", "rows": 65536}, ...]}
///       ],
///       "labels": {"dtype": "int8", "shards": [{"path": "labels-00000.npy", "rows": 65536}]},
///       "token_ids": {"dtype": "int32", "shards": [...]},
///       "document_ids": {"dtype": "int32", "shards": [...]}
///     }
///
/// Parsing checks the manifest itself (types, names, positive row counts, identical shard row
/// counts across sources, labels, token ids and document ids); opening the files it lists is
/// ActivationDataset's job.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace crosscoder {

/// Element types of stored activations, labels and token ids.
enum class StoredType { F32, F16, BF16, I8, I32 };

/// "f32", "f16", "bf16", "int8", "int32".
std::string_view to_string(StoredType type) noexcept;
/// Parses the names above. @throws Error naming `what` and the accepted names.
StoredType parse_stored_type(std::string_view name, std::string_view what);

struct ManifestShard {
  std::filesystem::path path;  ///< absolute, or relative to the manifest's directory resolved
  std::string tensor;          ///< safetensors tensor name; empty for .npy
  std::int64_t rows = 0;
};

/// One column of the dataset: a source's activations, the labels, the token ids or the document
/// ids.
struct ManifestColumn {
  std::string name;
  StoredType dtype = StoredType::F32;
  std::vector<ManifestShard> shards;
};

struct DatasetManifest {
  std::filesystem::path path;  ///< the manifest file itself (for messages)
  int width = 0;
  std::vector<ManifestColumn> sources;
  std::optional<ManifestColumn> labels;
  std::optional<ManifestColumn> token_ids;
  /// Which document (text, sequence) each row's token belongs to. Ids need only differ between
  /// neighbouring documents: consumers compare a row's id with its neighbours', never across
  /// the dataset.
  std::optional<ManifestColumn> document_ids;
  /// Σ rows of one column's shards.
  std::int64_t rows() const noexcept;
};

/// The manifest's "format" value.
inline constexpr std::string_view manifest_format = "crosscoder-activations-1";

/// Parses and validates manifest text. Relative shard paths are resolved against the directory
/// of `manifest_path`. Never touches the file system.
/// @throws Error naming `manifest_path` and the offending key (e.g. "sources[1].shards[3].rows")
///         for malformed JSON, a missing or mistyped key, an unknown format, a non-positive
///         width or row count, an activation dtype that is not f32/f16/bf16 (labels: int8 or
///         int32; token ids and document ids: int32), duplicate source names, or shard row
///         counts that differ between sources, labels, token ids and document ids.
DatasetManifest parse_manifest(std::string_view text, const std::filesystem::path& manifest_path);

/// Reads and parses a manifest file. @throws Error as parse_manifest, or naming the path when
/// it cannot be read.
DatasetManifest read_manifest(const std::filesystem::path& path);

/// The manifest as JSON text (paths written relative to `directory` when inside it).
std::string manifest_to_json(const DatasetManifest& manifest,
                             const std::filesystem::path& directory);

}  // namespace crosscoder
