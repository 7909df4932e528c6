// The model organism's C++ half (docs/organism.md): capture and steering with the llama2.c
// engine and the crosscoder library.
//
//   llama2c_organism capture --base BASE.bin --rl RL.bin --block N|--blocks LIST --out DIR
//       --prompts SET.npy [--prompts SET2.npy ...] --positions all|last
//     Runs every prompt (BOS-first token ids [N, T] int32, padded with -1) through both models
//     and writes block N's output with the ActivationWriter as a paired dataset (sources "base"
//     and "rl"); with --blocks 0,2,4 (or all), every listed block's output in the same engine
//     pass, sources model-major ("base.block0", "base.block2", ..., "rl.block0", ...), for a
//     crosscoder across layers (--source-models 0,0,0,1,1,1): every token, or only the last prompt
//     token with labels (1 for a request, from SET.tools.npy ≥ 0; 0 for a plain prompt) and the
//     prompt's token ids. Every prompt is a document: its rows carry the prompt's index, counted
//     across all --prompts files.
//
//   llama2c_organism steer --model M.bin --crosscoder C.safetensors --source S --block N
//       --latents J[,J...] --alphas 0,1,4,... --prompts SET.npy --convention convention.json
//       --out RESULT.json [--subset request|plain|all] [--max-new 4]
//     For each α, scales the latents by α at block N's output on the last prompt token during
//     prefill only (the study's protocol: Steerer with InterventionKind::scale and
//     PositionMode::last_prompt), decodes greedily, and records per prompt whether the
//     continuation is a well-formed tool call and whether it is the correct answer.
//     --latents none runs the unsteered model once (α is then meaningless and written as 1).
//     Paired by default, as the study encoded both models' activations together:
//     --paired-model OTHER.bin runs the other model in lockstep on the same tokens, and its
//     block-N row fills the crosscoder sources other than --source (Steerer::paired_hook).
//     --unpaired instead lets the other source enter the encoder as its mean. One of the two
//     is required with latents. Every cell records how often the steered latents' f_j > 0 on
//     the steered rows, computed before steering as the Steerer does (Steerer::activations).
//     --kind clamp sets f_j to α·unit_j instead (--units, one per latent; default 1): where a
//     latent does not fire, scaling it changes nothing, and clamping tests its direction.
//
//   llama2c_organism text-cost --model M.bin --paired-model OTHER.bin --crosscoder C.safetensors
//       --source S --block N --latents J[,J...] --alphas 0,1,... --text TEXT.npy --out COST.json
//       [--kind scale|clamp] [--units U,...] [--sequences 64]
//     The language cost of a steering: the same interventions at every position of general text
//     (BOS-first token ids [N, T]), and per sequence the mean KL(clean ‖ steered) of the
//     next-token distributions, with how often the latents had f_j > 0 there.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
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

// --blocks: "all" or a comma list of block indices, each in range and listed once.
std::vector<int> parse_blocks(const std::string& text, const llama2c::Model& model) {
  std::vector<int> blocks;
  if (text == "all") {
    for (int b = 0; b < model.config().layers; ++b) blocks.push_back(b);
    return blocks;
  }
  std::stringstream list(text);
  std::string item;
  while (std::getline(list, item, ',')) {
    char* rest = nullptr;
    const long value = std::strtol(item.c_str(), &rest, 10);
    if (item.empty() || *rest != '\0')
      throw Error("--blocks: '" + item + "' is not a block index (expected e.g. 0,2,4 or all)");
    const int block = static_cast<int>(value);
    if (block < 0 || block >= model.config().layers)
      throw Error("--blocks: block " + item + " is out of range: the model has " +
                  std::to_string(model.config().layers) + " blocks (0-" +
                  std::to_string(model.config().layers - 1) + ")");
    if (std::find(blocks.begin(), blocks.end(), block) != blocks.end())
      throw Error("--blocks lists block " + item + " twice");
    blocks.push_back(block);
  }
  if (blocks.empty()) throw Error("--blocks is empty");
  return blocks;
}

