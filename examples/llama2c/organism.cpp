// The model organism's C++ half (docs/organism.md): capture and steering with the llama2.c
// engine and the crosscoder library.
//
//   llama2c_organism capture --base BASE.bin --rl RL.bin --block N --out DIR
//       --prompts SET.npy [--prompts SET2.npy ...] --positions all|last
//     Runs every prompt (BOS-first token ids [N, T] int32, padded with -1) through both models
//     and writes block N's output with the ActivationWriter as a paired dataset (sources "base"
//     and "rl"): every token, or only the last prompt token with labels (1 for a request, from
//     SET.tools.npy ≥ 0; 0 for a plain prompt) and the prompt's token ids.
//
//   llama2c_organism steer --model M.bin --crosscoder C.safetensors --source S --block N
//       --latents J[,J...] --alphas 0,1,4,... --prompts SET.npy --convention convention.json
//       --out RESULT.json [--subset request|plain|all] [--max-new 4]
//     For each α, scales the latents by α at block N's output on the last prompt token during
//     prefill only (the study's protocol: Steerer with InterventionKind::scale and
//     PositionMode::last_prompt), decodes greedily, and records per prompt whether the
//     continuation is a well-formed tool call and whether it is the correct answer.
//     --latents none runs the unsteered model once (α is then meaningless and written as 1).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <crosscoder/activation_writer.hpp>
#include <crosscoder/backend.hpp>
#include <crosscoder/capture.hpp>
#include <crosscoder/crosscoder.hpp>
#include <crosscoder/error.hpp>
#include <crosscoder/io/npy.hpp>
#include <crosscoder/progress.hpp>
#include <crosscoder/steering.hpp>

#include "llama2c.hpp"

namespace {

using crosscoder::Error;
namespace fs = std::filesystem;

struct PromptSet {
  std::vector<std::vector<int>> prompts;
  std::vector<int> tools;  // wanted tool, -1 for plain prompts
};

PromptSet load_prompts(const fs::path& path, int vocab) {
  const auto file = crosscoder::io::NpyFile::open(path);
  if (file.shape().size() != 2)
    throw Error(path.string() + ": prompts must be a 2-d array [N, T] of token ids");
  const std::vector<std::int64_t> ids = file.read_int();
  const std::size_t rows = file.shape()[0], width = file.shape()[1];
  PromptSet set;
  for (std::size_t r = 0; r < rows; ++r) {
    std::vector<int> prompt;
    for (std::size_t t = 0; t < width; ++t) {
      const std::int64_t id = ids[r * width + t];
      if (id < 0) break;  // padding
      if (id >= vocab)
        throw Error(path.string() + ": token " + std::to_string(id) + " in prompt " +
                    std::to_string(r) + " is outside the model's vocabulary of " +
                    std::to_string(vocab));
      prompt.push_back(static_cast<int>(id));
    }
    if (prompt.empty()) throw Error(path.string() + ": prompt " + std::to_string(r) + " is empty");
    set.prompts.push_back(std::move(prompt));
  }
  fs::path tools_path = path;
  tools_path.replace_extension(".tools.npy");
  if (fs::exists(tools_path)) {
    for (std::int64_t tool : crosscoder::io::NpyFile::open(tools_path).read_int())
      set.tools.push_back(static_cast<int>(tool));
    if (set.tools.size() != set.prompts.size())
      throw Error(tools_path.string() + ": " + std::to_string(set.tools.size()) + " tools for " +
                  std::to_string(set.prompts.size()) + " prompts");
  }
  return set;
}

std::vector<double> parse_numbers(const std::string& text, const std::string& flag) {
  std::vector<double> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    std::size_t used = 0;
    double value = 0;
    try {
      value = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) throw Error(flag + ": '" + item + "' is not a number");
    values.push_back(value);
  }
  if (values.empty()) throw Error(flag + ": no values given");
  return values;
}

// The token convention written by examples/organism/make_prompts.py.
struct Convention {
  int open = 0, close = 0;
  std::vector<int> names;

