#include "crosscoder/dataset_manifest.hpp"

#include <fmt/format.h>

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "crosscoder/error.hpp"
#include "enum_names.hpp"

namespace crosscoder {

namespace {

using Json = nlohmann::json;

// A manifest lists shards, not data: anything this large is not one.
constexpr std::size_t kMaxManifestBytes = std::size_t{64} << 20;
constexpr std::int64_t kMaxWidth = std::int64_t{1} << 24;

class ManifestParser {
 public:
  explicit ManifestParser(const std::filesystem::path& path)
      : path_(path), directory_(path.parent_path()) {}

  DatasetManifest parse(std::string_view text) {
    if (text.size() > kMaxManifestBytes) {
      fail("", fmt::format("is {} bytes; a manifest is at most {} bytes", text.size(),
                           kMaxManifestBytes));
    }
    Json root;
    try {
      root = Json::parse(text.begin(), text.end());
    } catch (const Json::exception& error) {
      fail("", fmt::format("is not valid JSON: {}", error.what()));
    }
    if (!root.is_object()) fail("", "must be a JSON object");

    const std::string format = string_at(root, "format", "format");
    if (format != manifest_format) {
      fail("format", fmt::format("is \"{}\"; this library reads \"{}\"", format, manifest_format));
    }
    DatasetManifest manifest;
    manifest.path = path_;
    const std::int64_t width = integer_at(root, "width", "width");
    if (width <= 0 || width > kMaxWidth) {
      fail("width", fmt::format("is {}; it must be in [1, {}]", width, kMaxWidth));
    }
    manifest.width = static_cast<int>(width);

    const Json& sources = member(root, "sources", "sources");
    if (!sources.is_array() || sources.empty()) fail("sources", "must be a non-empty array");
    std::set<std::string> names;
    for (std::size_t m = 0; m < sources.size(); ++m) {
      const std::string key = fmt::format("sources[{}]", m);
      ManifestColumn column = parse_column(sources[m], key, true);
      if (!names.insert(column.name).second) {
        fail(key + ".name", fmt::format("\"{}\" names two sources", column.name));
      }
      if (column.dtype != StoredType::F32 && column.dtype != StoredType::F16 &&
          column.dtype != StoredType::BF16) {
        fail(key + ".dtype",
             fmt::format("is {}; activations are f32, f16 or bf16", to_string(column.dtype)));
      }
      manifest.sources.push_back(std::move(column));
    }
    if (root.contains("labels") && !root["labels"].is_null()) {
      ManifestColumn labels = parse_column(root["labels"], "labels", false);
      labels.name = "labels";
      if (labels.dtype != StoredType::I8 && labels.dtype != StoredType::I32) {
        fail("labels.dtype",
             fmt::format("is {}; labels are int8 or int32", to_string(labels.dtype)));
      }
      manifest.labels = std::move(labels);
    }
    manifest.token_ids = optional_int32_column(root, "token_ids", "token ids");
    manifest.document_ids = optional_int32_column(root, "document_ids", "document ids");
    check_shards_agree(manifest);
    return manifest;
  }

 private:
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    if (key.empty()) throw Error(fmt::format("manifest {}: {}", path_.string(), what));
    throw Error(fmt::format("manifest {}: {} {}", path_.string(), key, what));
  }

  const Json& member(const Json& object, const char* name, const std::string& key) const {
    const auto found = object.find(name);
    if (found == object.end()) fail(key, "is missing");
    return *found;
  }

  std::string string_at(const Json& object, const char* name, const std::string& key) const {
    const Json& value = member(object, name, key);
    if (!value.is_string()) fail(key, "must be a string");
    return value.get<std::string>();
  }