int capture(const fs::path& base_path, const fs::path& rl_path, int single_block,
            const std::string& blocks_text, const std::vector<std::string>& prompt_files,
            const std::string& positions, const fs::path& out) {
  if (positions != "all" && positions != "last")
    throw Error("--positions must be all or last, not '" + positions + "'");
  const bool last = positions == "last";
  const llama2c::Model base = llama2c::Model::load(base_path);
  const llama2c::Model rl = llama2c::Model::load(rl_path);
  if (base.config().dim != rl.config().dim || base.config().vocab != rl.config().vocab)
    throw Error(rl_path.string() + ": its width or vocabulary differs from " + base_path.string());
  if (base.config().layers != rl.config().layers)
    throw Error(rl_path.string() + ": its block count differs from " + base_path.string());
  std::vector<int> blocks;
  if (blocks_text.empty()) {
    require_block(base, single_block);
    blocks = {single_block};
  } else {
    blocks = parse_blocks(blocks_text, base);
  }
  const bool several = !blocks_text.empty();
  crosscoder::ActivationWriterOptions options;
  for (const char* model_name : {"base", "rl"}) {
    for (const int block : blocks) {
      options.source_names.push_back(several ? std::string(model_name) + ".block" +
                                                   std::to_string(block)
                                             : std::string(model_name));
    }
  }
  options.width = base.config().dim;
  options.labels = last;
  options.token_ids = true;
  options.document_ids = true;
  options.overwrite = true;
  crosscoder::ActivationWriter writer(out, options);

  crosscoder::PositionFilter filter;
  filter.mode = last ? crosscoder::PositionMode::last_prompt : crosscoder::PositionMode::all;
  std::int64_t document = 0;  // the prompt's index over all files, so that files never merge
  for (const std::string& file : prompt_files) {
    const PromptSet set = load_prompts(file, base.config().vocab);
    if (last && set.tools.empty())
      throw Error(file + ": --positions last needs labels, from " +
                  fs::path(file).replace_extension(".tools.npy").string());
    crosscoder::ProgressBar progress(static_cast<std::int64_t>(set.prompts.size()),
                                     "capture " + fs::path(file).filename().string(), "prompt");
    llama2c::Session sessions[] = {llama2c::Session(base), llama2c::Session(rl)};
    // Source of (model, j-th block) = model·|blocks| + j: model-major, as --source-models wants.
    const int per_model = static_cast<int>(blocks.size());
    for (int model = 0; model < 2; ++model) {
      for (int j = 0; j < per_model; ++j) {
        sessions[model].add_hook(
            blocks[static_cast<std::size_t>(j)],
            crosscoder::capture_hook(writer, model * per_model + j,
                                     blocks[static_cast<std::size_t>(j)], filter));
      }
    }
    for (std::size_t p = 0; p < set.prompts.size(); ++p) {
      const std::vector<int>& prompt = set.prompts[p];
      for (llama2c::Session& session : sessions) {
        session.reset();
        for (std::size_t t = 0; t < prompt.size(); ++t) {
          crosscoder::RowInfo info;
          info.last_prompt = t + 1 == prompt.size();
          session.step(prompt[t], info);
        }
      }
      // Ids need only differ between neighbouring documents: wrapping past 2^31 is harmless.
      const auto id = static_cast<std::int32_t>(document++ & 0x7fffffff);
      if (last) {
        const std::int8_t label = set.tools[p] >= 0 ? 1 : 0;
        writer.append_labels(std::span(&label, 1));
        const std::int32_t token = prompt.back();
        writer.append_token_ids(std::span(&token, 1));
        writer.append_document_ids(std::span(&id, 1));
      } else {
        std::vector<std::int32_t> tokens(prompt.begin(), prompt.end());
        writer.append_token_ids(tokens);
        writer.append_document_ids(std::vector<std::int32_t>(tokens.size(), id));
      }
      progress.update(static_cast<std::int64_t>(p + 1));
    }
    progress.finish();
  }
  const fs::path manifest = writer.close();
  std::string block_list;
  for (const int block : blocks)
    block_list += (block_list.empty() ? "" : ",") + std::to_string(block);
  std::printf("llama2c_organism: %lld rows per model at block%s %s -> %s\n",
              static_cast<long long>(writer.rows(0)), several ? "s" : "", block_list.c_str(),
              manifest.string().c_str());
  return 0;
}

