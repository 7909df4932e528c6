// libFuzzer target: the vocabulary readers (tokenizer.json, llama2.c's tokenizer.bin) and the
// text of every token they give. A crosscoder::Error is the expected answer to a bad file; a
// crash, a sanitizer report, another exception type or a hang is a finding.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "crosscoder/error.hpp"
#include "crosscoder/vocabulary.hpp"
#include "fuzz_input_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = crosscoder::fuzz::write_input(data, size, ".json");
  try {
    const crosscoder::Vocabulary vocabulary = crosscoder::Vocabulary::load(path);
    const auto count = static_cast<std::int32_t>(std::min<std::size_t>(vocabulary.size(), 4096));
    std::vector<std::int32_t> ids;
    for (std::int32_t id = 0; id < count; ++id) {
      (void)crosscoder::printable(vocabulary.token_text(id));
      ids.push_back(id);
    }
    ids.push_back(-1);  // "no token" in a window
    (void)crosscoder::printable(vocabulary.decode(ids));
  } catch (const crosscoder::Error&) {
  }
  return 0;
}