  std::int64_t integer_at(const Json& object, const char* name, const std::string& key) const {
    const Json& value = member(object, name, key);
    if (value.is_number_unsigned()) {
      const auto unsigned_value = value.get<std::uint64_t>();
      if (unsigned_value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        fail(key, "is too large");
      }
      return static_cast<std::int64_t>(unsigned_value);
    }
    if (!value.is_number_integer()) fail(key, "must be an integer");
    return value.get<std::int64_t>();
  }

  // The optional int32 columns (token ids, document ids): absent or null means none.
  std::optional<ManifestColumn> optional_int32_column(const Json& root, const char* key,
                                                      const char* what) const {
    if (!root.contains(key) || root[key].is_null()) return std::nullopt;
    ManifestColumn column = parse_column(root[key], key, false);
    column.name = key;
    if (column.dtype != StoredType::I32) {
      fail(std::string(key) + ".dtype",
           fmt::format("is {}; {} are int32", to_string(column.dtype), what));
    }
    return column;
  }

  ManifestColumn parse_column(const Json& json, const std::string& key, bool named) const {
    if (!json.is_object()) fail(key, "must be an object");
    ManifestColumn column;
    if (named) {
      column.name = string_at(json, "name", key + ".name");
      if (column.name.empty()) fail(key + ".name", "is empty");
    }
    column.dtype = parse_stored_type(string_at(json, "dtype", key + ".dtype"),
                                     fmt::format("manifest {}: {}.dtype", path_.string(), key));
    const Json& shards = member(json, "shards", key + ".shards");
    if (!shards.is_array() || shards.empty()) fail(key + ".shards", "must be a non-empty array");
    std::int64_t total = 0;
    for (std::size_t i = 0; i < shards.size(); ++i) {
      const std::string shard_key = fmt::format("{}.shards[{}]", key, i);
      const Json& entry = shards[i];
      if (!entry.is_object()) fail(shard_key, "must be an object");
      ManifestShard shard;
      const std::string path = string_at(entry, "path", shard_key + ".path");
      if (path.empty()) fail(shard_key + ".path", "is empty");
      shard.path = std::filesystem::path(path);
      if (shard.path.is_relative()) shard.path = directory_ / shard.path;
      if (entry.contains("tensor")) {
        shard.tensor = string_at(entry, "tensor", shard_key + ".tensor");
        if (shard.tensor.empty()) fail(shard_key + ".tensor", "is empty");
      }
      shard.rows = integer_at(entry, "rows", shard_key + ".rows");
      if (shard.rows <= 0)
        fail(shard_key + ".rows", fmt::format("is {}; it must be positive", shard.rows));
      if (__builtin_add_overflow(total, shard.rows, &total))
        fail(shard_key + ".rows", "overflows the row count");
      column.shards.push_back(std::move(shard));
    }
    return column;
  }

  void check_against(const ManifestColumn& reference, const std::string& reference_key,
                     const ManifestColumn& column, const std::string& key) const {
    if (column.shards.size() != reference.shards.size()) {
      fail(key + ".shards",
           fmt::format("has {} shards but {} has {}: shard i of every column must "
                       "hold the same rows",
                       column.shards.size(), reference_key, reference.shards.size()));
    }
    for (std::size_t i = 0; i < column.shards.size(); ++i) {
      if (column.shards[i].rows != reference.shards[i].rows) {
        fail(fmt::format("{}.shards[{}].rows", key, i),
             fmt::format("is {} but {}.shards[{}].rows is {}", column.shards[i].rows, reference_key,
                         i, reference.shards[i].rows));
      }
    }
  }

  void check_shards_agree(const DatasetManifest& manifest) const {
    const ManifestColumn& first = manifest.sources.front();
    for (std::size_t m = 1; m < manifest.sources.size(); ++m) {
      check_against(first, "sources[0]", manifest.sources[m], fmt::format("sources[{}]", m));
    }
    if (manifest.labels) check_against(first, "sources[0]", *manifest.labels, "labels");
    if (manifest.token_ids) check_against(first, "sources[0]", *manifest.token_ids, "token_ids");
    if (manifest.document_ids)
      check_against(first, "sources[0]", *manifest.document_ids, "document_ids");
  }

