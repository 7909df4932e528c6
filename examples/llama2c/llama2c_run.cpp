// Runs a llama2.c checkpoint (examples/llama2c/llama2c.hpp) on token ids:
//
//   llama2c_run MODEL --tokens 1,403,...            teacher-forced logits of every position
//       [--logits OUT.npy]                          ... written as [T, vocab] float32
//       [--block N --states OUT.npy]                ... and block N's output [T, dim]
//   llama2c_run MODEL --tokens 1 --generate 40 [--temperature 0.8] [--seed 0]
//                                                   a continuation, printed as token ids
//
// The public stories260K.bin is Karpathy's llama2.c TinyStories model
// (huggingface.co/karpathy/tinyllamas, stories260K/stories260K.bin, MIT).
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <crosscoder/error.hpp>
#include <crosscoder/io/npy.hpp>

#include "llama2c.hpp"

namespace {

std::vector<int> parse_tokens(const std::string& text) {
  std::vector<int> tokens;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    std::size_t used = 0;
    int value = 0;
    try {
      value = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size())
      throw crosscoder::Error("--tokens: '" + item + "' is not an integer token id");
    tokens.push_back(value);
  }
  if (tokens.empty()) throw crosscoder::Error("--tokens: no token ids given");
  return tokens;
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fputs(
        "usage: llama2c_run MODEL --tokens IDS [--logits OUT.npy] [--block N --states OUT.npy]\n"
        "       llama2c_run MODEL --tokens IDS --generate N [--temperature T] [--seed S]\n",
        stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string model_path = argv[1];
  std::string tokens_text, logits_path, states_path;
  int block = -1, generate = 0;
  float temperature = 0.0f;
  unsigned long long seed = 0;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw crosscoder::Error(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--tokens")
      tokens_text = value;
    else if (flag == "--logits")
      logits_path = value;
    else if (flag == "--states")
      states_path = value;
    else if (flag == "--block")
      block = std::stoi(value);
    else if (flag == "--generate")
      generate = std::stoi(value);
    else if (flag == "--temperature")
      temperature = std::stof(value);
    else if (flag == "--seed")
      seed = std::stoull(value);
    else
      throw crosscoder::Error("unknown flag " + flag);
  }
  const std::vector<int> tokens = parse_tokens(tokens_text);
  const llama2c::Model model = llama2c::Model::load(model_path);
  const llama2c::Config& c = model.config();
  llama2c::Session session(model);

  if (generate > 0) {
    std::mt19937_64 rng(seed);
    for (int token : session.generate(tokens, generate, temperature, rng))
      std::printf("%d ", token);
    std::printf("\n");
    return 0;
  }

  std::vector<float> states;
  if (!states_path.empty()) {
    session.add_hook(block, [&](int, float* rows, int n, int d, const crosscoder::RowInfo*) {
      states.insert(states.end(), rows, rows + static_cast<std::ptrdiff_t>(n) * d);
    });
  }
  std::vector<float> logits;
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    crosscoder::RowInfo info;
    info.last_prompt = t + 1 == tokens.size();
    const std::vector<float>& step = session.step(tokens[t], info);
    logits.insert(logits.end(), step.begin(), step.end());
  }
  if (!logits_path.empty())
    crosscoder::io::write_npy(logits_path, {tokens.size(), static_cast<std::size_t>(c.vocab)},
                              logits);
  if (!states_path.empty())
    crosscoder::io::write_npy(states_path, {tokens.size(), static_cast<std::size_t>(c.dim)},
                              states);
  std::printf("%zu tokens; model: dim %d, %d blocks, %d heads (%d kv), vocab %d\n", tokens.size(),
              c.dim, c.layers, c.heads, c.kv_heads, c.vocab);
  return 0;
} catch (const std::exception& error) {
  std::fprintf(stderr, "llama2c_run: %s\n", error.what());
  return 1;
}
