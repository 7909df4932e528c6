#pragma once
/// @file capture.hpp
/// Capturing activations from an inference loop into a dataset: the counterpart of steering.

#include "crosscoder/activation_writer.hpp"
#include "crosscoder/hook.hpp"

namespace crosscoder {

/// A hook that appends the rows of `layer` chosen by `positions` to `writer` as source `source`
/// (e.g. `last_prompt` for one row per prompt, as the tool-use study captures). The writer must
/// outlive the hook. Rows of other layers are ignored.
/// @throws Error when the source is not one of the writer's; the hook itself throws Error
///         when the rows' width differs from the writer's.
ActivationHook capture_hook(ActivationWriter& writer, int source, int layer,
                            PositionFilter positions = {});

}  // namespace crosscoder
