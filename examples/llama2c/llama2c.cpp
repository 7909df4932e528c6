#include "llama2c.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>

#include <crosscoder/error.hpp>

namespace llama2c {
namespace {

using crosscoder::Error;

std::string describe(const Config& c) {
  return "dim " + std::to_string(c.dim) + ", hidden_dim " + std::to_string(c.hidden_dim) +
         ", n_layers " + std::to_string(c.layers) + ", n_heads " + std::to_string(c.heads) +
         ", n_kv_heads " + std::to_string(c.kv_heads) + ", vocab_size " + std::to_string(c.vocab) +
         ", seq_len " + std::to_string(c.seq_len);
}

// Number of float32 values the header implies, in the checkpoint's order (the two rotary
// tables included, which this engine recomputes rather than reads).
std::int64_t expected_floats(const Config& c) {
  const std::int64_t d = c.dim, h = c.hidden_dim, L = c.layers, kv = c.kv_dim();
  std::int64_t n = c.vocab * d;                            // token embedding
  n += L * d + L * d * d + 2 * L * kv * d + L * d * d;     // rms_att, wq, wk, wv, wo
  n += L * d + 3 * L * h * d + d;                          // rms_ffn, w1, w2, w3, rms_final
  n += std::int64_t{c.seq_len} * (c.head_size() / 2) * 2;  // freq_cis_real, freq_cis_imag
  if (!c.shared_classifier) n += c.vocab * d;
  return n;
}

// out[rows] = w[rows, cols]·x[cols].
void matvec(const float* w, const float* x, int rows, int cols, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* row = w + static_cast<std::size_t>(r) * cols;
    float total = 0.0f;
    for (int c = 0; c < cols; ++c) total += row[c] * x[c];
    out[r] = total;
  }
}

void rmsnorm(const float* x, const float* weight, int n, float* out) {
  float squares = 0.0f;
  for (int i = 0; i < n; ++i) squares += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(squares / static_cast<float>(n) + 1e-5f);
  for (int i = 0; i < n; ++i) out[i] = weight[i] * (scale * x[i]);
}

void softmax(float* x, int n) {
  const float largest = *std::max_element(x, x + n);
  float total = 0.0f;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - largest);
    total += x[i];
  }
  for (int i = 0; i < n; ++i) x[i] /= total;
}

}  // namespace

Model Model::load(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error(name + ": cannot open the llama2.c checkpoint");
  std::int32_t header[7];
  if (!file.read(reinterpret_cast<char*>(header), sizeof header))
    throw Error(name + ": too short for the 28-byte llama2.c header");
  Model model;
  Config& c = model.config_;
  c.dim = header[0];
  c.hidden_dim = header[1];
  c.layers = header[2];
  c.heads = header[3];
  c.kv_heads = header[4];
  c.shared_classifier = header[5] > 0;
  c.vocab = header[5] > 0 ? header[5] : (header[5] == INT32_MIN ? 0 : -header[5]);
  c.seq_len = header[6];
  const bool positive = c.dim > 0 && c.hidden_dim > 0 && c.layers > 0 && c.heads > 0 &&
                        c.kv_heads > 0 && c.vocab > 0 && c.seq_len > 0;
  if (!positive || c.dim > (1 << 16) || c.hidden_dim > (1 << 18) || c.layers > 1024 ||
      c.vocab > (1 << 22) || c.seq_len > (1 << 20))
    throw Error(name + ": not a llama2.c checkpoint: header " + describe(c));
  if (c.dim % c.heads != 0 || c.heads % c.kv_heads != 0 || c.head_size() % 2 != 0)
    throw Error(name + ": inconsistent llama2.c header (" + describe(c) +
                "): dim must be a multiple of n_heads, n_heads of n_kv_heads, with an even "
                "head size");
  const std::int64_t floats = expected_floats(c);
  const std::int64_t expected_bytes = 28 + 4 * floats;
  std::error_code ignored;
  const auto actual_bytes = static_cast<std::int64_t>(std::filesystem::file_size(path, ignored));
  if (actual_bytes != expected_bytes)
    throw Error(name + ": " + std::to_string(actual_bytes) + " bytes, but its header (" +
                describe(c) + (c.shared_classifier ? ", shared classifier" : ", own classifier") +
                ") implies " + std::to_string(expected_bytes) +
                (actual_bytes < expected_bytes ? ": truncated" : ": trailing data"));

  const auto read = [&](std::vector<float>& into, std::int64_t count) {
    into.resize(static_cast<std::size_t>(count));
    if (!file.read(reinterpret_cast<char*>(into.data()), count * 4))
      throw Error(name + ": read failed");
  };
  const std::int64_t d = c.dim, L = c.layers, kv = c.kv_dim(), h = c.hidden_dim;
  read(model.embedding_, c.vocab * d);
  read(model.rms_attention_, L * d);
  read(model.wq_, L * d * d);
  read(model.wk_, L * kv * d);
  read(model.wv_, L * kv * d);
  read(model.wo_, L * d * d);
  read(model.rms_ffn_, L * d);
  read(model.w1_, L * h * d);
  read(model.w2_, L * d * h);
  read(model.w3_, L * h * d);
  read(model.rms_final_, d);
  std::vector<float> rotary;
  read(rotary, std::int64_t{c.seq_len} * c.head_size());  // recomputed in step()
  if (!c.shared_classifier) read(model.classifier_, c.vocab * d);
  return model;
}

