// Exports of steering directions: the GGUF control vector parsed back by an independent reader
// written from the GGUF specification (version 3), and the safetensors export.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <variant>

#include "crosscoder/crosscoder.hpp"
#include "crosscoder/io/safetensors.hpp"
#include "reference_crosscoder.hpp"

namespace crosscoder {
namespace {

namespace fs = std::filesystem;

// A minimal GGUF v3 reader: strings and u32 metadata, F32 tensors.
struct GgufFile {
  std::uint32_t version = 0;
  std::map<std::string, std::variant<std::string, std::uint32_t>> metadata;
  struct Tensor {
    std::vector<std::uint64_t> dims;
    std::uint32_t type = 0;
    std::uint64_t offset = 0;
    std::vector<float> values;
  };
  std::map<std::string, Tensor> tensors;
  std::uint64_t data_start = 0;
};

GgufFile read_gguf(const fs::path& path) {
  std::ifstream stream(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(stream)),
                          std::istreambuf_iterator<char>());
  std::size_t at = 0;
  const auto take = [&](std::size_t n) {
    if (at + n > bytes.size()) throw std::runtime_error("truncated GGUF");
    const char* p = bytes.data() + at;
    at += n;
    return p;
  };
  const auto u32 = [&] {
    std::uint32_t v;
    std::memcpy(&v, take(4), 4);
    return v;
  };
  const auto u64 = [&] {
    std::uint64_t v;
    std::memcpy(&v, take(8), 8);
    return v;
  };
  const auto str = [&] {
    const std::uint64_t n = u64();
    return std::string(take(n), n);
  };
  if (std::string(take(4), 4) != "GGUF") throw std::runtime_error("bad magic");
  GgufFile file;
  file.version = u32();
  const std::uint64_t tensors = u64(), entries = u64();
  std::uint64_t alignment = 32;
  for (std::uint64_t i = 0; i < entries; ++i) {
    const std::string key = str();
    const std::uint32_t type = u32();
    if (type == 8) {
      file.metadata[key] = str();
    } else if (type == 4) {
      file.metadata[key] = u32();
      if (key == "general.alignment") alignment = std::get<std::uint32_t>(file.metadata[key]);
    } else {
      throw std::runtime_error("unexpected metadata type " + std::to_string(type));
    }
  }
  std::vector<std::string> names;
  for (std::uint64_t i = 0; i < tensors; ++i) {
    const std::string name = str();
    GgufFile::Tensor tensor;
    const std::uint32_t dims = u32();
    for (std::uint32_t d = 0; d < dims; ++d) tensor.dims.push_back(u64());
    tensor.type = u32();
    tensor.offset = u64();
    file.tensors[name] = tensor;
    names.push_back(name);
  }
  file.data_start = (at + alignment - 1) / alignment * alignment;
  for (const std::string& name : names) {
    GgufFile::Tensor& tensor = file.tensors[name];
    if (tensor.offset % alignment != 0) throw std::runtime_error("unaligned tensor " + name);
    std::uint64_t n = 1;
    for (const std::uint64_t d : tensor.dims) n *= d;
    at = file.data_start + tensor.offset;
    tensor.values.resize(n);
    std::memcpy(tensor.values.data(), take(4 * n), 4 * n);
  }
  return file;
}

class SteeringExport : public ::testing::Test {
 protected:
  SteeringExport()
      : rng_(std::random_device{}()),
        model_(
            [] {
              CrosscoderConfig c;
              c.sources = 2;
              c.width = 12;
              c.latents = 30;
              c.k = 3;
              c.activation = Activation::topk;
              return c;
            }(),
            make_backend(BackendKind::cpu), rng_()) {
    const std::vector<float> x = testing::random_activations(64, 2, 12, rng_);
    model_.fit_normaliser(x, 64);
    dir_ = fs::temp_directory_path() / ("crosscoder-export-" + std::to_string(rng_()));
    fs::create_directories(dir_);
  }
  ~SteeringExport() override { fs::remove_all(dir_); }

