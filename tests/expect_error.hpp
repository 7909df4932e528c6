#pragma once
// The tests' one way to say "this is refused, and the message says why".

#include <gtest/gtest.h>

#include <string>

#include "crosscoder/error.hpp"

namespace crosscoder::testing {

/// Runs `action`, which must throw crosscoder::Error with `words` in its message.
template <typename Action>
void expect_error(Action action, const std::string& words) {
  try {
    action();
    ADD_FAILURE() << "accepted; expected an error with '" << words << "'";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(words), std::string::npos) << error.what();
  }
}

}  // namespace crosscoder::testing