  static Convention load(const fs::path& path) {
    std::ifstream in(path);
    if (!in) throw Error(path.string() + ": cannot open the convention file");
    try {
      const nlohmann::json j = nlohmann::json::parse(in);
      Convention c;
      c.open = j.at("open").get<int>();
      c.close = j.at("close").get<int>();
      c.names = j.at("names").get<std::vector<int>>();
      return c;
    } catch (const nlohmann::json::exception& error) {
      throw Error(path.string() + ": not a convention file: " + error.what());
    }
  }
  // The named tool of a well-formed call OPEN NAME CLOSE at the start, or -1.
  int called_tool(const std::vector<int>& g) const {
    if (g.size() < 3 || g[0] != open || g[2] != close) return -1;
    const auto found = std::find(names.begin(), names.end(), g[1]);
    return found == names.end() ? -1 : static_cast<int>(found - names.begin());
  }
};

// The engine's add_hook also refuses a bad block, but steer may add no hook (--latents none)
// and capture must fail before it creates the output directory.
void require_block(const llama2c::Model& model, int block) {
  if (block < 0 || block >= model.config().layers)
    throw Error("--block " + std::to_string(block) + " is out of range: the model has " +
                std::to_string(model.config().layers) + " blocks (0-" +
                std::to_string(model.config().layers - 1) + ")");
}

int capture(const fs::path& base_path, const fs::path& rl_path, int block,
            const std::vector<std::string>& prompt_files, const std::string& positions,
            const fs::path& out) {
  if (positions != "all" && positions != "last")
    throw Error("--positions must be all or last, not '" + positions + "'");
  const bool last = positions == "last";
  const llama2c::Model base = llama2c::Model::load(base_path);
  const llama2c::Model rl = llama2c::Model::load(rl_path);
  require_block(base, block);
  if (base.config().dim != rl.config().dim || base.config().vocab != rl.config().vocab)
    throw Error(rl_path.string() + ": its width or vocabulary differs from " + base_path.string());
  crosscoder::ActivationWriterOptions options;
  options.source_names = {"base", "rl"};
  options.width = base.config().dim;
  options.labels = last;
  options.token_ids = true;
  options.overwrite = true;
  crosscoder::ActivationWriter writer(out, options);

  crosscoder::PositionFilter filter;
  filter.mode = last ? crosscoder::PositionMode::last_prompt : crosscoder::PositionMode::all;
  for (const std::string& file : prompt_files) {
    const PromptSet set = load_prompts(file, base.config().vocab);
    if (last && set.tools.empty())
      throw Error(file + ": --positions last needs labels, from " +
                  fs::path(file).replace_extension(".tools.npy").string());
    crosscoder::ProgressBar progress(static_cast<std::int64_t>(set.prompts.size()),
                                     "capture " + fs::path(file).filename().string(), "prompt");
    llama2c::Session sessions[] = {llama2c::Session(base), llama2c::Session(rl)};
    for (int source = 0; source < 2; ++source)
      sessions[source].add_hook(block, crosscoder::capture_hook(writer, source, block, filter));
    for (std::size_t p = 0; p < set.prompts.size(); ++p) {
      const std::vector<int>& prompt = set.prompts[p];
      for (int source = 0; source < 2; ++source) {
        sessions[source].reset();
        for (std::size_t t = 0; t < prompt.size(); ++t) {
          crosscoder::RowInfo info;
          info.last_prompt = t + 1 == prompt.size();
          sessions[source].step(prompt[t], info);
        }
      }
      if (last) {
        const std::int8_t label = set.tools[p] >= 0 ? 1 : 0;
        writer.append_labels(std::span(&label, 1));
        const std::int32_t token = prompt.back();
        writer.append_token_ids(std::span(&token, 1));
      } else {
        std::vector<std::int32_t> tokens(prompt.begin(), prompt.end());
        writer.append_token_ids(tokens);
      }
      progress.update(static_cast<std::int64_t>(p + 1));
    }
    progress.finish();
  }
  const fs::path manifest = writer.close();
  std::printf("llama2c_organism: %lld rows per model at block %d -> %s\n",
              static_cast<long long>(writer.rows(0)), block, manifest.string().c_str());
  return 0;
}

