#include "crosscoder/vocabulary.hpp"

#include <fmt/format.h>

#include <array>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "crosscoder/error.hpp"

namespace crosscoder {

namespace {

constexpr std::int64_t kMaximumId = std::int64_t{1} << 24;

std::string read_whole_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error(fmt::format("{}: cannot open the vocabulary", path.string()));
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) throw Error(fmt::format("{}: reading the vocabulary failed", path.string()));
  return text;
}

// The code point starting at text[i] and its length in bytes; nullopt when the bytes there are
// not valid UTF-8 (an invalid lead, a missing continuation, an overlong form or a surrogate).
std::optional<std::pair<std::uint32_t, std::size_t>> next_code_point(std::string_view text,
                                                                     std::size_t i) {
  const auto byte = [&](std::size_t at) { return static_cast<unsigned char>(text[at]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) return std::pair<std::uint32_t, std::size_t>{lead, 1};
  std::size_t length = 0;
  std::uint32_t point = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    point = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    point = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    point = lead & 0x07;
  } else {
    return std::nullopt;
  }
  if (i + length > text.size()) return std::nullopt;
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return std::nullopt;
    point = (point << 6) | (byte(i + k) & 0x3F);
  }
  constexpr std::uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
  if (point < smallest[length] || point > 0x10FFFF || (point >= 0xD800 && point <= 0xDFFF))
    return std::nullopt;
  return std::pair<std::uint32_t, std::size_t>{point, length};
}

// GPT-2's byte-level alphabet: printable bytes stand for themselves, the other 68 for code
// points 256, 257, … in byte order. The inverse maps a piece's code points back to bytes.
const std::map<std::uint32_t, unsigned char>& byte_level_inverse() {
  static const std::map<std::uint32_t, unsigned char> inverse = [] {
    std::map<std::uint32_t, unsigned char> map;
    std::uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      map[printable ? static_cast<std::uint32_t>(b) : next++] = static_cast<unsigned char>(b);
    }
    return map;
  }();
  return inverse;
}

// "<0xNN>" as the byte NN (SentencePiece's and llama2.c's byte fallback).
std::optional<char> fallback_byte(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return std::nullopt;
  int value = 0;
  for (const char c : piece.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9')
      value += c - '0';
    else if (c >= 'A' && c <= 'F')
      value += c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      value += c - 'a' + 10;
    else
      return std::nullopt;
  }
  return static_cast<char>(value);
}

