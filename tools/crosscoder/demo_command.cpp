// `crosscoder demo`: train on a synthetic model pair with planted features and report what the
// crosscoder recovered (run_demo).
#include <cstdio>
#include <memory>
#include <string>

#include "cli.hpp"
#include "crosscoder/config.hpp"
#include "crosscoder/demo.hpp"

namespace crosscoder::cli {
namespace {

struct DemoFlags {
  DemoOptions options = default_demo_options();
  std::string device = "auto";
  std::string out = "crosscoder-demo.safetensors";
  std::string activation = std::string(to_string(default_demo_options().model.activation));
  int exclusive = 0;
};

int run(DemoFlags& flags) {
  DemoOptions& options = flags.options;
  options.model.activation = parse_activation(flags.activation);
  if (flags.exclusive > 0)
    options.model.exclusive.assign(static_cast<std::size_t>(options.data.sources), flags.exclusive);
  options.checkpoint = flags.out;
  if (!flags.out.empty()) require_writable_parent(flags.out, "--out");
  const auto backend = backend_for(flags.device);
  std::printf(
      "crosscoder demo: %d sources of width %d, %d shared + %d/%d exclusive planted features; "
      "%s crosscoder with %d latents, k = %d, on %s\n",
      options.data.sources, options.data.width, options.data.shared_features,
      options.data.exclusive_features.empty() ? 0 : options.data.exclusive_features[0],
      options.data.exclusive_features.size() > 1 ? options.data.exclusive_features[1] : 0,
      std::string(to_string(options.model.activation)).c_str(), options.model.latents,
      options.model.k, backend->describe().c_str());
  const DemoResult result = run_demo(options, backend);
  std::printf("%s", format_demo_result(result, options).c_str());
  if (!options.checkpoint.empty())
    std::printf("checkpoint: %s\n", options.checkpoint.string().c_str());
  return 0;
}

}  // namespace

Runner add_demo_command(CLI::App& app) {
  auto flags = std::make_shared<DemoFlags>();
  CLI::App* command = app.add_subcommand("demo",
                                         "Train a crosscoder on a synthetic model pair with "
                                         "planted shared, exclusive and 'tool' features, "
                                         "and report what it recovered");
  DemoOptions& options = flags->options;
  command->add_option("--steps", options.train.steps, "Training steps")->capture_default_str();
  command->add_option("--batch", options.train.batch_size, "Rows per step")->capture_default_str();
  command->add_option("--latents", options.model.latents, "Dictionary size F")
      ->capture_default_str();
  command->add_option("--k", options.model.k, "Active latents per row (topk, batchtopk)")
      ->capture_default_str();
  command->add_option("--activation", flags->activation, "relu | topk | batchtopk | jumprelu")
      ->capture_default_str();
  command
      ->add_option("--exclusive", flags->exclusive,
                   "Latents reserved exclusively for each source (dedicated-feature crosscoder)")
      ->capture_default_str();
  command->add_option("--lr", options.train.learning_rate, "Peak learning rate")
      ->capture_default_str();
  command->add_option("--seed", options.train.seed, "Initialisation seed")->capture_default_str();
  command->add_option("--data-seed", options.data.seed, "Seed of the synthetic pair")
      ->capture_default_str();
  command->add_option("--width", options.data.width, "Width d of each synthetic source")
      ->capture_default_str();
  add_device_option(*command, flags->device);
  command->add_option("--out", flags->out, "Where to write the trained model (empty: nowhere)")
      ->capture_default_str();
  return [flags] { return run(*flags); };
}

}  // namespace crosscoder::cli
