#pragma once
/// @file hook.hpp
/// The contract between an inference engine and this library: the hook an engine calls with a
/// layer's rows, what it says about each row, and which rows an action applies to. Capture
/// (capture.hpp) and steering (steering.hpp) both speak it; an engine needs only this header.

#include <cstdint>
#include <functional>
#include <vector>

namespace crosscoder {

/// What the engine knows about each row it hands to a hook.
struct RowInfo {
  std::int64_t position = 0;  ///< token position in the sequence
  bool prompt = true;         ///< part of the prompt (prefill), not generated
  bool last_prompt = false;   ///< the prompt's last token
};

/// The hook type an engine calls at a layer: rows [n_rows, d], modified in place.
using ActivationHook =
    std::function<void(int layer, float* rows, int n_rows, int d, const RowInfo* info)>;

enum class PositionMode { all, last_prompt, prompt, generated, listed };

/// Which rows a hook acts on (a steering intervention, a capture).
struct PositionFilter {
  PositionMode mode = PositionMode::all;
  std::vector<std::int64_t> positions;  ///< for PositionMode::listed
  /// Apply in one call only (e.g. the prefill), then never again until Steerer::reset().
  bool once = false;
};

/// Whether `info` is among the rows `filter` selects (ignoring `once`).
bool position_selected(const PositionFilter& filter, const RowInfo& info);

}  // namespace crosscoder
