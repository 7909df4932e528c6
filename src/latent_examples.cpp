#include "crosscoder/latent_examples.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "crosscoder/error.hpp"
#include "crosscoder/io/safetensors.hpp"

namespace crosscoder {

namespace {

constexpr std::string_view kExamplesFormat = "crosscoder-examples-1";
constexpr int kMaximumWindowSide = 4096;

// splitmix64: a fast, well-mixed stream for the reservoirs' draws.
std::uint64_t next_random(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A uniform integer in [0, n); the modulo's bias, n / 2^64, is far below anything measurable.
std::int64_t uniform_below(std::uint64_t& state, std::int64_t n) noexcept {
  return static_cast<std::int64_t>(next_random(state) % static_cast<std::uint64_t>(n));
}

template <typename T>
std::span<const std::byte> bytes_of(const std::vector<T>& values) {
  return std::as_bytes(std::span<const T>(values));
}

}  // namespace

void ExampleOptions::validate() const {
  const auto require = [](bool ok, const char* field, auto value) {
    if (!ok) throw Error(fmt::format("example options: {} out of range: {}", field, value));
  };
  require(top >= 0, "top", top);
  require(samples >= 0, "samples", samples);
  require(top + samples > 0, "top + samples", top + samples);
  require(reservoir >= samples, "reservoir (must be at least samples)", reservoir);
  require(window_before >= 0 && window_before <= kMaximumWindowSide, "window_before",
          window_before);
  require(window_after >= 0 && window_after <= kMaximumWindowSide, "window_after", window_after);
}

std::vector<double> histogram_edges() {
  std::vector<double> edges(kHistogramBins - 1);
  for (int i = 0; i < kHistogramBins - 1; ++i) edges[i] = std::pow(10.0, -3.0 + i / 4.0);
  return edges;
}

int histogram_bin(double activation) {
  if (!(activation >= 1e-3)) return 0;
  // Compared with the edges themselves (not a logarithm) so that the bins are exactly half-open.
  static const std::vector<double> edges = histogram_edges();
  const auto above = std::upper_bound(edges.begin(), edges.end(), activation);
  return static_cast<int>(above - edges.begin());
}

LatentExampleCollector::LatentExampleCollector(std::int64_t latents, const ExampleOptions& options)
    : options_(options), latents_(latents), random_state_(options.seed) {
  options_.validate();
  if (latents < 1) throw Error(fmt::format("latent examples: {} latents", latents));
  const auto F = static_cast<std::size_t>(latents);
  top_.assign(F * static_cast<std::size_t>(options_.top), Entry{0.0f, -1});
  top_count_.assign(F, 0);
  reservoir_.assign(F * static_cast<std::size_t>(options_.reservoir), Entry{0.0f, -1});
  seen_.assign(F, 0);
  histogram_.assign(F * kHistogramBins, 0);
}

void LatentExampleCollector::add(const HostSparseCodes& codes, std::int64_t first_row) {
  if (first_row < 0) throw Error(fmt::format("latent examples: first row {}", first_row));
  const int top = options_.top, reservoir = options_.reservoir;
  // Heap order: the worst kept entry on top. Lower activations are worse; among equal ones the
  // later row, so that earlier rows win ties.
  const auto better = [](const Entry& a, const Entry& b) {
    return a.value > b.value || (a.value == b.value && a.row < b.row);
  };
  for (std::int64_t b = 0; b < codes.rows; ++b) {
    const std::int64_t row = first_row + b;
    for (std::int64_t e = codes.row_ptr[b]; e < codes.row_ptr[b + 1]; ++e) {
      const std::int32_t f = codes.latent[e];
      if (f < 0 || f >= latents_) {
        throw Error(fmt::format("latent examples: latent {} of row {} is outside [0, {})", f, row,
                                latents_));
      }
      const float value = codes.value[e];
      if (!(value > 0.0f)) continue;
      const Entry entry{value, row};
      ++histogram_[static_cast<std::size_t>(f) * kHistogramBins + histogram_bin(value)];
      if (top > 0) {
        Entry* heap = top_.data() + static_cast<std::ptrdiff_t>(f) * top;
        std::int32_t& count = top_count_[f];
        if (count < top) {
          heap[count++] = entry;
          std::push_heap(heap, heap + count, better);
        } else if (better(entry, heap[0])) {
          std::pop_heap(heap, heap + top, better);
          heap[top - 1] = entry;
          std::push_heap(heap, heap + top, better);
        }
      }
      // Algorithm R: after n activations every one of them is in the sample with probability
      // reservoir / n.
      const std::int64_t n = ++seen_[f];
      if (reservoir > 0) {
        Entry* sample = reservoir_.data() + static_cast<std::ptrdiff_t>(f) * reservoir;
        if (n <= reservoir) {
          sample[n - 1] = entry;
        } else {
          const std::int64_t slot = uniform_below(random_state_, n);
          if (slot < reservoir) sample[slot] = entry;
        }
      }
    }
  }
  rows_ = std::max(rows_, first_row + codes.rows);
}

LatentExamples LatentExampleCollector::result() const {
  LatentExamples out;
  out.options = options_;
  out.latents = latents_;
  out.rows = rows_;
  const auto F = static_cast<std::size_t>(latents_);
  const auto top = static_cast<std::size_t>(options_.top);
  const auto samples = static_cast<std::size_t>(options_.samples);
  const auto reservoir = static_cast<std::size_t>(options_.reservoir);
  out.top_rows.assign(F * top, -1);
  out.top_values.assign(F * top, 0.0f);
  out.sample_rows.assign(F * samples, -1);
  out.sample_values.assign(F * samples, 0.0f);
  out.histogram = histogram_;
  out.active_rows = seen_;
  std::vector<Entry> kept;
  for (std::size_t f = 0; f < F; ++f) {
    kept.assign(top_.begin() + static_cast<std::ptrdiff_t>(f * top),
                top_.begin() + static_cast<std::ptrdiff_t>(f * top + top_count_[f]));
    std::sort(kept.begin(), kept.end(), [](const Entry& a, const Entry& b) {
      return a.value > b.value || (a.value == b.value && a.row < b.row);
    });
    for (std::size_t i = 0; i < kept.size(); ++i) {
      out.top_rows[f * top + i] = kept[i].row;
      out.top_values[f * top + i] = kept[i].value;
    }
    const auto n = static_cast<std::size_t>(
        std::min<std::int64_t>(seen_[f], static_cast<std::int64_t>(reservoir)));
    kept.assign(reservoir_.begin() + static_cast<std::ptrdiff_t>(f * reservoir),
                reservoir_.begin() + static_cast<std::ptrdiff_t>(f * reservoir + n));
    std::sort(kept.begin(), kept.end(), [](const Entry& a, const Entry& b) {
      return a.value < b.value || (a.value == b.value && a.row < b.row);
    });
    // Order statistics at the quantiles (i + ½)/samples of the sample: evenly spread over the
    // distribution, the extremes left to the top examples.
    const std::size_t chosen = std::min(n, samples);
    for (std::size_t i = 0; i < chosen; ++i) {
      const std::size_t index = n <= samples ? i : (2 * i + 1) * n / (2 * samples);
      out.sample_rows[f * samples + i] = kept[index].row;
      out.sample_values[f * samples + i] = kept[index].value;
    }
  }
  return out;
}

void attach_windows(LatentExamples& examples, const ActivationDataset& dataset) {
  if (!dataset.has_token_ids()) {
    throw Error(
        "latent examples: the dataset has no token ids, so examples have no text (write them "
        "with the ActivationWriter's token_ids, or a token_ids column in the manifest)");
  }
  const int before = examples.options.window_before, after = examples.options.window_after;
  const int W = examples.window();
  const std::int64_t N = dataset.rows();
  const bool documents = dataset.has_document_ids();
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(W)), ids(tokens.size());
  const auto fill = [&](const std::vector<std::int64_t>& rows, std::vector<std::int32_t>& windows) {
    windows.assign(rows.size() * static_cast<std::size_t>(W), -1);
    for (std::size_t e = 0; e < rows.size(); ++e) {
      const std::int64_t row = rows[e];
      if (row < 0) continue;
      if (row >= N) {
        throw Error(
            fmt::format("latent examples: row {} is beyond the dataset's {} rows (were "
                        "the examples collected from another dataset?)",
                        row, N));
      }
      const std::int64_t first = std::max<std::int64_t>(0, row - before);
      const std::int64_t last = std::min<std::int64_t>(N - 1, row + after);
      dataset.read_token_ids(first, last - first + 1, tokens.data());
      if (documents) {
        // A document is a run of rows with one id: stop at the first change on either side.
        dataset.read_document_ids(first, last - first + 1, ids.data());
        const std::int32_t own = ids[static_cast<std::size_t>(row - first)];
        for (std::int64_t r = row - first; r-- > 0;) {
          if (ids[static_cast<std::size_t>(r)] != own) {
            for (std::int64_t q = r; q >= 0; --q) tokens[static_cast<std::size_t>(q)] = -1;
            break;
          }
        }
        for (std::int64_t r = row - first + 1; r <= last - first; ++r) {
          if (ids[static_cast<std::size_t>(r)] != own) {
            for (std::int64_t q = r; q <= last - first; ++q)
              tokens[static_cast<std::size_t>(q)] = -1;
            break;
          }
        }
      }
      std::int32_t* window = windows.data() + e * static_cast<std::size_t>(W);
      std::copy_n(tokens.data(), last - first + 1, window + (first - (row - before)));
    }
  };
  fill(examples.top_rows, examples.top_windows);
  fill(examples.sample_rows, examples.sample_windows);
  examples.windows_stop_at_documents = documents;
}

void save_examples(const std::filesystem::path& path, const LatentExamples& examples,
                   const std::vector<std::pair<std::string, std::string>>& metadata) {
  const std::int64_t F = examples.latents, top = examples.options.top,
                     samples = examples.options.samples, W = examples.window();
  io::SafetensorsWriter writer;
  writer.add_int64("active_rows", {F}, examples.active_rows);
  writer.add_int64("histogram", {F, kHistogramBins}, examples.histogram);
  writer.add_int64("top.rows", {F, top}, examples.top_rows);
  writer.add_float("top.values", {F, top}, examples.top_values);
  writer.add_int64("samples.rows", {F, samples}, examples.sample_rows);
  writer.add_float("samples.values", {F, samples}, examples.sample_values);
  if (examples.has_windows()) {
    writer.add_raw("top.windows", io::DType::I32, {F, top, W}, bytes_of(examples.top_windows));
    writer.add_raw("samples.windows", io::DType::I32, {F, samples, W},
                   bytes_of(examples.sample_windows));
  }
  const ExampleOptions& o = examples.options;
  writer.set_metadata("format", std::string(kExamplesFormat));
  writer.set_metadata("options", nlohmann::json{{"top", o.top},
                                                {"samples", o.samples},
                                                {"reservoir", o.reservoir},
                                                {"window_before", o.window_before},
                                                {"window_after", o.window_after},
                                                {"seed", o.seed}}
                                     .dump());
  writer.set_metadata("rows", std::to_string(examples.rows));
  writer.set_metadata("windows_stop_at_documents",
                      examples.windows_stop_at_documents ? "true" : "false");
  for (const auto& [key, value] : metadata) writer.set_metadata(key, value);
  writer.write(path);
}

LatentExamples load_examples(const std::filesystem::path& path) {
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  const auto& metadata = file.metadata();
  const auto entry = [&](const char* key) {
    const auto found = metadata.find(key);
    if (found == metadata.end())
      throw Error(fmt::format("{}: not a latent examples file (no '{}' in __metadata__)",
                              path.string(), key));
    return found->second;
  };
  if (entry("format") != kExamplesFormat) {
    throw Error(fmt::format("{}: format '{}', expected '{}'", path.string(), entry("format"),
                            kExamplesFormat));
  }
  LatentExamples examples;
  try {
    const nlohmann::json o = nlohmann::json::parse(entry("options"));
    examples.options.top = o.at("top").get<int>();
    examples.options.samples = o.at("samples").get<int>();
    examples.options.reservoir = o.at("reservoir").get<int>();
    examples.options.window_before = o.at("window_before").get<int>();
    examples.options.window_after = o.at("window_after").get<int>();
    examples.options.seed = o.at("seed").get<std::uint64_t>();
    examples.rows = std::stoll(entry("rows"));
  } catch (const nlohmann::json::exception& error) {
    throw Error(fmt::format("{}: bad 'options' metadata: {}", path.string(), error.what()));
  } catch (const std::logic_error&) {
    throw Error(fmt::format("{}: bad 'rows' metadata '{}'", path.string(), entry("rows")));
  }
  try {
    examples.options.validate();
  } catch (const Error& error) {
    throw Error(fmt::format("{}: {}", path.string(), error.what()));
  }
  examples.windows_stop_at_documents = entry("windows_stop_at_documents") == "true";
  examples.active_rows = file.read_int("active_rows");
  examples.latents = static_cast<std::int64_t>(examples.active_rows.size());
  const std::int64_t F = examples.latents, top = examples.options.top,
                     samples = examples.options.samples, W = examples.window();
  const auto expect = [&](const char* name, const std::vector<std::int64_t>& shape) {
    if (file.info(name).shape != shape) {
      throw Error(fmt::format("{}: tensor '{}' has shape [{}], expected [{}]", path.string(), name,
                              fmt::join(file.info(name).shape, ", "), fmt::join(shape, ", ")));
    }
  };
  expect("histogram", {F, kHistogramBins});
  examples.histogram = file.read_int("histogram");
  expect("top.rows", {F, top});
  examples.top_rows = file.read_int("top.rows");
  examples.top_values = file.read_float("top.values", {F, top});
  expect("samples.rows", {F, samples});
  examples.sample_rows = file.read_int("samples.rows");
  examples.sample_values = file.read_float("samples.values", {F, samples});
  for (const std::int64_t row : examples.top_rows) {
    if (row < -1 || row >= examples.rows)
      throw Error(fmt::format("{}: top.rows holds row {} outside [-1, {})", path.string(), row,
                              examples.rows));
  }
  for (const std::int64_t row : examples.sample_rows) {
    if (row < -1 || row >= examples.rows)
      throw Error(fmt::format("{}: samples.rows holds row {} outside [-1, {})", path.string(), row,
                              examples.rows));
  }
  if (file.contains("top.windows") || file.contains("samples.windows")) {
    const auto windows = [&](const char* name, std::int64_t slots) {
      expect(name, {F, slots, W});
      const std::vector<std::int64_t> wide = file.read_int(name);
      return std::vector<std::int32_t>(wide.begin(), wide.end());
    };
    examples.top_windows = windows("top.windows", top);
    examples.sample_windows = windows("samples.windows", samples);
  }
  return examples;
}

}  // namespace crosscoder
