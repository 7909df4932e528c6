#pragma once
// The model's tensors and metadata as a checkpoint stores them, shared by Crosscoder::save and
// the trainer's checkpoints. Internal.

#include "crosscoder/io/safetensors.hpp"
#include "crosscoder/model.hpp"

namespace crosscoder::detail {

/// Adds the parameters (in dictionary_learning's layouts), k, the threshold, the normaliser and
/// the format, version and config metadata to `writer`.
void add_model_tensors(const Crosscoder& model, io::SafetensorsWriter& writer);

}  // namespace crosscoder::detail
