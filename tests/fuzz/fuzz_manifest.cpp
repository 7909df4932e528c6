// libFuzzer target: the dataset manifest parser, plus a round-trip property: a manifest that
// parses must survive manifest_to_json and parse back equal.
#include <cstdint>
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  crosscoder::DatasetManifest manifest;
  try {
    manifest = crosscoder::parse_manifest(text, "fuzz/manifest.json");
  } catch (const crosscoder::Error&) {
    return 0;
  }
  const crosscoder::DatasetManifest again = crosscoder::parse_manifest(
      crosscoder::manifest_to_json(manifest, "fuzz"), "fuzz/manifest.json");
  bool equal = again.width == manifest.width && again.sources.size() == manifest.sources.size() &&
               again.labels.has_value() == manifest.labels.has_value() &&
               again.token_ids.has_value() == manifest.token_ids.has_value();
  for (std::size_t m = 0; equal && m < manifest.sources.size(); ++m)
    equal = same_column(manifest.sources[m], again.sources[m]);
  if (equal && manifest.labels) equal = same_column(*manifest.labels, *again.labels);
  if (equal && manifest.token_ids) equal = same_column(*manifest.token_ids, *again.token_ids);
  if (!equal) __builtin_trap();
  return 0;
}