Session::Session(const Model& model) : model_(model) {
  const Config& c = model.config();
  x_.resize(c.dim);
  xb_.resize(c.dim);
  xb2_.resize(c.dim);
  q_.resize(c.dim);
  att_.resize(static_cast<std::size_t>(c.heads) * c.seq_len);
  hb_.resize(c.hidden_dim);
  hb2_.resize(c.hidden_dim);
  logits_.resize(c.vocab);
  const auto cache = static_cast<std::size_t>(c.layers) * c.seq_len * c.kv_dim();
  key_cache_.assign(cache, 0.0f);
  value_cache_.assign(cache, 0.0f);
}

void Session::add_hook(int block, crosscoder::ActivationHook hook) {
  if (block < 0 || block >= model_.config().layers)
    throw Error("llama2c: block " + std::to_string(block) + " is out of range: the model has " +
                std::to_string(model_.config().layers) + " blocks (0 to " +
                std::to_string(model_.config().layers - 1) + ")");
  hooks_[block].push_back(std::move(hook));
}

void Session::clear_hooks() { hooks_.clear(); }

const std::vector<float>& Session::step(int token, crosscoder::RowInfo info) {
  const Config& c = model_.config();
  if (token < 0 || token >= c.vocab)
    throw Error("llama2c: token " + std::to_string(token) + " is out of range [0, " +
                std::to_string(c.vocab) + ")");
  if (position_ >= c.seq_len)
    throw Error("llama2c: the sequence is full (" + std::to_string(c.seq_len) + " tokens)");
  const int d = c.dim, kv_dim = c.kv_dim(), hs = c.head_size(), hidden = c.hidden_dim;
  const int group = c.heads / c.kv_heads, pos = position_;
  info.position = pos;
  std::copy_n(model_.embedding_.data() + static_cast<std::size_t>(token) * d, d, x_.data());

  for (int l = 0; l < c.layers; ++l) {
    const std::size_t dd = static_cast<std::size_t>(d) * d,
                      kd = static_cast<std::size_t>(kv_dim) * d;
    rmsnorm(x_.data(), model_.rms_attention_.data() + static_cast<std::size_t>(l) * d, d,
            xb_.data());
    float* key = key_cache_.data() + (static_cast<std::size_t>(l) * c.seq_len + pos) * kv_dim;
    float* value = value_cache_.data() + (static_cast<std::size_t>(l) * c.seq_len + pos) * kv_dim;
    matvec(model_.wq_.data() + l * dd, xb_.data(), d, d, q_.data());
    matvec(model_.wk_.data() + l * kd, xb_.data(), kv_dim, d, key);
    matvec(model_.wv_.data() + l * kd, xb_.data(), kv_dim, d, value);
    // Rotary embedding on interleaved pairs (llama2.c's run.c).
    for (int i = 0; i < d; i += 2) {
      const float frequency =
          1.0f / std::pow(10000.0f, static_cast<float>(i % hs) / static_cast<float>(hs));
      const float angle = static_cast<float>(pos) * frequency;
      const float cosine = std::cos(angle), sine = std::sin(angle);
      for (float* v : {q_.data(), key}) {
        if (v == key && i >= kv_dim) continue;
        const float a = v[i], b = v[i + 1];
        v[i] = a * cosine - b * sine;
        v[i + 1] = a * sine + b * cosine;
      }
    }
    for (int head = 0; head < c.heads; ++head) {
      const float* qh = q_.data() + head * hs;
      float* scores = att_.data() + static_cast<std::size_t>(head) * c.seq_len;
      const std::size_t offset = static_cast<std::size_t>(head / group) * hs;
      for (int t = 0; t <= pos; ++t) {
        const float* kt =
            key_cache_.data() + (static_cast<std::size_t>(l) * c.seq_len + t) * kv_dim + offset;
        float dot = 0.0f;
        for (int i = 0; i < hs; ++i) dot += qh[i] * kt[i];
        scores[t] = dot / std::sqrt(static_cast<float>(hs));
      }
      softmax(scores, pos + 1);
      float* out = xb_.data() + head * hs;
      std::fill_n(out, hs, 0.0f);
      for (int t = 0; t <= pos; ++t) {
        const float* vt =
            value_cache_.data() + (static_cast<std::size_t>(l) * c.seq_len + t) * kv_dim + offset;
        for (int i = 0; i < hs; ++i) out[i] += scores[t] * vt[i];
      }
    }
    matvec(model_.wo_.data() + l * dd, xb_.data(), d, d, xb2_.data());
    for (int i = 0; i < d; ++i) x_[i] += xb2_[i];

    const std::size_t hd = static_cast<std::size_t>(hidden) * d;
    rmsnorm(x_.data(), model_.rms_ffn_.data() + static_cast<std::size_t>(l) * d, d, xb_.data());
    matvec(model_.w1_.data() + l * hd, xb_.data(), hidden, d, hb_.data());
    matvec(model_.w3_.data() + l * hd, xb_.data(), hidden, d, hb2_.data());
    for (int i = 0; i < hidden; ++i) {
      const float gate = hb_[i];
      hb_[i] = gate / (1.0f + std::exp(-gate)) * hb2_[i];  // SwiGLU
    }
    matvec(model_.w2_.data() + l * hd, hb_.data(), d, hidden, xb_.data());
    for (int i = 0; i < d; ++i) x_[i] += xb_[i];

    if (const auto found = hooks_.find(l); found != hooks_.end()) {
      for (const auto& hook : found->second) hook(l, x_.data(), 1, d, &info);
    }
  }
  rmsnorm(x_.data(), model_.rms_final_.data(), d, x_.data());
  const std::vector<float>& classifier =
      c.shared_classifier ? model_.embedding_ : model_.classifier_;
  matvec(classifier.data(), x_.data(), c.vocab, d, logits_.data());
  ++position_;
  return logits_;
}

std::vector<int> Session::generate(const std::vector<int>& prompt, int max_new, float temperature,
                                   std::mt19937_64& rng, int stop_token) {
  if (prompt.empty()) throw Error("llama2c: generate needs a prompt of at least one token");
  std::vector<float> logits;
  for (std::size_t i = 0; i < prompt.size(); ++i) {
    crosscoder::RowInfo info;
    info.prompt = true;
    info.last_prompt = i + 1 == prompt.size();
    logits = step(prompt[i], info);
  }
  std::vector<int> generated;
  for (int n = 0; n < max_new; ++n) {
    int next = 0;
    if (temperature <= 0.0f) {
      next = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      std::vector<float> probabilities(logits);
      for (float& p : probabilities) p /= temperature;
      softmax(probabilities.data(), static_cast<int>(probabilities.size()));
      std::discrete_distribution<int> draw(probabilities.begin(), probabilities.end());
      next = draw(rng);
    }
    generated.push_back(next);
    if (next == stop_token || position_ >= model_.config().seq_len) break;
    crosscoder::RowInfo info;
    info.prompt = false;
    logits = step(next, info);
  }
  return generated;
}

}  // namespace llama2c
