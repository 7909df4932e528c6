// The checked-in corpus of hand-made malformed files (tests/data/malformed, made by its
// make_malformed.py): each must be refused with a crosscoder::Error whose message names the file
// and says what is wrong (EXPECTED.tsv: file, parser, expected substring of the message).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "crosscoder/dataset.hpp"
#include "crosscoder/dataset_manifest.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/io/safetensors.hpp"

namespace crosscoder {
namespace {

// The checked-in corpus; the environment may point elsewhere (a test program carried to a GPU
// host, scripts/gpu_check.sh).
const std::filesystem::path kDirectory = [] {
  const char* override_directory = std::getenv("CROSSCODER_MALFORMED_DIR");
  return std::filesystem::path(override_directory ? override_directory : CROSSCODER_MALFORMED_DIR);
}();

std::string error_opening(const std::string& parser, const std::filesystem::path& path) {
  try {
    if (parser == "npy") {
      (void)io::NpyFile::open(path);
    } else if (parser == "safetensors") {
      (void)io::SafetensorsFile::open(path);
    } else if (parser == "manifest") {
      (void)read_manifest(path);
    } else if (parser == "dataset") {
      (void)ActivationDataset::open_manifest(path);
    } else {
      return "unknown parser " + parser;
    }
  } catch (const Error& error) {
    return error.what();
  }
  return "no error";
}

// The message without the file's own path, so that the expected text cannot match the name.
std::string without(std::string message, const std::string& path) {
  for (auto at = message.find(path); at != std::string::npos; at = message.find(path, at))
    message.erase(at, path.size());
  return message;
}

TEST(MalformedFiles, EachIsRefusedWithAnErrorNamingTheFileAndTheProblem) {
  std::ifstream table(kDirectory / "EXPECTED.tsv");
  ASSERT_TRUE(table) << "missing " << (kDirectory / "EXPECTED.tsv");
  std::string line;
  std::set<std::string> parsers;
  int cases = 0;
  while (std::getline(table, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string file, parser, expected;
    std::getline(fields, file, '\t');
    std::getline(fields, parser, '\t');
    std::getline(fields, expected);
    ASSERT_FALSE(expected.empty()) << "EXPECTED.tsv: bad line: " << line;
    SCOPED_TRACE(file);
    const std::filesystem::path path = kDirectory / file;
    ASSERT_TRUE(std::filesystem::is_regular_file(path)) << path;
    const std::string message = error_opening(parser, path);
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(without(message, path.string()).find(expected), std::string::npos)
        << "expected \"" << expected << "\" in: " << message;
    parsers.insert(parser);
    ++cases;
  }
  EXPECT_GE(cases, 50);
  EXPECT_EQ(parsers, (std::set<std::string>{"dataset", "manifest", "npy", "safetensors"}));
}

}  // namespace
}  // namespace crosscoder