int steer(const fs::path& model_path, const fs::path& crosscoder_path, int source, int block,
          const std::string& latents_text, const std::string& alphas_text,
          const fs::path& prompts_path, const fs::path& convention_path, const std::string& subset,
          int max_new, const fs::path& out) {
  if (subset != "request" && subset != "plain" && subset != "all")
    throw Error("--subset must be request, plain or all, not '" + subset + "'");
  if (max_new < 3) throw Error("--max-new must be at least 3 (a call is three tokens)");
  const llama2c::Model model = llama2c::Model::load(model_path);
  require_block(model, block);
  const Convention convention = Convention::load(convention_path);
  const PromptSet all = load_prompts(prompts_path, model.config().vocab);
  if (all.tools.empty()) throw Error(prompts_path.string() + ": no .tools.npy beside it");

  std::vector<int> chosen;
  for (std::size_t p = 0; p < all.prompts.size(); ++p) {
    const bool request = all.tools[p] >= 0;
    if (subset == "all" || (subset == "request") == request) chosen.push_back(static_cast<int>(p));
  }
  const bool unsteered = latents_text == "none";
  std::vector<int> latents;
  std::vector<double> alphas{1.0};
  if (!unsteered) {
    for (double j : parse_numbers(latents_text, "--latents"))
      latents.push_back(static_cast<int>(j));
    alphas = parse_numbers(alphas_text, "--alphas");
  }
  std::shared_ptr<crosscoder::Crosscoder> crosscoder;
  if (!unsteered) {
    crosscoder = std::make_shared<crosscoder::Crosscoder>(
        crosscoder::Crosscoder::load(crosscoder_path, crosscoder::best_backend()));
    if (crosscoder->config().width != model.config().dim)
      throw Error(crosscoder_path.string() + ": width " +
                  std::to_string(crosscoder->config().width) + " differs from the model's " +
                  std::to_string(model.config().dim));
  }

  nlohmann::json result;
  result["model"] = model_path.string();
  result["crosscoder"] = unsteered ? "" : crosscoder_path.string();
  result["source"] = source;
  result["block"] = block;
  result["latents"] = latents;
  result["subset"] = subset;
  result["prompts"] = prompts_path.string();
  result["prompt_index"] = chosen;
  std::vector<int> tools;
  for (int p : chosen) tools.push_back(all.tools[p]);
  result["tools"] = tools;
  result["cells"] = nlohmann::json::array();

  // One steerer per α. Steering touches only the last prompt token, so the rest of the prompt
  // is prefilled once per prompt and its KV cache copied for each α.
  std::vector<std::unique_ptr<crosscoder::Steerer>> steerers;
  for (double alpha : alphas) {
    if (unsteered) {
      steerers.push_back(nullptr);
      continue;
    }
    std::vector<crosscoder::Intervention> interventions;
    for (int j : latents)
      interventions.push_back({crosscoder::InterventionKind::scale, j, alpha, false});
    crosscoder::PositionFilter filter;
    filter.mode = crosscoder::PositionMode::last_prompt;
    steerers.push_back(
        std::make_unique<crosscoder::Steerer>(*crosscoder, source, interventions, filter));
  }
  std::vector<std::vector<int>> call(alphas.size()), correct(alphas.size());
  crosscoder::ProgressBar progress(static_cast<std::int64_t>(chosen.size()), "steer", "prompt");
  std::mt19937_64 unused_rng(0);  // greedy decoding draws nothing
  llama2c::Session prefix(model);
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    const std::vector<int>& prompt = all.prompts[chosen[i]];
    const int tool = all.tools[chosen[i]];
    prefix.reset();
    for (std::size_t t = 0; t + 1 < prompt.size(); ++t) prefix.step(prompt[t], {});
    for (std::size_t a = 0; a < alphas.size(); ++a) {
      llama2c::Session session = prefix;
      if (steerers[a]) {
        steerers[a]->reset();
        session.add_hook(block, steerers[a]->hook(block));
      }
      const std::vector<int> generated =
          session.generate({prompt.back()}, max_new, 0.0f, unused_rng);
      const int named = convention.called_tool(generated);
      call[a].push_back(named >= 0);
      correct[a].push_back(tool >= 0 ? named == tool : named < 0);
    }
    progress.update(static_cast<std::int64_t>(i + 1));
  }
  const auto mean = [](const std::vector<int>& v) {
    return v.empty() ? 0.0
                     : static_cast<double>(std::count(v.begin(), v.end(), 1)) /
                           static_cast<double>(v.size());
  };
  for (std::size_t a = 0; a < alphas.size(); ++a)
    result["cells"].push_back({{"alpha", alphas[a]},
                               {"call", call[a]},
                               {"correct", correct[a]},
                               {"call_rate", mean(call[a])},
                               {"correct_rate", mean(correct[a])}});
  progress.finish();
  std::ofstream file(out);
  if (!file) throw Error(out.string() + ": cannot write the result");
  file << result.dump() << '\n';
  if (!file) throw Error(out.string() + ": writing the result failed");
  for (const auto& cell : result["cells"])
    std::printf("llama2c_organism: alpha %g: call rate %.3f, correct %.3f (%zu prompts)\n",
                cell["alpha"].get<double>(), cell["call_rate"].get<double>(),
                cell["correct_rate"].get<double>(), chosen.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"llama2c_organism: capture and steering for the tool-use model organism"};
  app.require_subcommand(1);

  std::string base, rl, out, positions = "all";
  std::vector<std::string> prompt_files;
  int block = 2;
  CLI::App* cap = app.add_subcommand("capture", "Capture paired block outputs of two models");
  cap->add_option("--base", base, "Base model (llama2.c .bin)")->required();
  cap->add_option("--rl", rl, "Fine-tuned model (llama2.c .bin)")->required();
  cap->add_option("--block", block, "Block whose output is captured (0-based)")->required();
  cap->add_option("--prompts", prompt_files, "Prompt sets [N, T] int32 (-1 padded)")->required();
  cap->add_option("--positions", positions, "all | last (the last prompt token, labelled)");
  cap->add_option("--out", out, "Dataset directory")->required();

  std::string model, crosscoder_path, latents, alphas = "0,1,4,8,16,32,64", prompts, convention,
                                               subset = "request";
  int source = 1, max_new = 4;
  CLI::App* st = app.add_subcommand("steer", "Steer latents at the last prompt token");
  st->add_option("--model", model, "Model to steer (llama2.c .bin)")->required();
  st->add_option("--crosscoder", crosscoder_path, "Trained crosscoder (safetensors)");
  st->add_option("--source", source, "Crosscoder source whose decoder steers (0 base, 1 rl)");
  st->add_option("--block", block, "Block the crosscoder was trained at")->required();
  st->add_option("--latents", latents, "Comma list of latents, or none")->required();
  st->add_option("--alphas", alphas, "Comma list of scale factors");
  st->add_option("--prompts", prompts, "Prompt set [N, T] with its .tools.npy")->required();
  st->add_option("--convention", convention, "convention.json from make_prompts.py")->required();
  st->add_option("--subset", subset, "request | plain | all");
  st->add_option("--max-new", max_new, "Tokens generated per prompt");
  st->add_option("--out", out, "Result JSON")->required();

  CLI11_PARSE(app, argc, argv);
  if (cap->parsed()) return capture(base, rl, block, prompt_files, positions, out);
  if (latents != "none" && crosscoder_path.empty())
    throw Error("--crosscoder is required unless --latents none");
  return steer(model, crosscoder_path, source, block, latents, alphas, prompts, convention, subset,
               max_new, out);
} catch (const std::exception& error) {
  std::fprintf(stderr, "llama2c_organism: %s\n", error.what());
  return 1;
}
