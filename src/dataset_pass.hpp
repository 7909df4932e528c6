#pragma once
// The one loop over a dataset's rows that every analysis shares (diff, measure_data,
// check_dataset): chunked reads, progress, and the caller's stop hook. Internal.

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "crosscoder/dataset.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/progress.hpp"

namespace crosscoder::detail {

// Reads rows [first, first + count) chunk by chunk and hands each to `visit(begin, n, x)`, with
// progress and the stop hook: the one loop over a dataset that every analysis shares.
template <typename Visit>
void for_each_chunk(const ActivationDataset& dataset, std::int64_t first, std::int64_t count,
                    const PassControl& pass, const char* default_label, Visit&& visit) {
  if (pass.chunk_rows <= 0)
    throw Error(fmt::format("chunk_rows {}: must be positive", pass.chunk_rows));
  const std::int64_t width = static_cast<std::int64_t>(dataset.sources()) * dataset.width();
  const std::int64_t chunk = std::min(pass.chunk_rows, std::max<std::int64_t>(count, 1));
  std::vector<float> x(static_cast<std::size_t>(chunk * width));
  const std::string label = pass.label.empty() ? std::string(default_label) : pass.label;
  ProgressBar progress(count, label, "row", pass.show_progress ? stderr : nullptr);
  for (std::int64_t done = 0; done < count; done += chunk) {
    if (pass.should_stop && pass.should_stop()) {
      throw Cancelled(fmt::format("{} stopped after {} of {} rows", label, done, count));
    }
    const std::int64_t n = std::min(chunk, count - done);
    dataset.read(first + done, n, x.data());
    visit(first + done, n, std::span<const float>(x.data(), static_cast<std::size_t>(n * width)));
    progress.update(done + n);
    if (pass.on_progress) pass.on_progress(done + n, count);
  }
  progress.finish();
}

}  // namespace crosscoder::detail
