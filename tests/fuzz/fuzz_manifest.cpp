// libFuzzer target: the dataset manifest parser, plus a round-trip property: a manifest that
// parses must survive manifest_to_json and parse back equal (for a manifest in a relative and
// in an absolute directory). A crosscoder::Error from the first parse is the expected answer to
// bad text; a crash, a sanitizer report, another exception type, a hang or a failed round trip
// is a finding.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "crosscoder/dataset_manifest.hpp"
#include "crosscoder/error.hpp"

namespace {

bool same_column(const crosscoder::ManifestColumn& a, const crosscoder::ManifestColumn& b) {
  if (a.name != b.name || a.dtype != b.dtype || a.shards.size() != b.shards.size()) return false;
  for (std::size_t i = 0; i < a.shards.size(); ++i) {
    if (a.shards[i].path != b.shards[i].path || a.shards[i].tensor != b.shards[i].tensor ||
        a.shards[i].rows != b.shards[i].rows)
      return false;
  }
  return true;
}

bool same_manifest(const crosscoder::DatasetManifest& a, const crosscoder::DatasetManifest& b) {
  if (a.width != b.width || a.rows() != b.rows() || a.sources.size() != b.sources.size() ||
      a.labels.has_value() != b.labels.has_value() ||
      a.token_ids.has_value() != b.token_ids.has_value() ||
      a.document_ids.has_value() != b.document_ids.has_value())
    return false;
  for (std::size_t m = 0; m < a.sources.size(); ++m)
    if (!same_column(a.sources[m], b.sources[m])) return false;
  if (a.labels && !same_column(*a.labels, *b.labels)) return false;
  if (a.token_ids && !same_column(*a.token_ids, *b.token_ids)) return false;
  if (a.document_ids && !same_column(*a.document_ids, *b.document_ids)) return false;
  return true;
}

void round_trip(std::string_view text, const std::filesystem::path& manifest_path) {
  crosscoder::DatasetManifest manifest;
  try {
    manifest = crosscoder::parse_manifest(text, manifest_path);
  } catch (const crosscoder::Error&) {
    return;
  }
  std::string json;
  crosscoder::DatasetManifest again;
  try {
    json = crosscoder::manifest_to_json(manifest, manifest_path.parent_path());
    again = crosscoder::parse_manifest(json, manifest_path);
  } catch (const crosscoder::Error&) {
    __builtin_trap();  // what the library writes, it must read back
  }
  if (!same_manifest(manifest, again)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  round_trip(text, "fuzz/manifest.json");
  round_trip(text, "/data/fuzz/manifest.json");
  return 0;
}
