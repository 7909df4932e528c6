#include "crosscoder/report_csv.hpp"

#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "io/atomic_file.hpp"

namespace crosscoder {

std::string diff_report_csv(const DiffReport& report) {
  const std::vector<std::string> names = latent_metric_names(report);
  std::vector<std::vector<double>> columns;
  for (const std::string& name : names) columns.push_back(latent_metric(report, name));
  std::string text = "index,class";
  for (const std::string& name : names) text += "," + name;
  text += "\n";
  for (std::int64_t f = 0; f < report.weights.latents; ++f) {
    text += fmt::format(
        "{},{}", f, latent_class_name(report.weights.latent_class[static_cast<std::size_t>(f)]));
    for (const auto& column : columns) {
      const double value = column[static_cast<std::size_t>(f)];
      text += std::isnan(value) ? std::string(",") : fmt::format(",{}", value);
    }
    text += "\n";
  }
  return text;
}

void write_diff_report_csv(const std::filesystem::path& path, const DiffReport& report) {
  const std::string text = diff_report_csv(report);
  io::write_file_atomically(
      path, [&](std::FILE* stream) { io::write_bytes(stream, text.data(), text.size(), path); });
}

}  // namespace crosscoder
