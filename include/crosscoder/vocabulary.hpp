#pragma once
/// @file vocabulary.hpp
/// Token ids to text, to show what a latent responds to: Hugging Face `tokenizer.json`
/// vocabularies (byte-level BPE as GPT-2 and Qwen write them, SentencePiece-style pieces with
/// `▁` and `<0xNN>` byte fallback as Llama's, WordPiece's `##`), llama2.c's `tokenizer.bin`,
/// and plain text files with one piece per line.
///
///   const auto vocabulary = crosscoder::Vocabulary::load("tokenizer.json");
///   std::string text = vocabulary.decode(ids);          // bytes, as the tokenizer would give
///   std::string shown = crosscoder::printable(vocabulary.token_text(id));  // for a terminal

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace crosscoder {

/// How a vocabulary's pieces become text.
enum class PieceEncoding {
  plain,          ///< pieces are the text (llama2.c, plain text files, added tokens)
  byte_level,     ///< GPT-2's byte-to-unicode mapping (decoder "ByteLevel")
  sentencepiece,  ///< `▁` for a space and `<0xNN>` for a raw byte (byte fallback)
  wordpiece,      ///< `##` continues a word; other pieces start one
};

class Vocabulary {
 public:
  /// Reads `path` by its content: JSON (a Hugging Face tokenizer.json: model.vocab as an object
  /// of piece → id or a list of [piece, score] pairs, and added_tokens), llama2.c's binary
  /// tokenizer (int32 max length, then per token float32 score, int32 length, bytes), or text
  /// (.txt: one piece per line, the line number its id).
  /// @throws Error naming the file and the entry when it is malformed (a truncated entry, an id
  ///         given to two pieces, an id outside [0, 2^24), no vocabulary in the JSON).
  static Vocabulary load(const std::filesystem::path& path);
  /// From pieces in id order (an empty piece for an unused id); `special[id]` marks pieces
  /// shown as written whatever the encoding (added tokens such as "<|im_start|>").
  /// @throws Error when `special` is neither empty nor one flag per piece.
  Vocabulary(std::vector<std::string> pieces, PieceEncoding encoding,
             std::vector<bool> special = {});

  std::size_t size() const noexcept { return pieces_.size(); }
  PieceEncoding encoding() const noexcept { return encoding_; }
  /// The piece as stored (e.g. "Ġthe", "▁the", "<0x0A>"). @throws Error for an id outside
  /// [0, size()).
  const std::string& piece(std::int32_t id) const;
  /// The bytes the token stands for (e.g. " the", "\n"); a WordPiece piece without `##` gets
  /// a leading space. May be part of a UTF-8 character. @throws Error as piece().
  std::string token_text(std::int32_t id) const;
  /// The bytes of a token sequence (ids < 0 are skipped: windows use −1 for "no token").
  /// @throws Error as piece().
  std::string decode(std::span<const std::int32_t> ids) const;

 private:
  std::vector<std::string> pieces_;
  PieceEncoding encoding_;
  std::vector<bool> special_;  // [size] or empty
};

/// `text` for a terminal or a web page: valid UTF-8 passes, control characters become
/// escapes ("\n", "\t", "\x07"), and bytes that are not valid UTF-8 become "\xNN".
std::string printable(std::string_view text);

}  // namespace crosscoder
