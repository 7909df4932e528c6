// `crosscoder export`: latents' decoder directions as a llama.cpp control vector or safetensors.
#include <fmt/format.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/model.hpp"
#include "crosscoder/steering_export.hpp"

namespace crosscoder::cli {
namespace {

struct ExportFlags {
  std::string model;
  std::vector<int> latents;
  int source = -1;
  int layer = 0;
  std::vector<double> scales;
  std::string format = "gguf";
  std::string out;
  std::string model_hint = "llama";
};

int run(const ExportFlags& flags) {
  if (flags.format != "gguf" && flags.format != "safetensors") {
    throw Error(fmt::format("--format {}: expected gguf or safetensors", flags.format));
  }
  if (!flags.scales.empty() && flags.scales.size() != 1 &&
      flags.scales.size() != flags.latents.size()) {
    throw Error(
        fmt::format("--scale given {} times for {} latents: give one for all, or one per latent",
                    flags.scales.size(), flags.latents.size()));
  }
  require_writable_parent(flags.out, "--out");
  const Crosscoder model = Crosscoder::load(flags.model, make_backend(BackendKind::cpu));
  const int source = flags.source >= 0 ? flags.source : model.config().sources - 1;
  std::vector<SteeringDirection> directions;
  for (std::size_t i = 0; i < flags.latents.size(); ++i) {
    const double scale = flags.scales.empty()       ? 1.0
                         : flags.scales.size() == 1 ? flags.scales[0]
                                                    : flags.scales[i];
    directions.push_back({flags.latents[i], source, scale});
  }
  if (flags.format == "gguf") {
    write_control_vector(flags.out, model, directions, {flags.layer, flags.model_hint});
    std::printf("control vector: %s (direction.%d, width %d, %zu latent%s of source %d)\n",
                flags.out.c_str(), flags.layer, model.config().width, directions.size(),
                directions.size() == 1 ? "" : "s", source);
  } else {
    write_direction_safetensors(flags.out, model, directions, flags.layer, flags.model);
    std::printf("directions: %s\n", flags.out.c_str());
  }
  return 0;
}

}  // namespace

Runner add_export_command(CLI::App& app) {
  auto flags = std::make_shared<ExportFlags>();
  ExportFlags& exporting = *flags;
  CLI::App* command = app.add_subcommand("export",
                                         "Export latents' decoder directions (raw units) as "
                                         "a llama.cpp control vector or safetensors");
  command
      ->add_option("model,--model", exporting.model,
                   "Trained crosscoder (safetensors), as the first argument or after --model")
      ->required()
      ->check(CLI::ExistingFile);
  command->add_option("--latent", exporting.latents, "Latent(s) to export; several are summed")
      ->required();
  command->add_option("--source", exporting.source,
                      "Which source's decoder direction (default: the last, the fine-tuned model)");
  command
      ->add_option("--layer", exporting.layer,
                   "gguf: llama.cpp block N whose output gets the vector (N ≥ 1; Hugging Face "
                   "hidden_states[L] is N = L − 1); safetensors: recorded in the metadata")
      ->required();
  command->add_option("--scale", exporting.scales,
                      "Strength α: one for all latents, or one per latent");
  command->add_option("--format", exporting.format, "gguf | safetensors")->capture_default_str();
  command->add_option("--out", exporting.out, "Output file")->required();
  command->add_option("--model-hint", exporting.model_hint, "gguf: controlvector.model_hint")
      ->capture_default_str();
  return [flags] { return run(*flags); };
}

}  // namespace crosscoder::cli