// The pieces of a tokenizer.json in id order, the added tokens marked, and how pieces decode.
Vocabulary parse_tokenizer_json(const std::filesystem::path& path, const std::string& text) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    throw Error(fmt::format("{}: invalid JSON: {}", path.string(), error.what()));
  }
  const auto where = [&](const std::string& what) {
    return fmt::format("{}: {}", path.string(), what);
  };
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object() ||
      !root["model"].contains("vocab")) {
    throw Error(where("no model.vocab: not a Hugging Face tokenizer.json"));
  }
  std::map<std::int64_t, std::string> by_id;
  std::map<std::int64_t, bool> special;
  const auto add = [&](std::int64_t id, const std::string& piece, const std::string& key,
                       bool is_special) {
    // The largest vocabularies have about a million tokens; a far larger id is a broken file,
    // not a reason to allocate gigabytes.
    if (id < 0 || id >= kMaximumId)
      throw Error(where(fmt::format("{}: id {} outside [0, {})", key, id, kMaximumId)));
    const auto [slot, inserted] = by_id.emplace(id, piece);
    if (!inserted && slot->second != piece) {
      throw Error(where(
          fmt::format("{}: id {} given to both \"{}\" and \"{}\"", key, id, slot->second, piece)));
    }
    if (is_special) special[id] = true;
  };
  // An id must be an integer in JSON: get<int64> of a float (or of a number too large for an
  // integer, which the parser keeps as a float) would be an undefined conversion.
  const auto id_of = [&](const nlohmann::json& value, const std::string& key) -> std::int64_t {
    if (value.is_number_unsigned()) {
      const auto id = value.get<std::uint64_t>();
      if (id >= static_cast<std::uint64_t>(kMaximumId))
        throw Error(where(fmt::format("{}: id {} outside [0, {})", key, id, kMaximumId)));
      return static_cast<std::int64_t>(id);
    }
    if (value.is_number_integer()) return value.get<std::int64_t>();
    throw Error(where(fmt::format("{}: the id {} is not an integer", key, value.dump())));
  };
  const nlohmann::json& vocab = root["model"]["vocab"];
  try {
    if (vocab.is_object()) {
      for (const auto& [piece, id] : vocab.items())
        add(id_of(id, "model.vocab"), piece, "model.vocab", false);
    } else if (vocab.is_array()) {  // Unigram: [[piece, score], ...], the index is the id
      for (std::size_t i = 0; i < vocab.size(); ++i)
        add(static_cast<std::int64_t>(i), vocab[i].at(0).get<std::string>(),
            fmt::format("model.vocab[{}]", i), false);
    } else {
      throw Error(where("model.vocab is neither an object nor a list"));
    }
    if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
      const nlohmann::json& added = root["added_tokens"];
      for (std::size_t i = 0; i < added.size(); ++i)
        add(id_of(added[i].at("id"), fmt::format("added_tokens[{}]", i)),
            added[i].at("content").get<std::string>(), fmt::format("added_tokens[{}]", i), true);
    }
  } catch (const nlohmann::json::exception& error) {
    throw Error(where(fmt::format("malformed vocabulary entry: {}", error.what())));
  }
  if (by_id.empty()) throw Error(where("the vocabulary is empty"));

  // How pieces decode: the decoder says it best; else the model and pre-tokenizer.
  const auto type_of = [](const nlohmann::json& node) {
    return node.is_object() && node.contains("type") && node["type"].is_string()
               ? node["type"].get<std::string>()
               : std::string();
  };
  const auto mentions = [&](const nlohmann::json& node, const std::string& wanted) {
    if (type_of(node) == wanted) return true;
    for (const char* list : {"decoders", "pretokenizers"}) {
      if (node.is_object() && node.contains(list) && node[list].is_array()) {
        for (const nlohmann::json& part : node[list])
          if (type_of(part) == wanted) return true;
      }
    }
    return false;
  };
  const nlohmann::json decoder = root.value("decoder", nlohmann::json());
  const nlohmann::json pre = root.value("pre_tokenizer", nlohmann::json());
  const nlohmann::json& model = root["model"];
  bool byte_fallback = false;
  if (model.contains("byte_fallback") && !model["byte_fallback"].is_null()) {
    if (!model["byte_fallback"].is_boolean()) {
      throw Error(where(fmt::format("model.byte_fallback is {}, not true or false",
                                    model["byte_fallback"].dump())));
    }
    byte_fallback = model["byte_fallback"].get<bool>();
  }
  PieceEncoding encoding = PieceEncoding::plain;
  if (mentions(decoder, "ByteLevel") || mentions(pre, "ByteLevel")) {
    encoding = PieceEncoding::byte_level;
  } else if (mentions(decoder, "WordPiece") || type_of(model) == "WordPiece") {
    encoding = PieceEncoding::wordpiece;
  } else if (mentions(decoder, "ByteFallback") || mentions(decoder, "Metaspace") ||
             mentions(pre, "Metaspace") || mentions(decoder, "Replace") || byte_fallback ||
             type_of(model) == "Unigram") {
    encoding = PieceEncoding::sentencepiece;
  }
  const auto size = static_cast<std::size_t>(by_id.rbegin()->first + 1);
  std::vector<std::string> pieces(size);
  std::vector<bool> flags(size, false);
  for (auto& [id, piece] : by_id) pieces[static_cast<std::size_t>(id)] = std::move(piece);
  for (const auto& [id, is_special] : special) flags[static_cast<std::size_t>(id)] = is_special;
  return Vocabulary(std::move(pieces), encoding, std::move(flags));
}

