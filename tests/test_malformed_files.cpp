// The checked-in corpus of hand-made malformed files (tests/data/malformed, made by
// tests/fuzz/make_corpus.py): each must be refused with a crosscoder::Error whose message names
// the file and says what is wrong (EXPECTED.tsv).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "crosscoder/dataset.hpp"
#include "crosscoder/dataset_manifest.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/io/safetensors.hpp"

namespace crosscoder {
namespace {

const std::filesystem::path kDirectory = CROSSCODER_MALFORMED_DIR;

std::string error_opening(const std::string& parser, const std::filesystem::path& path) {
  try {
    if (parser == "npy") {
      (void)io::NpyFile::open(path);
    } else if (parser == "safetensors") {
      (void)io::SafetensorsFile::open(path);
    } else if (parser == "manifest") {
      (void)read_manifest(path);
    } else if (parser == "dataset") {
      (void)ActivationDataset::open({path});
    } else {
      return "unknown parser " + parser;
    }
  } catch (const Error& error) {
    return error.what();
  }
  return "no error";
}

TEST(MalformedFiles, EachIsRefusedWithAnErrorNamingTheFileAndTheProblem) {
  std::ifstream table(kDirectory / "EXPECTED.tsv");
  ASSERT_TRUE(table) << "missing " << (kDirectory / "EXPECTED.tsv");
  std::string line;
  int cases = 0;
  while (std::getline(table, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string file, parser, expected;
    std::getline(fields, file, '\t');
    std::getline(fields, parser, '\t');
    std::getline(fields, expected);
    const std::string message = error_opening(parser, kDirectory / file);
    EXPECT_NE(message.find(file), std::string::npos) << file << ": " << message;
    EXPECT_NE(message.find(expected), std::string::npos)
        << file << ": expected \"" << expected << "\" in: " << message;
    ++cases;
  }
  EXPECT_GE(cases, 25);
}

}  // namespace
}  // namespace crosscoder
