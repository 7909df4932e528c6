#pragma once
/// @file report_csv.hpp
/// The diff report as CSV: one row per latent, one column per metric.

#include <filesystem>
#include <string>

#include "crosscoder/diff_report.hpp"

namespace crosscoder {

/// Header `index,class,<every name of latent_metric_names(report)>`, then one row per latent in
/// index order. Numbers are written with round-trip precision; NaN (a metric not measured for a
/// latent) is an empty field.
std::string diff_report_csv(const DiffReport& report);
/// Writes diff_report_csv atomically. @throws Error naming the path.
void write_diff_report_csv(const std::filesystem::path& path, const DiffReport& report);

}  // namespace crosscoder
