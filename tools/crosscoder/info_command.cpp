// `crosscoder info`: what a dataset, manifest, .npy or safetensors file holds, and whether it is
// valid (check_dataset reads every row).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli.hpp"
#include "crosscoder/dataset.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/io/safetensors.hpp"

namespace crosscoder::cli {
namespace {

struct InfoFlags {
  std::vector<std::string> inputs;
  bool check = false;
  bool full_metadata = false;
};

// What one file holds, whatever it is: the raw arrays or tensors with their dtypes and shapes.
void print_file_contents(const std::filesystem::path& path, bool full_metadata) {
  const std::string extension = path.extension().string();
  if (extension == ".npy") {
    const io::NpyFile file = io::NpyFile::open(path);
    std::printf("%s: .npy array '%s' of shape [%s]\n", path.c_str(), file.descr().c_str(),
                fmt::format("{}", fmt::join(file.shape(), ", ")).c_str());
  } else if (extension == ".safetensors") {
    const io::SafetensorsFile file = io::SafetensorsFile::open(path);
    std::printf("%s: safetensors, %zu tensors\n", path.c_str(), file.names().size());
    for (const std::string& name : file.names()) {
      const io::TensorInfo& info = file.info(name);
      std::printf("  %-32s %-4s [%s]\n", name.c_str(),
                  std::string(io::to_string(info.dtype)).c_str(),
                  fmt::format("{}", fmt::join(info.shape, ", ")).c_str());
    }
    for (const auto& [key, value] : file.metadata()) {
      const std::string shown =
          value.size() > 200 && !full_metadata ? value.substr(0, 200) + "…" : value;
      std::printf("  metadata %s: %s\n", key.c_str(), shown.c_str());
    }
  }
}

int run(const InfoFlags& flags) {
  const auto inputs = as_paths(flags.inputs);
  for (const auto& path : inputs) print_file_contents(path, flags.full_metadata);
  if (inputs.size() == 1 && inputs[0].extension() == ".safetensors") {
    const io::SafetensorsFile file = io::SafetensorsFile::open(inputs[0]);
    const auto format = file.metadata().find("format");
    if (format != file.metadata().end() && format->second.rfind("crosscoder-checkpoint", 0) == 0) {
      std::printf("valid crosscoder checkpoint (%s)\n", format->second.c_str());
      return 0;
    }
  }
  const ActivationDataset dataset = ActivationDataset::open(inputs);
  std::printf("dataset: %s", dataset.describe().c_str());
  if (flags.check) {
    PassControl pass;
    pass.chunk_rows = 8192;
    const DatasetCheck check = check_dataset(dataset, pass);
    std::printf("every value is finite\n");
    if (dataset.has_labels()) {
      std::printf("labels: %lld positive, %lld negative, %lld ignored\n",
                  static_cast<long long>(check.positives), static_cast<long long>(check.negatives),
                  static_cast<long long>(check.ignored));
    }
  }
  std::printf("valid dataset: %lld rows, %d source%s of width %d\n",
              static_cast<long long>(dataset.rows()), dataset.sources(),
              dataset.sources() == 1 ? "" : "s", dataset.width());
  return 0;
}

}  // namespace

Runner add_info_command(CLI::App& app) {
  auto flags = std::make_shared<InfoFlags>();
  CLI::App* command = app.add_subcommand(
      "info", "Print what a dataset, manifest, .npy or safetensors file holds and check it");
  command
      ->add_option("inputs", flags->inputs,
                   "A file, or the inputs of a dataset as `train --data` takes them")
      ->required()
      ->check(CLI::ExistingFile);
  command->add_flag("--check", flags->check,
                    "Read every row: report NaN/Inf values and count the labels");
  command->add_flag("--full-metadata", flags->full_metadata,
                    "Print safetensors metadata values whole (by default cut at 200 characters)");
  return [flags] { return run(*flags); };
}

}  // namespace crosscoder::cli
