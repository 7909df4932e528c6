// Vocabularies: every byte through GPT-2's byte-level alphabet (the table rebuilt here from its
// definition), SentencePiece's ▁ and byte fallback, WordPiece, Unigram lists, llama2.c's binary
// format and text files, printable(), and malformed files refused by name.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "crosscoder/error.hpp"
#include "crosscoder/vocabulary.hpp"

namespace crosscoder {
namespace {

namespace fs = std::filesystem;

class Vocabularies : public ::testing::Test {
 protected:
  Vocabularies()
      : dir_(fs::temp_directory_path() /
             ("crosscoder-vocab-" + std::to_string(std::random_device{}()))) {
    fs::create_directories(dir_);
  }
  ~Vocabularies() override { fs::remove_all(dir_); }

  fs::path write(const std::string& name, const std::string& bytes) {
    const fs::path path = dir_ / name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  void expect_refused(const fs::path& path, const std::string& words) {
    try {
      Vocabulary::load(path);
      ADD_FAILURE() << path << " accepted; expected an error with '" << words << "'";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(words), std::string::npos) << error.what();
    }
  }

  fs::path dir_;
};

// UTF-8 of a code point.
std::string utf8(std::uint32_t c) {
  std::string s;
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xC0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (c >> 12));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  }
  return s;
}

// GPT-2's bytes_to_unicode, from its definition: the bytes '!'..'~', '¡'..'¬' and '®'..'ÿ' map to
// themselves, the rest in order to 256, 257, ...
std::uint32_t gpt2_code_point(int byte) {
  std::uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool kept = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    if (b == byte) return kept ? static_cast<std::uint32_t>(b) : next;
    if (!kept) ++next;
  }
  return 0;
}

TEST_F(Vocabularies, ByteLevelPiecesDecodeToTheirBytesForEveryByte) {
  // One piece per byte, ids 0..255, plus a word, "é" split over two pieces and an added token.
  std::string vocab = "{";
  for (int b = 0; b < 256; ++b) {
    std::string piece = utf8(gpt2_code_point(b));
    if (piece == "\"" || piece == "\\") piece = "\\" + piece;
    vocab += "\"" + piece + "\": " + std::to_string(b) + ", ";
  }
  vocab += "\"\\u0120world\": 256}";
  const std::string json = R"({"model": {"type": "BPE", "vocab": )" + vocab +
                           R"(}, "added_tokens": [{"id": 257, "content": "<|endoftext|>"}],)" +
                           R"( "decoder": {"type": "ByteLevel"}})";
  const Vocabulary v = Vocabulary::load(write("tokenizer.json", json));
  ASSERT_EQ(v.encoding(), PieceEncoding::byte_level);
  ASSERT_EQ(v.size(), 258u);
  for (int b = 0; b < 256; ++b)
    ASSERT_EQ(v.token_text(b), std::string(1, static_cast<char>(b))) << "byte " << b;
  EXPECT_EQ(v.token_text(256), " world");
  EXPECT_EQ(v.token_text(257), "<|endoftext|>");
  const std::int32_t e_acute[] = {0xC3, 0xA9, -1, 256};
  EXPECT_EQ(v.decode(e_acute), "\xC3\xA9 world");
  EXPECT_THROW(v.token_text(258), Error);
  EXPECT_THROW(v.piece(-2), Error);
}

TEST_F(Vocabularies, SentencePieceWordPieceAndUnigram) {
  const Vocabulary sp = Vocabulary::load(write("sp.json", R"({"model": {"type": "BPE",
      "byte_fallback": true, "vocab": {"<unk>": 0, "<0x0A>": 1, "\u2581the": 2, "s": 3,
      "<0xE2>": 4}}, "added_tokens": [{"id": 5, "content": "<s>"}]})"));
  EXPECT_EQ(sp.encoding(), PieceEncoding::sentencepiece);
  const std::int32_t ids[] = {2, 3, 1, 5, 4};
  EXPECT_EQ(sp.decode(ids), " thes\n<s>\xE2");
  EXPECT_EQ(printable(sp.decode(ids)), " thes\\n<s>\\xE2");

  const Vocabulary wp = Vocabulary::load(write("wp.json", R"({"model": {"type": "WordPiece",
      "vocab": {"[CLS]": 0, "play": 1, "##ing": 2}}, "decoder": {"type": "WordPiece"}})"));
  EXPECT_EQ(wp.encoding(), PieceEncoding::wordpiece);
  const std::int32_t playing[] = {1, 2};
  EXPECT_EQ(wp.decode(playing), " playing");

  const Vocabulary uni = Vocabulary::load(write("uni.json", R"({"model": {"type": "Unigram",
      "vocab": [["<pad>", 0.0], ["\u2581a", -1.5], ["b", -2.0]]}})"));
  EXPECT_EQ(uni.encoding(), PieceEncoding::sentencepiece);
  EXPECT_EQ(uni.size(), 3u);
  EXPECT_EQ(uni.token_text(1), " a");
}