// The first token of the highest logit (the engine's greedy rule).
int argmax(const std::vector<float>& logits) {
  return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// How the steered latents are changed: scale (x += (α − 1)·f_j·d_j) or clamp (f_j set to
// α·unit_j), with one unit per latent.
struct SteeringKind {
  crosscoder::InterventionKind kind = crosscoder::InterventionKind::scale;
  std::vector<double> units;  // clamp only; empty: 1 for every latent

  static SteeringKind parse(const std::string& kind, const std::string& units_text,
                            std::size_t n_latents) {
    SteeringKind k;
    if (kind == "clamp")
      k.kind = crosscoder::InterventionKind::clamp;
    else if (kind != "scale")
      throw Error("--kind must be scale or clamp, not '" + kind + "'");
    if (!units_text.empty()) {
      if (k.kind != crosscoder::InterventionKind::clamp)
        throw Error("--units are for --kind clamp only");
      k.units = parse_numbers(units_text, "--units");
      if (k.units.size() != n_latents)
        throw Error("--units gives " + std::to_string(k.units.size()) + " values for " +
                    std::to_string(n_latents) + " latents");
    }
    return k;
  }
  std::vector<crosscoder::Intervention> interventions(const std::vector<int>& latents,
                                                      double alpha) const {
    std::vector<crosscoder::Intervention> list;
    for (std::size_t l = 0; l < latents.size(); ++l)
      list.push_back({kind, latents[l], alpha * (units.empty() ? 1.0 : units[l]), false});
    return list;
  }
};

std::shared_ptr<crosscoder::Crosscoder> load_steering_crosscoder(const fs::path& path,
                                                                 const llama2c::Model& model,
                                                                 int source, bool paired) {
  auto crosscoder = std::make_shared<crosscoder::Crosscoder>(
      crosscoder::Crosscoder::load(path, crosscoder::best_backend()));
  if (crosscoder->config().width != model.config().dim)
    throw Error(path.string() + ": width " + std::to_string(crosscoder->config().width) +
                " differs from the model's " + std::to_string(model.config().dim));
  if (source < 0 || source >= crosscoder->config().sources)
    throw Error("--source " + std::to_string(source) + " is out of range: the crosscoder has " +
                std::to_string(crosscoder->config().sources) + " sources");
  if (paired && crosscoder->config().sources != 2)
    throw Error("--paired-model needs a crosscoder of two sources, not " +
                std::to_string(crosscoder->config().sources));
  return crosscoder;
}

// The other model's block row for the token being processed: it fills the crosscoder's other
// source (two sources; the steered model is `source`). Both models step on the same token before
// the steered model's hook runs, so `row` is the other source's row for that token.
struct OtherSource {
  int source = 1;
  bool paired = false;
  std::vector<float> row;

  // For Steerer::paired_hook.
  crosscoder::Steerer::PairedRows filler() const {
    return [this](const crosscoder::RowInfo*, int n_rows, int width, std::span<float> rows) {
      for (int r = 0; r < n_rows; ++r)
        std::copy(row.begin(), row.end(),
                  rows.begin() + (static_cast<std::ptrdiff_t>(r) * 2 + (1 - source)) * width);
    };
  }
  // The pair [2, d] the encoder reads for one steered row (for Steerer::activations); empty
  // when unpaired (the other source then enters at its mean).
  std::vector<float> pair(const float* steered, int width) const {
    if (!paired) return {};
    std::vector<float> out(static_cast<std::size_t>(2 * width));
    std::copy(row.begin(), row.end(), out.begin() + (1 - source) * width);
    std::copy_n(steered, width, out.begin() + source * width);
    return out;
  }
};

std::optional<llama2c::Model> load_paired_model(const fs::path& paired_path,
                                                const fs::path& model_path,
                                                const llama2c::Model& model) {
  if (paired_path.empty()) return std::nullopt;
  std::optional<llama2c::Model> other(llama2c::Model::load(paired_path));
  if (other->config().dim != model.config().dim || other->config().vocab != model.config().vocab ||
      other->config().layers != model.config().layers)
    throw Error(paired_path.string() + ": its width, vocabulary or depth differs from " +
                model_path.string());
  return other;
}

int steer(const fs::path& model_path, const fs::path& paired_path, const fs::path& crosscoder_path,
          int source, int block, const std::string& latents_text, const std::string& alphas_text,
          const std::string& kind_text, const std::string& units_text, const fs::path& prompts_path,
          const fs::path& convention_path, const std::string& subset, int max_new,
          const fs::path& out) {
  if (subset != "request" && subset != "plain" && subset != "all")
    throw Error("--subset must be request, plain or all, not '" + subset + "'");
  if (max_new < 3) throw Error("--max-new must be at least 3 (a call is three tokens)");
  const llama2c::Model model = llama2c::Model::load(model_path);
  require_block(model, block);
  const bool paired = !paired_path.empty();
  const std::optional<llama2c::Model> other_model =
      load_paired_model(paired_path, model_path, model);
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
  const SteeringKind kind = SteeringKind::parse(kind_text, units_text, latents.size());
  std::shared_ptr<crosscoder::Crosscoder> crosscoder;
  if (!unsteered) crosscoder = load_steering_crosscoder(crosscoder_path, model, source, paired);

  nlohmann::json result;
  result["model"] = model_path.string();
  result["crosscoder"] = unsteered ? "" : crosscoder_path.string();
  result["source"] = source;
  // Which model's activations fill the other source in the encoder: "unpaired" means its mean.
  result["pairing"] = unsteered ? "none" : paired ? "paired" : "unpaired";
  result["paired_model"] = paired ? paired_path.string() : "";
  result["block"] = block;
  result["latents"] = latents;
  result["kind"] = unsteered ? "none" : std::string(crosscoder::to_string(kind.kind));
  result["units"] = kind.units;
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
    const std::vector<crosscoder::Intervention> interventions = kind.interventions(latents, alpha);
    crosscoder::PositionFilter filter;
    filter.mode = crosscoder::PositionMode::last_prompt;
    steerers.push_back(
        std::make_unique<crosscoder::Steerer>(*crosscoder, source, interventions, filter));
  }
  std::vector<std::vector<int>> call(alphas.size()), correct(alphas.size());
  // Per α and prompt: how many of the steered latents had f_j > 0 on the steered row, and per
  // latent over prompts. f_j is computed from the unmodified row (and the paired row) as the
  // Steerer computes it, so an α leaves it unchanged; it is recorded per cell as a check.
  const std::size_t n_encoded = unsteered ? 0 : steerers[0]->latents().size();
  std::vector<std::vector<int>> active(alphas.size());
  std::vector<std::vector<std::int64_t>> active_by_latent(alphas.size(),
                                                          std::vector<std::int64_t>(n_encoded, 0));
  std::vector<std::vector<double>> sum_f(alphas.size(), std::vector<double>(n_encoded, 0.0));

  OtherSource other_source{source, paired,
                           std::vector<float>(static_cast<std::size_t>(model.config().dim))};
  llama2c::Session prefix(model);
  std::optional<llama2c::Session> other_prefix;
  if (paired) {
    other_prefix.emplace(*other_model);
    other_prefix->add_hook(
        block, [&](int, float* rows, int n_rows, int width, const crosscoder::RowInfo*) {
          std::copy_n(rows + static_cast<std::ptrdiff_t>(n_rows - 1) * width, width,
                      other_source.row.begin());
        });
  }
  crosscoder::ProgressBar progress(static_cast<std::int64_t>(chosen.size()), "steer", "prompt");
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    const std::vector<int>& prompt = all.prompts[chosen[i]];
    const int tool = all.tools[chosen[i]];
    // The prompt but its last token, once per prompt (steering touches only the last token).
    prefix.reset();
    if (other_prefix) other_prefix->reset();
    for (std::size_t t = 0; t + 1 < prompt.size(); ++t) {
      if (other_prefix) other_prefix->step(prompt[t], {});
      prefix.step(prompt[t], {});
    }
    for (std::size_t a = 0; a < alphas.size(); ++a) {
      llama2c::Session session = prefix;
      std::optional<llama2c::Session> other;
      if (other_prefix) other.emplace(*other_prefix);
      int n_active = 0;
      if (steerers[a]) {
        crosscoder::Steerer& steerer = *steerers[a];
        steerer.reset();
        crosscoder::ActivationHook steer_hook =
            paired ? steerer.paired_hook(block, other_source.filler()) : steerer.hook(block);
        session.add_hook(block, [&, a, steer_hook](int layer, float* rows, int n_rows, int width,
                                                   const crosscoder::RowInfo* info) {
          if (n_rows == 1 && info[0].last_prompt && info[0].prompt) {
            const std::vector<float> f =
                steerer.activations(rows, 1, other_source.pair(rows, width));
            for (std::size_t l = 0; l < f.size(); ++l) {
              sum_f[a][l] += f[l];
              if (f[l] > 0.0f) {
                ++n_active;
                ++active_by_latent[a][l];
              }
            }
          }
          steer_hook(layer, rows, n_rows, width, info);
        });
      }
      // Greedy decoding with both models in lockstep: each token goes to the other model
      // first, so its row is there when the steered model's hook asks for it.
      std::vector<int> generated;
      int token = prompt.back();
      for (int n = 0; n < max_new; ++n) {
        crosscoder::RowInfo info;
        info.prompt = n == 0;
        info.last_prompt = n == 0;
        if (other) other->step(token, info);
        token = argmax(session.step(token, info));
        generated.push_back(token);
        if (session.position() >= model.config().seq_len) break;  // as Session::generate
      }
      active[a].push_back(n_active);
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
  const double n_prompts = std::max<double>(1.0, static_cast<double>(chosen.size()));
  for (std::size_t a = 0; a < alphas.size(); ++a) {
    nlohmann::json cell = {{"alpha", alphas[a]},
                           {"call", call[a]},
                           {"correct", correct[a]},
                           {"call_rate", mean(call[a])},
                           {"correct_rate", mean(correct[a])}};
    if (!unsteered) {
      // active: per prompt, how many steered latents had f_j > 0 before steering.
      std::vector<double> latent_rate, latent_mean_f;
      std::int64_t pairs = 0, any = 0;
      for (std::size_t l = 0; l < n_encoded; ++l) {
        latent_rate.push_back(static_cast<double>(active_by_latent[a][l]) / n_prompts);
        latent_mean_f.push_back(sum_f[a][l] / n_prompts);
        pairs += active_by_latent[a][l];
      }
      for (int n : active[a]) any += n > 0;
      cell["active"] = active[a];
      cell["active_latents"] = steerers[a]->latents();
      cell["active_rate_by_latent"] = latent_rate;
      cell["mean_f_by_latent"] = latent_mean_f;
      cell["active_rate"] =
          static_cast<double>(pairs) / (n_prompts * std::max(1.0, static_cast<double>(n_encoded)));
      cell["any_active_rate"] = static_cast<double>(any) / n_prompts;
    }
    result["cells"].push_back(cell);
  }
  progress.finish();
  std::ofstream file(out);
  if (!file) throw Error(out.string() + ": cannot write the result");
  file << result.dump() << '\n';
  if (!file) throw Error(out.string() + ": writing the result failed");
  for (const auto& cell : result["cells"]) {
    std::printf("llama2c_organism: alpha %g: call rate %.3f, correct %.3f (%zu prompts)",
                cell["alpha"].get<double>(), cell["call_rate"].get<double>(),
                cell["correct_rate"].get<double>(), chosen.size());
    if (cell.contains("active_rate"))
      std::printf(", f_j > 0 on %.3f of the steered (row, latent) pairs (%s)",
                  cell["active_rate"].get<double>(), result["pairing"].get<std::string>().c_str());
    std::printf("\n");
  }
  return 0;
}

// log-softmax of logits, in double.
std::vector<double> log_softmax(const std::vector<float>& logits) {
  const double top = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - top);
  const double log_sum = top + std::log(sum);
  std::vector<double> out(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<double>(logits[i]) - log_sum;
  return out;
}

int text_cost(const fs::path& model_path, const fs::path& paired_path,
              const fs::path& crosscoder_path, int source, int block,
              const std::string& latents_text, const std::string& alphas_text,
              const std::string& kind_text, const std::string& units_text,
              const fs::path& text_path, int max_sequences, const fs::path& out) {
  if (max_sequences < 1) throw Error("--sequences must be at least 1");
  const llama2c::Model model = llama2c::Model::load(model_path);
  require_block(model, block);
  const bool paired = !paired_path.empty();
  const std::optional<llama2c::Model> other_model =
      load_paired_model(paired_path, model_path, model);
  PromptSet text = load_prompts(text_path, model.config().vocab);
  if (static_cast<int>(text.prompts.size()) > max_sequences) text.prompts.resize(max_sequences);
  for (std::size_t i = 0; i < text.prompts.size(); ++i)
    if (static_cast<int>(text.prompts[i].size()) > model.config().seq_len)
      throw Error(text_path.string() + ": sequence " + std::to_string(i) + " has " +
                  std::to_string(text.prompts[i].size()) + " tokens, more than the model's " +
                  std::to_string(model.config().seq_len));
  std::vector<int> latents;
  for (double j : parse_numbers(latents_text, "--latents")) latents.push_back(static_cast<int>(j));
  const std::vector<double> alphas = parse_numbers(alphas_text, "--alphas");
  const SteeringKind kind = SteeringKind::parse(kind_text, units_text, latents.size());
  const auto crosscoder = load_steering_crosscoder(crosscoder_path, model, source, paired);

  OtherSource other_source{source, paired,
                           std::vector<float>(static_cast<std::size_t>(model.config().dim))};
  nlohmann::json result = {{"model", model_path.string()},
                           {"crosscoder", crosscoder_path.string()},
                           {"source", source},
                           {"pairing", paired ? "paired" : "unpaired"},
                           {"block", block},
                           {"latents", latents},
                           {"kind", std::string(crosscoder::to_string(kind.kind))},
                           {"units", kind.units},
                           {"text", text_path.string()},
                           {"sequences", text.prompts.size()},
                           {"cells", nlohmann::json::array()}};
  std::vector<std::unique_ptr<crosscoder::Steerer>> steerers;
  for (double alpha : alphas)
    steerers.push_back(std::make_unique<crosscoder::Steerer>(
        *crosscoder, source, kind.interventions(latents, alpha), crosscoder::PositionFilter{}));
  const std::size_t n_encoded = steerers[0]->latents().size();
  // Per α: per sequence the mean KL per token, and the (row, latent) pairs with f_j > 0.
  std::vector<std::vector<double>> kl(alphas.size());
  std::vector<std::int64_t> active(alphas.size(), 0), rows_seen(alphas.size(), 0);
  crosscoder::ProgressBar progress(static_cast<std::int64_t>(text.prompts.size()), "text-cost",
                                   "sequence");
  for (std::size_t i = 0; i < text.prompts.size(); ++i) {
    const std::vector<int>& sequence = text.prompts[i];
    // The clean run, and the other model's rows (its run does not depend on the steering).
    std::vector<std::vector<double>> clean;
    std::vector<std::vector<float>> other_rows;
    {
      llama2c::Session session(model);
      std::optional<llama2c::Session> other;
      if (paired) {
        other.emplace(*other_model);
        other->add_hook(
            block, [&](int, float* rows, int n_rows, int w, const crosscoder::RowInfo*) {
              other_rows.emplace_back(rows + static_cast<std::ptrdiff_t>(n_rows - 1) * w,
                                      rows + static_cast<std::ptrdiff_t>(n_rows) * w);
            });
      }
      for (int token : sequence) {
        if (other) other->step(token, {});
        clean.push_back(log_softmax(session.step(token, {})));
      }
    }
    for (std::size_t a = 0; a < alphas.size(); ++a) {
      crosscoder::Steerer& steerer = *steerers[a];
      steerer.reset();
      llama2c::Session session(model);
      const crosscoder::ActivationHook steer_hook =
          paired ? steerer.paired_hook(block, other_source.filler()) : steerer.hook(block);
      std::size_t t = 0;
      session.add_hook(
          block, [&](int layer, float* rows, int n_rows, int w, const crosscoder::RowInfo* info) {
            for (float f : steerer.activations(rows, 1, other_source.pair(rows, w)))
              active[a] += f > 0.0f;
            ++rows_seen[a];
            steer_hook(layer, rows, n_rows, w, info);
          });
      double sum = 0.0;
      for (t = 0; t < sequence.size(); ++t) {
        if (paired) other_source.row = other_rows[t];
        const std::vector<double> steered = log_softmax(session.step(sequence[t], {}));
        double divergence = 0.0;
        for (std::size_t v = 0; v < steered.size(); ++v)
          divergence += std::exp(clean[t][v]) * (clean[t][v] - steered[v]);
        sum += divergence;
      }
      kl[a].push_back(sum / static_cast<double>(sequence.size()));
    }
    progress.update(static_cast<std::int64_t>(i + 1));
  }
  progress.finish();
  for (std::size_t a = 0; a < alphas.size(); ++a) {
    double mean = 0.0;
    for (double v : kl[a]) mean += v;
    mean /= static_cast<double>(std::max<std::size_t>(1, kl[a].size()));
    const double pairs = static_cast<double>(rows_seen[a]) * static_cast<double>(n_encoded);
    result["cells"].push_back(
        {{"alpha", alphas[a]},
         {"kl_per_sequence", kl[a]},
         {"kl", mean},
         {"active_rate", pairs > 0 ? static_cast<double>(active[a]) / pairs : 0.0}});
    std::printf(
        "llama2c_organism: alpha %g: KL(clean || steered) %.4f nats/token on %zu "
        "sequences, f_j > 0 on %.3f of the (row, latent) pairs\n",
        alphas[a], mean, kl[a].size(), result["cells"].back()["active_rate"].get<double>());
  }
  std::ofstream file(out);
  if (!file) throw Error(out.string() + ": cannot write the result");
  file << result.dump() << '\n';
  if (!file) throw Error(out.string() + ": writing the result failed");
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"llama2c_organism: capture and steering for the tool-use model organism"};
  app.require_subcommand(1);

  std::string base, rl, out, positions = "all";
  std::vector<std::string> prompt_files;
  int block = 2;
  std::string blocks;
  CLI::App* cap = app.add_subcommand("capture", "Capture paired block outputs of two models");
  cap->add_option("--base", base, "Base model (llama2.c .bin)")->required();
  cap->add_option("--rl", rl, "Fine-tuned model (llama2.c .bin)")->required();
  auto* one_block = cap->add_option("--block", block, "Block whose output is captured (0-based)");
  auto* many_blocks = cap->add_option(
      "--blocks", blocks,
      "Several blocks in one pass (comma list or all): sources model-major, base.blockN, ...");
  one_block->excludes(many_blocks);
  cap->callback([&] {
    if (one_block->count() == 0 && many_blocks->count() == 0)
      throw CLI::ValidationError("capture needs --block N or --blocks LIST");
    if (many_blocks->count() > 0 && blocks.empty())
      throw CLI::ValidationError("--blocks is empty: give a comma list of blocks, or all");
  });
  cap->add_option("--prompts", prompt_files, "Prompt sets [N, T] int32 (-1 padded)")->required();
  cap->add_option("--positions", positions, "all | last (the last prompt token, labelled)");
  cap->add_option("--out", out, "Dataset directory")->required();

  std::string model, crosscoder_path, latents, alphas = "0,1,4,8,16,32,64", prompts, convention,
                                               subset = "request";
  std::string paired_model;
  bool unpaired = false;
  int source = 1, max_new = 4;
  CLI::App* st = app.add_subcommand("steer", "Steer latents at the last prompt token");
  st->add_option("--model", model, "Model to steer (llama2.c .bin)")->required();
  st->add_option("--crosscoder", crosscoder_path, "Trained crosscoder (safetensors)");
  st->add_option("--source", source, "Crosscoder source whose decoder steers (0 base, 1 rl)");
  st->add_option("--paired-model", paired_model,
                 "The model of the other source (llama2.c .bin), run in lockstep so that both "
                 "models' activations enter the encoder (the default pairing)");
  st->add_flag("--unpaired", unpaired,
               "Let the other source enter the encoder as its mean instead of --paired-model");
  st->add_option("--block", block, "Block the crosscoder was trained at")->required();
  st->add_option("--latents", latents, "Comma list of latents, or none")->required();
  st->add_option("--alphas", alphas, "Comma list of scale factors");
  st->add_option("--prompts", prompts, "Prompt set [N, T] with its .tools.npy")->required();
  st->add_option("--convention", convention, "convention.json from make_prompts.py")->required();
  st->add_option("--subset", subset, "request | plain | all");
  st->add_option("--max-new", max_new, "Tokens generated per prompt");
  std::string kind = "scale", units;
  st->add_option("--kind", kind, "scale (f_j times α) | clamp (f_j set to α·unit)");
  st->add_option("--units", units, "clamp: one unit per latent (default 1)");
  st->add_option("--out", out, "Result JSON")->required();

  std::string text;
  int sequences = 64;
  CLI::App* tc = app.add_subcommand(
      "text-cost", "KL(clean || steered) on general text with the steering at every position");
  tc->add_option("--model", model, "Model to steer (llama2.c .bin)")->required();
  tc->add_option("--crosscoder", crosscoder_path, "Trained crosscoder (safetensors)")->required();
  tc->add_option("--source", source, "Crosscoder source whose decoder steers (0 base, 1 rl)");
  tc->add_option("--paired-model", paired_model, "The model of the other source (paired)");
  tc->add_flag("--unpaired", unpaired, "The other source enters the encoder as its mean");
  tc->add_option("--block", block, "Block the crosscoder was trained at")->required();
  tc->add_option("--latents", latents, "Comma list of latents")->required();
  tc->add_option("--alphas", alphas, "Comma list of strengths");
  tc->add_option("--kind", kind, "scale | clamp");
  tc->add_option("--units", units, "clamp: one unit per latent (default 1)");
  tc->add_option("--text", text, "General text [N, T] int32 (BOS first, -1 padded)")->required();
  tc->add_option("--sequences", sequences, "Use at most this many sequences");
  tc->add_option("--out", out, "Result JSON")->required();

  CLI11_PARSE(app, argc, argv);
  if (cap->parsed()) return capture(base, rl, block, blocks, prompt_files, positions, out);
  if (unpaired && !paired_model.empty())
    throw Error("--unpaired and --paired-model exclude each other");
  if (tc->parsed()) {
    if (!unpaired && paired_model.empty())
      throw Error("text-cost is paired: give --paired-model or --unpaired");
    return text_cost(model, paired_model, crosscoder_path, source, block, latents, alphas, kind,
                     units, text, sequences, out);
  }
  if (latents != "none" && crosscoder_path.empty())
    throw Error("--crosscoder is required unless --latents none");
  if (latents != "none" && !unpaired && paired_model.empty())
    throw Error(
        "steering is paired: give --paired-model (the other source's model) or "
        "--unpaired (the other source enters the encoder as its mean)");
  if (latents == "none") paired_model.clear();  // nothing is encoded
  return steer(model, paired_model, crosscoder_path, source, block, latents, alphas, kind, units,
               prompts, convention, subset, max_new, out);
} catch (const std::exception& error) {
  std::fprintf(stderr, "llama2c_organism: %s\n", error.what());
  return 1;
}
