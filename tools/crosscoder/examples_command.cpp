// `crosscoder examples`: what a latent responds to, from the examples file `crosscoder diff`
// writes beside its report: the highest activations and samples across the distribution, each
// with its dataset row and token window, and the activation histogram.
#include <fmt/format.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "cli.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/latent_examples.hpp"
#include "crosscoder/vocabulary.hpp"

namespace crosscoder::cli {
namespace {

struct ExamplesFlags {
  std::string file;
  std::vector<std::int64_t> latents;
  int top = -1;
  std::string vocabulary;
};

// The window as text, the example's own token in [[double brackets]], escaped for a terminal.
std::string window_text(const LatentExamples& examples, const std::vector<std::int32_t>& windows,
                        std::size_t slot, const Vocabulary& vocabulary) {
  const auto W = static_cast<std::size_t>(examples.window());
  const auto before = static_cast<std::size_t>(examples.options.window_before);
  const std::span<const std::int32_t> window(windows.data() + slot * W, W);
  return "\"" + printable(vocabulary.decode(window.first(before))) + "[[" +
         printable(window[before] < 0 ? std::string() : vocabulary.token_text(window[before])) +
         "]]" + printable(vocabulary.decode(window.subspan(before + 1))) + "\"";
}

// The window's token ids, the example's own token in [brackets]; "·" where there is none.
std::string window_ids(const LatentExamples& examples, const std::vector<std::int32_t>& windows,
                       std::size_t slot) {
  const int W = examples.window();
  std::string text;
  for (int i = 0; i < W; ++i) {
    const std::int32_t token = windows[slot * static_cast<std::size_t>(W) + i];
    if (!text.empty()) text += ' ';
    const std::string shown = token < 0 ? "·" : std::to_string(token);
    text += i == examples.options.window_before ? "[" + shown + "]" : shown;
  }
  return text;
}

void print_latent(const LatentExamples& examples, std::int64_t latent, int top,
                  const std::optional<Vocabulary>& vocabulary) {
  const auto f = static_cast<std::size_t>(latent);
  std::printf("latent %lld: active in %lld of %lld rows\n", static_cast<long long>(latent),
              static_cast<long long>(examples.active_rows[f]),
              static_cast<long long>(examples.rows));
  const auto print_slots = [&](const char* title, const std::vector<std::int64_t>& rows,
                               const std::vector<float>& values,
                               const std::vector<std::int32_t>& windows, int slots, int shown) {
    std::printf("  %s:\n", title);
    for (int i = 0; i < slots && i < shown; ++i) {
      const std::size_t slot = f * static_cast<std::size_t>(slots) + static_cast<std::size_t>(i);
      if (rows[slot] < 0) break;
      std::printf("    %3d. row %10lld  activation %9.4f", i + 1,
                  static_cast<long long>(rows[slot]), values[slot]);
      if (!windows.empty()) {
        const std::string context = vocabulary ? window_text(examples, windows, slot, *vocabulary)
                                               : window_ids(examples, windows, slot);
        std::printf("  %s", context.c_str());
      }
      std::printf("\n");
    }
  };
  const int shown = top < 0 ? examples.options.top : top;
  print_slots("top activations", examples.top_rows, examples.top_values, examples.top_windows,
              examples.options.top, shown);
  print_slots("samples over the distribution (lowest first)", examples.sample_rows,
              examples.sample_values, examples.sample_windows, examples.options.samples,
              examples.options.samples);
  // The histogram as counts per non-empty bin, with the bin's lower edge.
  const std::vector<double> edges = histogram_edges();
  std::printf("  histogram (lower edge: count):");
  for (int b = 0; b < kHistogramBins; ++b) {
    const std::int64_t count = examples.histogram[f * kHistogramBins + static_cast<std::size_t>(b)];
    if (count == 0) continue;
    std::printf(" %s: %lld", b == 0 ? "0" : fmt::format("{:.3g}", edges[b - 1]).c_str(),
                static_cast<long long>(count));
  }
  std::printf("\n");
}

int run(const ExamplesFlags& flags) {
  const LatentExamples examples = load_examples(flags.file);
  std::optional<Vocabulary> vocabulary;
  if (!flags.vocabulary.empty()) vocabulary = Vocabulary::load(flags.vocabulary);
  std::printf("%s: %lld latents, %lld rows, top %d and %d samples per latent; %s\n",
              flags.file.c_str(), static_cast<long long>(examples.latents),
              static_cast<long long>(examples.rows), examples.options.top, examples.options.samples,
              !examples.has_windows() ? "no token windows (the data had no token ids)"
              : examples.windows_stop_at_documents
                  ? "token windows stop at document boundaries"
                  : "no document boundaries in the data: windows may cross documents");
  for (const std::int64_t latent : flags.latents) {
    if (latent < 0 || latent >= examples.latents) {
      throw Error(
          fmt::format("--latent {}: not in [0, {}) ({})", latent, examples.latents, flags.file));
    }
    print_latent(examples, latent, flags.top, vocabulary);
  }
  return 0;
}

}  // namespace

Runner add_examples_command(CLI::App& app) {
  auto flags = std::make_shared<ExamplesFlags>();
  CLI::App* command = app.add_subcommand(
      "examples", "Show a latent's top and sampled activations from `crosscoder diff`'s examples");
  command
      ->add_option("file", flags->file,
                   "Examples file written by `crosscoder diff --data ... --json X.json` "
                   "(X.examples.safetensors)")
      ->required()
      ->check(CLI::ExistingFile);
  command->add_option("--latent", flags->latents, "Latent(s) to show")->required();
  command->add_option("--top", flags->top, "How many top activations to show (default: all kept)");
  command
      ->add_option("--vocab", flags->vocabulary,
                   "Show text: a Hugging Face tokenizer.json, llama2.c's tokenizer.bin or a .txt "
                   "with one token per line (default: token ids)")
      ->check(CLI::ExistingFile);
  return [flags] { return run(*flags); };
}

}  // namespace crosscoder::cli
