#pragma once
/// @file llama2c.hpp
/// A small float32 inference engine for llama2.c checkpoints (Karpathy's "version 0" format:
/// a 7-int32 header, then the weights; see the model's README), with a KV cache, greedy and
/// temperature sampling, and crosscoder's ActivationHook called at chosen block outputs so
/// that activations can be captured or steered where a crosscoder was trained.
///
/// Block N's output is the residual stream after transformer block N (0-based), i.e. Hugging
/// Face's hidden_states[N + 1] and llama.cpp's control-vector layer N (docs/steering.md).

#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <vector>

#include <crosscoder/steering.hpp>

namespace llama2c {

/// The checkpoint header.
struct Config {
  int dim = 0;                    ///< residual width d
  int hidden_dim = 0;             ///< feed-forward width
  int layers = 0;                 ///< transformer blocks
  int heads = 0;                  ///< query heads
  int kv_heads = 0;               ///< key/value heads (grouped-query attention)
  int vocab = 0;                  ///< vocabulary size
  int seq_len = 0;                ///< longest sequence (rotary tables and KV cache)
  bool shared_classifier = true;  ///< the output projection is the token embedding

  int head_size() const { return dim / heads; }
  int kv_dim() const { return dim * kv_heads / heads; }
};

/// A loaded model. The weights are float32 copies in the checkpoint's layouts.
class Model {
 public:
  /// Reads a llama2.c "version 0" checkpoint.
  /// @throws crosscoder::Error naming the file when it is missing, truncated, longer than its
  ///         header implies, or its header is inconsistent (non-positive sizes, dim not a
  ///         multiple of heads, heads not a multiple of kv_heads, odd head size).
  static Model load(const std::filesystem::path& path);

  const Config& config() const noexcept { return config_; }

 private:
  friend class Session;
  Config config_;
  std::vector<float> embedding_;          // [vocab, dim]
  std::vector<float> rms_attention_;      // [L, dim]
  std::vector<float> wq_, wk_, wv_, wo_;  // [L, dim, dim], [L, kv_dim, dim] ×2, [L, dim, dim]
  std::vector<float> rms_ffn_;            // [L, dim]
  std::vector<float> w1_, w2_, w3_;       // [L, hidden, dim], [L, dim, hidden], [L, hidden, dim]
  std::vector<float> rms_final_;          // [dim]
  std::vector<float> classifier_;         // [vocab, dim] when not shared
};

/// One sequence being decoded: the KV cache and the hooks. Not thread-safe.
class Session {
 public:
  explicit Session(const Model& model);

  /// Calls `hook` with the residual stream after block `block` (0-based) for every token
  /// processed from now on (one row per call). Several hooks per block run in the order added.
  /// @throws crosscoder::Error when the block is out of range.
  void add_hook(int block, crosscoder::ActivationHook hook);
  /// Removes every hook.
  void clear_hooks();

  /// Feeds one token at the next position and returns the next-token logits [vocab].
  /// `info` is passed to the hooks (its position is overwritten with the token's).
  /// @throws crosscoder::Error when the token is out of range or the sequence is full.
  const std::vector<float>& step(int token, crosscoder::RowInfo info);

  /// Feeds `prompt` (prefill; the last token is flagged last_prompt), then generates up to
  /// `max_new` tokens, stopping early at `stop_token` (≥ 0). temperature 0 is greedy
  /// (argmax, lowest id on ties); otherwise samples softmax(logits / temperature) with `rng`.
  /// Returns the generated tokens only.
  std::vector<int> generate(const std::vector<int>& prompt, int max_new, float temperature,
                            std::mt19937_64& rng, int stop_token = -1);

  /// Tokens processed so far.
  int position() const noexcept { return position_; }
  /// Forgets the sequence (the hooks stay).
  void reset() noexcept { position_ = 0; }

 private:
  const Model& model_;
  int position_ = 0;
  std::vector<float> x_, xb_, xb2_, q_, att_, hb_, hb2_, logits_;
  std::vector<float> key_cache_, value_cache_;  // [L, seq_len, kv_dim]
  std::map<int, std::vector<crosscoder::ActivationHook>> hooks_;
};

}  // namespace llama2c