// llama2.c's tokenizer.bin: int32 max_token_length, then per token a float32 score, an int32
// length and that many bytes, to the end of the file.
Vocabulary parse_llama2c(const std::filesystem::path& path, const std::string& bytes) {
  std::size_t at = 0;
  const auto read_int = [&](const char* what, std::size_t token) {
    if (at + 4 > bytes.size()) {
      throw Error(
          fmt::format("{}: token {}: truncated before its {} (a llama2.c tokenizer.bin "
                      "holds per token a float score, an int32 length and the bytes)",
                      path.string(), token, what));
    }
    std::int32_t value = 0;
    std::memcpy(&value, bytes.data() + at, 4);
    at += 4;
    return value;
  };
  if (bytes.size() < 4) throw Error(fmt::format("{}: too short for a vocabulary", path.string()));
  const std::int32_t max_length = read_int("header", 0);
  if (max_length <= 0 || max_length > 1 << 16) {
    throw Error(
        fmt::format("{}: max_token_length {} is not plausible: not a llama2.c "
                    "tokenizer.bin (vocabularies: tokenizer.json, tokenizer.bin, .txt)",
                    path.string(), max_length));
  }
  std::vector<std::string> pieces;
  while (at < bytes.size()) {
    const std::size_t token = pieces.size();
    read_int("score", token);
    const std::int32_t length = read_int("length", token);
    if (length < 0 || length > max_length || at + static_cast<std::size_t>(length) > bytes.size()) {
      throw Error(fmt::format("{}: token {}: length {} outside [0, {}] or past the end of the file",
                              path.string(), token, length, max_length));
    }
    pieces.emplace_back(bytes.data() + at, static_cast<std::size_t>(length));
    at += static_cast<std::size_t>(length);
  }
  if (pieces.empty()) throw Error(fmt::format("{}: no tokens", path.string()));
  return Vocabulary(std::move(pieces), PieceEncoding::plain);
}

Vocabulary parse_lines(const std::string& text) {
  std::vector<std::string> pieces;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    pieces.push_back(std::move(line));
    start = end + 1;
  }
  return Vocabulary(std::move(pieces), PieceEncoding::plain);
}

}  // namespace

Vocabulary::Vocabulary(std::vector<std::string> pieces, PieceEncoding encoding,
                       std::vector<bool> special)
    : pieces_(std::move(pieces)), encoding_(encoding), special_(std::move(special)) {
  if (!special_.empty() && special_.size() != pieces_.size()) {
    throw Error(
        fmt::format("vocabulary: {} special flags for {} pieces", special_.size(), pieces_.size()));
  }
}

Vocabulary Vocabulary::load(const std::filesystem::path& path) {
  const std::string bytes = read_whole_file(path);
  const std::size_t first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '{') return parse_tokenizer_json(path, bytes);
  if (path.extension() == ".txt") return parse_lines(bytes);
  return parse_llama2c(path, bytes);
}

const std::string& Vocabulary::piece(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= pieces_.size()) {
    throw Error(
        fmt::format("token id {} is outside the vocabulary's {} tokens", id, pieces_.size()));
  }
  return pieces_[static_cast<std::size_t>(id)];
}

std::string Vocabulary::token_text(std::int32_t id) const {
  const std::string& p = piece(id);
  if (!special_.empty() && special_[static_cast<std::size_t>(id)]) return p;
  switch (encoding_) {
    case PieceEncoding::plain:
      if (const auto byte = fallback_byte(p)) return std::string(1, *byte);
      return p;
    case PieceEncoding::sentencepiece: {
      if (const auto byte = fallback_byte(p)) return std::string(1, *byte);
      std::string text;
      static constexpr std::string_view kSpace = "\xE2\x96\x81";  // ▁ U+2581
      for (std::size_t i = 0; i < p.size();) {
        if (p.compare(i, kSpace.size(), kSpace) == 0) {
          text += ' ';
          i += kSpace.size();
        } else {
          text += p[i++];
        }
      }
      return text;
    }
    case PieceEncoding::wordpiece:
      return p.rfind("##", 0) == 0 ? p.substr(2) : " " + p;
    case PieceEncoding::byte_level: {
      const auto& inverse = byte_level_inverse();
      std::string text;
      for (std::size_t i = 0; i < p.size();) {
        const auto point = next_code_point(p, i);
        if (!point) {  // not UTF-8: keep the byte
          text += p[i++];
          continue;
        }
        const auto found = inverse.find(point->first);
        if (found != inverse.end()) {
          text += static_cast<char>(found->second);
        } else {
          text.append(p, i, point->second);
        }
        i += point->second;
      }
      return text;
    }
  }
  return p;
}

std::string Vocabulary::decode(std::span<const std::int32_t> ids) const {
  std::string text;
  for (const std::int32_t id : ids) {
    if (id >= 0) text += token_text(id);
  }
  return text;
}

std::string printable(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    const auto point = next_code_point(text, i);
    if (!point) {
      out += fmt::format("\\x{:02X}", static_cast<unsigned char>(text[i]));
      ++i;
      continue;
    }
    const std::uint32_t c = point->first;
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\x{:02X}", c);
    } else {
      out.append(text.substr(i, point->second));
    }
    i += point->second;
  }
  return out;
}

}  // namespace crosscoder
