#pragma once
/// @file steering_export.hpp
/// Exporting steering directions: llama.cpp control vectors (GGUF) and safetensors
/// (docs/steering.md, "Exports").

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "crosscoder/model.hpp"

namespace crosscoder {

/// scale · d_{latent, source}, in raw activation units.
struct SteeringDirection {
  int latent = 0;
  int source = 0;
  double scale = 1.0;
};

/// Σ scale·d_{latent,source} over `directions` [d], raw units (the normaliser undone).
/// @throws Error naming the latent, source or scale that is out of range or not finite, or an
///         empty list.
std::vector<float> summed_direction(const Crosscoder& model,
                                    const std::vector<SteeringDirection>& directions);

struct ControlVectorOptions {
  /// llama.cpp block index N whose output the direction is added to (≥ 1: llama.cpp never
  /// steers block 0). A crosscoder trained on Hugging Face hidden_states[L] needs N = L − 1.
  int layer = 1;
  std::string model_hint = "llama";  ///< controlvector.model_hint
};

/// Writes a llama.cpp control vector: GGUF version 3 with general.architecture =
/// "controlvector", controlvector.model_hint, controlvector.layer_count, crosscoder.* keys
/// describing the origin, and one F32 tensor `direction.<N>` of width d; data aligned to 32
/// bytes. A control vector is a constant add at every position, so it reproduces only the
/// `add` intervention. Written atomically.
/// @throws Error for layer < 1, a bad direction list (see summed_direction) or an I/O failure.
void write_control_vector(const std::filesystem::path& path, const Crosscoder& model,
                          const std::vector<SteeringDirection>& directions,
                          const ControlVectorOptions& options);

/// Writes the directions as safetensors: `latent_<j>.source_<m>` (F32 [d], raw units, unscaled)
/// for each, plus `direction` (their scaled sum), with metadata naming the crosscoder file,
/// latents, sources, scales and layer (JSON strings). Written atomically.
void write_direction_safetensors(const std::filesystem::path& path, const Crosscoder& model,
                                 const std::vector<SteeringDirection>& directions, int layer,
                                 const std::string& crosscoder_file);

}  // namespace crosscoder
