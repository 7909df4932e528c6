// What each model loses when a crosscoder's reconstruction replaces its block output, on text
// (docs/evaluation.md): next-token cross-entropy clean, spliced and ablated, KL to the clean run,
// CE loss recovered, and the diffing patches scored against the other model, with bootstrap 95%
// intervals over sequences. The library's Splicer and LanguageModelScores on the llama2.c engine.
//
//   llama2c_splice_eval --models BASE.bin --models TUNED.bin --crosscoder C.safetensors
//       --block N --text TEXT.npy [--sequences 64] [--kinds reconstruction,zero,mean,...]
//       [--unpaired] [--resamples 1000] --json OUT.json
//
// TEXT.npy holds token ids [N, T] int32 (BOS first, −1 padding), e.g. the organism's
// prompts/text.npy. Model m is the crosscoder's source m. Paired (the default): when model s is
// spliced, the other model's block output for the same token (from its clean run) enters the
// encoder, as in training; --unpaired puts it at its mean instead.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <crosscoder/crosscoder.hpp>
#include <crosscoder/io/npy.hpp>
#include <crosscoder/lm_evaluation.hpp>
#include <crosscoder/splice.hpp>

#include "llama2c.hpp"

namespace {

using crosscoder::Error;

// One model's clean run of one sequence: logits [steps, vocab] and block rows [steps, d].
struct CleanRun {
  std::vector<float> logits, rows;
};

std::vector<std::vector<int>> load_sequences(const std::string& path, int vocab, int limit) {
  const auto file = crosscoder::io::NpyFile::open(path);
  if (file.shape().size() != 2)
    throw Error(path + ": text must be a 2-d array [N, T] of token ids");
  const std::vector<std::int64_t> ids = file.read_int();
  const std::size_t rows = file.shape()[0], width = file.shape()[1];
  std::vector<std::vector<int>> sequences;
  for (std::size_t r = 0; r < rows && static_cast<int>(sequences.size()) < limit; ++r) {
    std::vector<int> sequence;
    for (std::size_t t = 0; t < width; ++t) {
      const std::int64_t id = ids[r * width + t];
      if (id < 0) break;
      if (id >= vocab)
        throw Error(fmt::format("{}: row {} token {} is {}, outside the vocabulary of {}", path, r,
                                t, id, vocab));
      sequence.push_back(static_cast<int>(id));
    }
    if (sequence.size() >= 2) sequences.push_back(std::move(sequence));
  }
  if (sequences.empty()) throw Error(path + ": no sequence of at least 2 tokens");
  return sequences;
}

// Runs `session` over all but the last token (each step predicts the next), returning the
// logits [steps, vocab].
std::vector<float> run(llama2c::Session& session, const std::vector<int>& sequence, int vocab) {
  session.reset();
  std::vector<float> logits;
  logits.reserve((sequence.size() - 1) * static_cast<std::size_t>(vocab));
  for (std::size_t t = 0; t + 1 < sequence.size(); ++t) {
    const std::vector<float>& step = session.step(sequence[t], {});
    logits.insert(logits.end(), step.begin(), step.end());
  }
  return logits;
}

nlohmann::json interval_json(const crosscoder::Interval& i) {
  return {{"value", i.value}, {"low", i.low}, {"high", i.high}};
}

int evaluate(const std::vector<std::string>& model_paths, const std::string& crosscoder_path,
             int block, const std::string& text_path, int max_sequences,
             const std::vector<std::string>& kind_names, bool unpaired, int resamples,
             double exclusive_threshold, const std::string& out) {
  if (model_paths.size() != 2) throw Error("--models: give the two models, in source order");
  const llama2c::Model models[] = {llama2c::Model::load(model_paths[0]),
                                   llama2c::Model::load(model_paths[1])};
  const llama2c::Config& config = models[0].config();
  if (models[1].config().dim != config.dim || models[1].config().vocab != config.vocab)
    throw Error("--models: the two models differ in width or vocabulary");
  if (block < 0 || block >= config.layers)
    throw Error(fmt::format("--block {}: the models have blocks 0 … {}", block, config.layers - 1));
  const crosscoder::Crosscoder crosscoder = crosscoder::Crosscoder::load(
      crosscoder_path, crosscoder::make_backend(crosscoder::BackendKind::cpu));
  if (crosscoder.config().sources != 2 || crosscoder.config().width != config.dim) {
    throw Error(fmt::format("{}: {} sources of width {}, the models need 2 of width {}",
                            crosscoder_path, crosscoder.config().sources, crosscoder.config().width,
                            config.dim));
  }
  // For a crosscoder without dedicated partitions, the patches take their latents from the
  // relative-norm classes.
  const crosscoder::WeightMetrics classes =
      crosscoder::weight_metrics(crosscoder, exclusive_threshold);
  std::vector<crosscoder::SpliceKind> kinds;
  for (const std::string& name : kind_names) kinds.push_back(crosscoder::parse_splice_kind(name));
  const auto sequences = load_sequences(text_path, config.vocab, max_sequences);
  const int V = config.vocab, d = config.dim;

  // Clean runs of both models: logits, block rows (the pair for the other model's splices) and
  // the mean block output (mean ablation).
  std::vector<std::vector<CleanRun>> clean(2, std::vector<CleanRun>(sequences.size()));
  std::vector<std::vector<double>> mean(2, std::vector<double>(static_cast<std::size_t>(d), 0.0));
  std::int64_t steps_total = 0;
  crosscoder::ProgressBar progress(static_cast<std::int64_t>(sequences.size()), "clean runs",
                                   "sequence");
  for (int m = 0; m < 2; ++m) {
    llama2c::Session session(models[m]);
    std::vector<float>* rows = nullptr;
    session.add_hook(block, [&](int, float* x, int n, int width, const crosscoder::RowInfo*) {
      rows->insert(rows->end(), x, x + static_cast<std::ptrdiff_t>(n) * width);
    });
    for (std::size_t q = 0; q < sequences.size(); ++q) {
      rows = &clean[m][q].rows;
      clean[m][q].logits = run(session, sequences[q], V);
      for (std::size_t e = 0; e < rows->size(); ++e) mean[m][e % d] += (*rows)[e];
      if (m == 0) steps_total += static_cast<std::int64_t>(sequences[q].size() - 1);
      progress.update(static_cast<std::int64_t>(q + 1));
    }
  }
  progress.finish();
  for (auto& source_mean : mean)
    for (double& value : source_mean) value /= static_cast<double>(steps_total);

  nlohmann::json result;
  result["models"] = model_paths;
  result["crosscoder"] = crosscoder_path;
  result["block"] = block;
  result["text"] = text_path;
  result["sequences"] = sequences.size();
  result["tokens"] = steps_total;
  result["paired"] = !unpaired;
  result["resamples"] = resamples;
  if (crosscoder.config().exclusive.empty()) result["exclusive_threshold"] = exclusive_threshold;
  result["sources"] = nlohmann::json::array();
  double spliced_seconds = 0.0;
  std::int64_t spliced_tokens = 0;
  for (int s = 0; s < 2; ++s) {
    const int other = 1 - s;
    // Conditions: clean; each kind (KL to the clean run); for the patches also KL to the other
    // model, beside the clean model's own KL to the other (what a patch should reduce).
    std::vector<std::string> names = {"clean", "clean vs other"};
    for (const auto kind : kinds) {
      names.emplace_back(crosscoder::to_string(kind));
      if (kind == crosscoder::SpliceKind::add_latents_of ||
          kind == crosscoder::SpliceKind::decoder_of)
        names.push_back(std::string(crosscoder::to_string(kind)) + " vs other");
    }
    crosscoder::LanguageModelScores scores(names);
    std::vector<crosscoder::Splicer> splicers;
    for (const auto kind : kinds) {
      crosscoder::SpliceOptions options;
      options.kind = kind;
      options.other_source = other;
      if (crosscoder.config().exclusive.empty()) {
        // No dedicated partitions: the patches' latents by relative decoder norm instead, those
        // exclusive to the other model (add_latents_of) or shared (decoder_of).
        const int wanted =
            kind == crosscoder::SpliceKind::add_latents_of ? other : crosscoder::kSharedLatent;
        for (std::size_t f = 0; f < classes.latent_class.size(); ++f)
          if (classes.latent_class[f] == wanted) options.latents.push_back(static_cast<int>(f));
        if (options.latents.empty() && (kind == crosscoder::SpliceKind::add_latents_of ||
                                        kind == crosscoder::SpliceKind::decoder_of))
          throw Error(fmt::format("{}: no latent of class {} at --exclusive-threshold {}",
                                  crosscoder_path, crosscoder::latent_class_name(wanted),
                                  exclusive_threshold));
      }
      if (kind == crosscoder::SpliceKind::mean) options.mean.assign(mean[s].begin(), mean[s].end());
      splicers.emplace_back(crosscoder, s, options);
    }
    for (std::size_t q = 0; q < sequences.size(); ++q) {
      const std::vector<int>& sequence = sequences[q];
      const std::vector<std::int32_t> targets(sequence.begin() + 1, sequence.end());
      scores.add(static_cast<std::int64_t>(q), 0, clean[s][q].logits, V, targets);
      scores.add(static_cast<std::int64_t>(q), 1, clean[s][q].logits, V, targets,
                 clean[other][q].logits);
      int condition = 2;
      for (std::size_t k = 0; k < kinds.size(); ++k) {
        llama2c::Session session(models[s]);
        std::vector<float> pair(static_cast<std::size_t>(2 * d));
        if (unpaired) {
          session.add_hook(block, splicers[k].hook(block));
        } else {
          session.add_hook(block,
                           splicers[k].hook(block, [&](int, int, const crosscoder::RowInfo* info) {
                             const auto* row = clean[other][q].rows.data() + info[0].position * d;
                             std::copy_n(row, d, pair.begin() + other * d);
                             return std::span<const float>(pair);
                           }));
        }
        const auto start = std::chrono::steady_clock::now();
        const std::vector<float> logits = run(session, sequence, V);
        spliced_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        spliced_tokens += static_cast<std::int64_t>(targets.size());
        scores.add(static_cast<std::int64_t>(q), condition++, logits, V, targets,
                   clean[s][q].logits);
        if (kinds[k] == crosscoder::SpliceKind::add_latents_of ||
            kinds[k] == crosscoder::SpliceKind::decoder_of)
          scores.add(static_cast<std::int64_t>(q), condition++, logits, V, targets,
                     clean[other][q].logits);
      }
    }
    const crosscoder::LanguageModelReport report = scores.result(resamples, 0);
    nlohmann::json source_json;
    source_json["source"] = s;
    source_json["model"] = model_paths[static_cast<std::size_t>(s)];
    source_json["conditions"] = nlohmann::json::array();
    std::printf("source %d (%s), %lld tokens in %lld sequences:\n", s,
                model_paths[static_cast<std::size_t>(s)].c_str(),
                static_cast<long long>(steps_total), static_cast<long long>(report.sequences));
    for (const auto& c : report.conditions) {
      nlohmann::json entry = {{"name", c.name},
                              {"tokens", c.tokens},
                              {"cross_entropy", interval_json(c.cross_entropy)}};
      if (c.has_kl) entry["kl"] = interval_json(c.kl);
      source_json["conditions"].push_back(entry);
      std::printf("  %-28s CE %.4f [%.4f, %.4f]", c.name.c_str(), c.cross_entropy.value,
                  c.cross_entropy.low, c.cross_entropy.high);
      if (c.has_kl) std::printf("  KL %.4f [%.4f, %.4f]", c.kl.value, c.kl.low, c.kl.high);
      std::printf("\n");
    }
    const bool has_zero = std::find(names.begin(), names.end(), "zero") != names.end();
    if (has_zero) {
      for (const auto kind : kinds) {
        if (kind == crosscoder::SpliceKind::zero) continue;
        const std::string name(crosscoder::to_string(kind));
        const crosscoder::Interval recovered = report.recovered(name);
        source_json["ce_loss_recovered"][name] = interval_json(recovered);
        std::printf("  CE loss recovered by %-20s %.4f [%.4f, %.4f]\n", name.c_str(),
                    recovered.value, recovered.low, recovered.high);
      }
    }
    result["sources"].push_back(source_json);
  }
  const double rate =
      spliced_seconds > 0.0 ? static_cast<double>(spliced_tokens) / spliced_seconds : 0.0;
  result["spliced_tokens_per_second"] = rate;
  std::printf("spliced runs: %lld tokens at %.0f tokens/s (engine and splice, one thread)\n",
              static_cast<long long>(spliced_tokens), rate);
  std::ofstream file(out);
  if (!file) throw Error(out + ": cannot write the result");
  file << result.dump(1) << '\n';
  if (!file) throw Error(out + ": writing the result failed");
  std::printf("result: %s\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"llama2c_splice_eval: CE and KL of two models with a crosscoder spliced in"};
  std::vector<std::string> models, kinds = {"reconstruction", "zero", "mean"};
  std::string crosscoder_path, text, out;
  int block = 2, sequences = 64, resamples = 1000;
  bool unpaired = false;
  double exclusive_threshold = 0.9;
  app.add_option("--models", models, "The two models (llama2.c .bin), in source order")
      ->required()
      ->expected(2);
  app.add_option("--crosscoder", crosscoder_path, "Trained crosscoder (safetensors)")->required();
  app.add_option("--block", block, "Block the crosscoder was trained at (0-based)")->required();
  app.add_option("--text", text, "Token ids [N, T] int32 (BOS first, -1 padding)")->required();
  app.add_option("--sequences", sequences, "Use at most this many sequences")
      ->capture_default_str();
  app.add_option("--kinds", kinds,
                 "Splices: reconstruction, reconstruction_plus_error, zero, mean, add_latents_of, "
                 "decoder_of")
      ->delimiter(',')
      ->capture_default_str();
  app.add_flag("--unpaired", unpaired, "The other model's rows at their mean, not paired");
  app.add_option("--resamples", resamples, "Bootstrap resamples")->capture_default_str();
  app.add_option("--exclusive-threshold", exclusive_threshold,
                 "Without dedicated partitions: the relative decoder norm from which a latent is "
                 "the other model's (add_latents_of); the shared class feeds decoder_of")
      ->capture_default_str();
  app.add_option("--json", out, "Result JSON")->required();
  CLI11_PARSE(app, argc, argv);
  return evaluate(models, crosscoder_path, block, text, sequences, kinds, unpaired, resamples,
                  exclusive_threshold, out);
} catch (const std::exception& error) {
  std::fprintf(stderr, "llama2c_splice_eval: %s\n", error.what());
  return 1;
}
