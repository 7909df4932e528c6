// The C++ half of tests/python/test_convert.py: our library's encodings of raw rows, so that
// the test can compare them with a converted peer checkpoint's own forward pass.
//
//   encode_rows MODEL.safetensors ROWS.npy OUT.npy [--resave PATH]
//       Loads MODEL with Crosscoder::load on the CPU backend, encodes ROWS (float32
//       [rows, M, d], raw activations: the model's normaliser applies) in one call, as at
//       inference, and writes the dense codes [rows, F] to OUT. With --resave, also writes the
//       loaded model to PATH with Crosscoder::save, so that the test holds a checkpoint our
//       library wrote.
// Exit status: 0 on success, 1 with "error: ..." on stderr when the library throws, 2 on usage.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "crosscoder/backend.hpp"
#include "crosscoder/error.hpp"
#include "crosscoder/io/npy.hpp"
#include "crosscoder/model.hpp"

namespace {

namespace fs = std::filesystem;
namespace io = crosscoder::io;

int encode_rows(const fs::path& model_path, const fs::path& rows_path, const fs::path& out_path,
                const fs::path& resave) {
  const crosscoder::Crosscoder model = crosscoder::Crosscoder::load(
      model_path, crosscoder::make_backend(crosscoder::BackendKind::cpu));
  const crosscoder::CrosscoderConfig& config = model.config();
  const io::NpyFile rows_file = io::NpyFile::open(rows_path);
  const auto& shape = rows_file.shape();
  if (shape.size() != 3 || shape[1] != static_cast<std::size_t>(config.sources) ||
      shape[2] != static_cast<std::size_t>(config.width)) {
    throw crosscoder::Error(rows_path.string() + ": expected shape [rows, " +
                            std::to_string(config.sources) + ", " + std::to_string(config.width) +
                            "]");
  }
  const auto rows = static_cast<std::int64_t>(rows_file.rows());
  std::vector<float> x(rows_file.rows() * rows_file.row_width());
  rows_file.read_rows_float(0, rows_file.rows(), x.data());
  // One call: BatchTopK without a learnt threshold selects over exactly these rows.
  const crosscoder::HostSparseCodes codes = model.encode(x, rows);
  const std::int64_t F = config.latents;
  std::vector<float> dense(static_cast<std::size_t>(rows * F), 0.0f);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t i = codes.row_ptr[r]; i < codes.row_ptr[r + 1]; ++i) {
      dense[static_cast<std::size_t>(r * F + codes.latent[i])] = codes.value[i];
    }
  }
  io::write_npy(out_path, {static_cast<std::size_t>(rows), static_cast<std::size_t>(F)}, dense);
  if (!resave.empty()) model.save(resave);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  fs::path resave;
  std::vector<std::string_view> positional;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--resave" && i + 1 < args.size()) {
      resave = args[++i];
    } else {
      positional.push_back(args[i]);
    }
  }
  if (positional.size() != 3) {
    std::fprintf(stderr, "usage: encode_rows MODEL.safetensors ROWS.npy OUT.npy [--resave PATH]\n");
    return 2;
  }
  try {
    return encode_rows(positional[0], positional[1], positional[2], resave);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
