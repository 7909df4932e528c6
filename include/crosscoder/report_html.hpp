#pragma once
/// @file report_html.hpp
/// The diff report as one self-contained HTML page: inline SVG plots and a sortable table, no
/// network access (docs/diff.md, "HTML report").

#include <filesystem>
#include <string>

#include "crosscoder/diff_report.hpp"
#include "crosscoder/vocabulary.hpp"

namespace crosscoder {

struct HtmlReportOptions {
  std::string title = "crosscoder diff";
  /// Rows of the table of top latents (ranked by Cohen's d with labels, else by the last
  /// source's relative norm).
  int top = 100;
  /// At most this many points per scatter plot (an evenly spaced subset of latents beyond it).
  int max_points = 20000;
  /// With examples in the report: a feature page (metrics, decoder norms per source, activation
  /// histogram, top and sampled examples as text) for each of the first `feature_pages`
  /// latents of every ranking the page shows (relative norm of the last source; Cohen's d
  /// with labels), linked from the table. The table indexes the rest.
  int feature_pages = 200;
  /// How many top and sampled examples a feature page shows.
  int examples_per_page = 10;
  /// Turns the examples' token ids into text; without it the pages show token ids.
  const Vocabulary* vocabulary = nullptr;
};

/// The density plot (firing frequency by class): log10 frequency over [density_floor(rows), 0]
/// in kDensityBins bins, rows being the data's; density_floor is log10(1/rows) rounded down.
inline constexpr int kDensityBins = 40;
double density_floor(std::int64_t rows);

/// The page. Every histogram bar is an SVG <rect> carrying data-plot, data-class, data-bin and
/// data-count attributes, so tools (and tests) can read the numbers back. A feature page is a
/// <section class='feature' data-latent='F'>; each example's own token is a <mark> whose
/// data-activation is its activation.
std::string diff_report_html(const DiffReport& report, const HtmlReportOptions& options = {});
/// Writes diff_report_html atomically. @throws Error naming the path.
void write_diff_report_html(const std::filesystem::path& path, const DiffReport& report,
                            const HtmlReportOptions& options = {});

}  // namespace crosscoder