  std::filesystem::path path_;
  std::filesystem::path directory_;
};

Json column_to_json(const ManifestColumn& column, const std::filesystem::path& directory,
                    bool named) {
  Json json = Json::object();
  if (named) json["name"] = column.name;
  json["dtype"] = std::string(to_string(column.dtype));
  Json shards = Json::array();
  for (const ManifestShard& shard : column.shards) {
    Json entry = Json::object();
    // Relative to the manifest's directory when both are relative or both absolute, so that
    // parse_manifest resolves it back to the same path. An absolute path is made relative only
    // when it lies inside the directory: "../" out of it could lead elsewhere through a
    // symbolic link, and parses back as a different path.
    std::filesystem::path path = shard.path;
    if (!directory.empty() && path.is_absolute() == directory.is_absolute()) {
      const std::filesystem::path relative = path.lexically_relative(directory);
      if (!relative.empty() && (path.is_relative() || directory / relative == path)) {
        path = relative;
      }
    }
    entry["path"] = path.string();
    if (!shard.tensor.empty()) entry["tensor"] = shard.tensor;
    entry["rows"] = shard.rows;
    shards.push_back(std::move(entry));
  }
  json["shards"] = std::move(shards);
  return json;
}

}  // namespace

namespace {

constexpr detail::EnumName<StoredType> kStoredTypeNames[] = {{StoredType::F32, "f32"},
                                                             {StoredType::F16, "f16"},
                                                             {StoredType::BF16, "bf16"},
                                                             {StoredType::I8, "int8"},
                                                             {StoredType::I32, "int32"}};

}  // namespace

std::string_view to_string(StoredType type) noexcept {
  return detail::enum_name(kStoredTypeNames, type);
}

StoredType parse_stored_type(std::string_view name, std::string_view what) {
  try {
    return detail::parse_enum(kStoredTypeNames, name, "dtype");
  } catch (const Error& error) {
    throw Error(fmt::format("{}: {}", what, error.what()));
  }
}

std::int64_t DatasetManifest::rows() const noexcept {
  std::int64_t total = 0;
  if (!sources.empty()) {
    for (const ManifestShard& shard : sources.front().shards) total += shard.rows;
  }
  return total;
}

DatasetManifest parse_manifest(std::string_view text, const std::filesystem::path& manifest_path) {
  return ManifestParser(manifest_path).parse(text);
}

DatasetManifest read_manifest(const std::filesystem::path& path) {
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  if (error)
    throw Error(fmt::format("manifest {}: cannot read it: {}", path.string(), error.message()));
  if (size > kMaxManifestBytes) {
    throw Error(fmt::format("manifest {}: is {} bytes; a manifest is at most {} bytes",
                            path.string(), size, kMaxManifestBytes));
  }
  std::ifstream stream(path, std::ios::binary);
  if (!stream) throw Error(fmt::format("manifest {}: cannot open it", path.string()));
  std::ostringstream text;
  text << stream.rdbuf();
  return parse_manifest(text.str(), path);
}

std::string manifest_to_json(const DatasetManifest& manifest,
                             const std::filesystem::path& directory) {
  Json root = Json::object();
  root["format"] = std::string(manifest_format);
  root["width"] = manifest.width;
  Json sources = Json::array();
  for (const ManifestColumn& column : manifest.sources)
    sources.push_back(column_to_json(column, directory, true));
  root["sources"] = std::move(sources);
  if (manifest.labels) root["labels"] = column_to_json(*manifest.labels, directory, false);
  if (manifest.token_ids) root["token_ids"] = column_to_json(*manifest.token_ids, directory, false);
  if (manifest.document_ids)
    root["document_ids"] = column_to_json(*manifest.document_ids, directory, false);
  return root.dump(2) + "\n";
}

}  // namespace crosscoder