TEST_F(Vocabularies, Llama2cBinaryAndTextFiles) {
  std::mt19937 rng(std::random_device{}());
  std::string bytes;
  const auto put_int = [&](std::int32_t v) { bytes.append(reinterpret_cast<const char*>(&v), 4); };
  const auto put_float = [&](float v) { bytes.append(reinterpret_cast<const char*>(&v), 4); };
  std::vector<std::string> pieces = {"<unk>", "<0x0A>", " the", ""};
  for (int i = 0; i < 20; ++i)
    pieces.push_back(std::string(1 + rng() % 6, static_cast<char>('a' + rng() % 26)));
  put_int(8);
  for (const std::string& p : pieces) {
    put_float(-static_cast<float>(rng() % 100));
    put_int(static_cast<std::int32_t>(p.size()));
    bytes += p;
  }
  const Vocabulary v = Vocabulary::load(write("tokenizer.bin", bytes));
  ASSERT_EQ(v.size(), pieces.size());
  for (std::size_t i = 0; i < pieces.size(); ++i)
    EXPECT_EQ(v.piece(static_cast<int>(i)), pieces[i]);
  EXPECT_EQ(v.token_text(1), "\n");
  // Cut inside the last token's bytes, then inside a length.
  expect_refused(write("cut.bin", bytes.substr(0, bytes.size() - 1)),
                 "token " + std::to_string(pieces.size() - 1));
  expect_refused(write("cut-length.bin", bytes.substr(0, 4 + 4 + 2)), "token 0: truncated");
  std::string huge = bytes;
  const std::int32_t too_long = 9;
  std::memcpy(huge.data() + 8, &too_long, 4);  // token 0's length above max_token_length
  expect_refused(write("long.bin", huge), "token 0: length 9");

  const Vocabulary lines = Vocabulary::load(write("vocab.txt", "a\r\nbb\n\nc\n"));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines.piece(1), "bb");
  EXPECT_EQ(lines.piece(2), "");
}

TEST_F(Vocabularies, MalformedTokenizerJsonIsRefusedByName) {
  expect_refused(write("a.json", "{\"model\": {}}"), "no model.vocab");
  expect_refused(write("b.json", "{\"model\": {\"vocab\": {\"x\": 1, \"y\": 1}}}"),
                 "id 1 given to both");
  expect_refused(write("c.json", "{\"model\": {\"vocab\": {\"x\": -3}}}"), "id -3 outside");
  expect_refused(write("d.json", "{\"model\": {\"vocab\": {\"x\": 99999999}}}"),
                 "id 99999999 outside");
  expect_refused(write("e.json", "{\"model\": {\"vocab\": {\"x\": \"one\"}}}"),
                 "the id \"one\" is not an integer");
  expect_refused(write("e2.json", "{\"model\": {\"vocab\": {\"x\": -5555555555555555555555555}}}"),
                 "is not an integer");
  expect_refused(write("e3.json", "{\"model\": {\"vocab\": {\"x\": 18446744073709551615}}}"),
                 "outside [0, 16777216)");
  expect_refused(write("e4.json", "{\"model\": {\"vocab\": [[1, 0.5]]}}"),
                 "malformed vocabulary entry");
  expect_refused(
      write("e5.json", "{\"model\": {\"vocab\": {\"x\": 0}, \"byte_fallback\": \"yes\"}}"),
      "model.byte_fallback is \"yes\", not true or false");
  expect_refused(write("f.json", "{\"model\": "), "invalid JSON");
  expect_refused(write("g.bin", "ab"), "too short");
  expect_refused(dir_ / "missing.json", "cannot open");
}

TEST(Printable, EscapesControlsAndInvalidUtf8) {
  EXPECT_EQ(printable("a\nb\tc\\"), "a\\nb\\tc\\\\");
  EXPECT_EQ(printable("caf\xC3\xA9 \xE2\x96\x81"), "caf\xC3\xA9 \xE2\x96\x81");
  EXPECT_EQ(printable("\xFF\xC3"), "\\xFF\\xC3");
  EXPECT_EQ(printable(std::string("\x07\x7F", 2)), "\\x07\\x7F");
  EXPECT_EQ(printable("\xC0\xAF"), "\\xC0\\xAF");           // overlong '/'
  EXPECT_EQ(printable("\xED\xA0\x80"), "\\xED\\xA0\\x80");  // a surrogate
}

}  // namespace
}  // namespace crosscoder