  // Σ scale · W_dec[latent, source] / s_source in float64.
  std::vector<double> expected(const std::vector<SteeringDirection>& directions) {
    const auto p = testing::ReferenceParameters::from(model_);
    std::vector<double> sum(12, 0.0);
    for (const auto& d : directions)
      for (int i = 0; i < 12; ++i)
        sum[i] +=
            d.scale * p.decoder[d.latent * 24 + d.source * 12 + i] / p.scale[d.source * 12 + i];
    return sum;
  }

  std::mt19937_64 rng_;
  Crosscoder model_;
  fs::path dir_;
};

TEST_F(SteeringExport, ControlVectorIsValidGgufWithTheSummedDirection) {
  const std::vector<SteeringDirection> directions = {{7, 1, 32.0}, {12, 1, -4.5}};
  write_control_vector(dir_ / "cv.gguf", model_, directions, {13, "qwen2"});
  const GgufFile file = read_gguf(dir_ / "cv.gguf");
  EXPECT_EQ(file.version, 3u);
  EXPECT_EQ(std::get<std::string>(file.metadata.at("general.architecture")), "controlvector");
  EXPECT_EQ(std::get<std::string>(file.metadata.at("controlvector.model_hint")), "qwen2");
  // the number of direction tensors, as llama.cpp's cvector-generator writes it
  EXPECT_EQ(std::get<std::uint32_t>(file.metadata.at("controlvector.layer_count")), 1u);
  EXPECT_EQ(std::get<std::string>(file.metadata.at("crosscoder.latents")), "[7,12]");
  ASSERT_EQ(file.tensors.size(), 1u);
  const auto& tensor = file.tensors.at("direction.13");
  EXPECT_EQ(tensor.dims, (std::vector<std::uint64_t>{12}));
  EXPECT_EQ(tensor.type, 0u);  // GGML_TYPE_F32
  EXPECT_EQ(file.data_start % 32, 0u);
  const std::vector<double> want = expected(directions);
  for (int i = 0; i < 12; ++i)
    EXPECT_NEAR(tensor.values[i], want[i], 1e-4 * (1 + std::abs(want[i])));
  EXPECT_EQ(fs::file_size(dir_ / "cv.gguf") % 32, 0u);
}

TEST_F(SteeringExport, SafetensorsExportHoldsEachDirectionAndTheSum) {
  const std::vector<SteeringDirection> directions = {{3, 0, 2.0}, {3, 1, 1.0}};
  write_direction_safetensors(dir_ / "d.safetensors", model_, directions, 6, "model.safetensors");
  const auto file = io::SafetensorsFile::open(dir_ / "d.safetensors");
  EXPECT_EQ(file.metadata().at("latents"), "[3,3]");
  EXPECT_EQ(file.metadata().at("sources"), "[0,1]");
  EXPECT_EQ(file.metadata().at("layer"), "6");
  const std::vector<float> sum = file.read_float("direction", {12});
  const std::vector<double> want = expected(directions);
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(sum[i], want[i], 1e-4 * (1 + std::abs(want[i])));
  const std::vector<float> one = file.read_float("latent_3.source_1", {12});
  const std::vector<double> unscaled = expected({{3, 1, 1.0}});
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(one[i], unscaled[i], 1e-5 * (1 + std::abs(unscaled[i])));
}

TEST_F(SteeringExport, BadRequestsAreRefusedAndNothingIsWritten) {
  const auto message = [&](const std::vector<SteeringDirection>& directions, int layer) {
    try {
      write_control_vector(dir_ / "bad.gguf", model_, directions, {layer, "llama"});
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{30, 0, 1.0}}, 3).find("--latent 30 is out of range [0, 30)"),
            std::string::npos);
  EXPECT_NE(message({{1, 2, 1.0}}, 3).find("--source 2 is out of range"), std::string::npos);
  EXPECT_NE(message({{1, 0, std::nan("")}}, 3).find("not finite"), std::string::npos);
  EXPECT_NE(message({{1, 0, 1.0}}, 0).find("block 0 cannot be steered"), std::string::npos);
  EXPECT_NE(message({}, 3).find("no --latent"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ / "bad.gguf"));
}

}  // namespace
}  // namespace crosscoder
