#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend_params.hpp"
#include "crosscoder/crosscoder.hpp"

namespace crosscoder {
namespace {

TEST(BackendRegistry, ListsCpuAsUsableAndCudaWithAReason) {
  const auto infos = available_backends();
  ASSERT_EQ(infos.size(), 2u);
  EXPECT_EQ(infos[0].kind, BackendKind::cpu);
  EXPECT_TRUE(infos[0].built);
  EXPECT_TRUE(infos[0].usable);
  EXPECT_NE(infos[0].device.find("CPU"), std::string::npos);
  EXPECT_EQ(infos[1].kind, BackendKind::cuda);
  EXPECT_EQ(infos[1].built, built_with_cuda());
  if (!infos[1].usable) {
    EXPECT_FALSE(infos[1].reason.empty());
  }
  if (!built_with_cuda()) {
    EXPECT_NE(infos[1].reason.find("built without CUDA"), std::string::npos);
  }
}

TEST(BackendRegistry, ParsesKindsAndRejectsUnknownNames) {
  EXPECT_EQ(parse_backend_kind("cpu"), BackendKind::cpu);
  EXPECT_EQ(parse_backend_kind("cuda"), BackendKind::cuda);
  try {
    parse_backend_kind("tpu");
    FAIL() << "expected an Error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("tpu"), std::string::npos);
  }
}

TEST(BackendRegistry, BestBackendNeverThrowsAndMatchesUsability) {
  std::vector<std::string> lines;
  set_log_sink([&](LogLevel, std::string_view line) { lines.emplace_back(line); });
  const auto backend = best_backend();
  const std::size_t after_first = lines.size();  // 0 when an earlier test already chose
  const auto again = best_backend();
  set_log_sink({});
  ASSERT_TRUE(backend);
  ASSERT_TRUE(again);
  EXPECT_LE(after_first, 1u);
  EXPECT_EQ(lines.size(), after_first) << "best_backend() logs its choice once per process";
  const bool cuda_usable = available_backends()[1].usable;
  EXPECT_EQ(backend->kind(), cuda_usable ? BackendKind::cuda : BackendKind::cpu);
}

TEST(CudaAvailability, UnusableCudaThrowsItsReason) {
  const BackendInfo cuda = available_backends()[1];
  if (cuda.usable) GTEST_SKIP() << "a CUDA device is present: " << cuda.device;
  try {
    make_backend(BackendKind::cuda);
    FAIL() << "expected an Error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(cuda.reason), std::string::npos) << error.what();
  }
}

TEST(CudaAvailability, ReportsWhetherCudaTestsRun) {
  const BackendInfo cuda = available_backends()[1];
  if (!cuda.usable) GTEST_SKIP() << "CUDA backend tests skipped: " << cuda.reason;
  EXPECT_TRUE(cuda.built);
}

class BackendMemory : public ::testing::TestWithParam<BackendKind> {};

TEST_P(BackendMemory, RoundTripsRandomDataThroughDeviceMemory) {
  auto backend = make_backend(GetParam());
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  std::vector<float> host(10007);
  for (float& value : host) value = normal(rng);

  DeviceArray<float> first(backend, std::span<const float>(host));
  DeviceArray<float> second(backend, host.size());
  backend->copy_on_device(second.data(), first.data(), host.size() * sizeof(float));
  EXPECT_EQ(second.download(), host);

  second.zero();
  for (float value : second.download()) ASSERT_EQ(value, 0.0f);

  DeviceArray<float> moved = std::move(first);
  EXPECT_EQ(first.size(), 0u);
  EXPECT_EQ(moved.download(), host);
}

TEST_P(BackendMemory, UploadOfTheWrongSizeIsAnError) {
  auto backend = make_backend(GetParam());
  DeviceArray<int> array(backend, 4);
  std::vector<int> three(3, 1);
  EXPECT_THROW(array.upload(three), Error);
}

TEST_P(BackendMemory, AbsurdAllocationIsAnErrorNotACrash) {
  auto backend = make_backend(GetParam());
  try {
    DeviceArray<float> huge(backend, std::size_t{1} << 60);
    FAIL() << "allocating 4 EiB should fail";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("bytes"), std::string::npos) << error.what();
  }
}

CROSSCODER_INSTANTIATE_FOR_BACKENDS(BackendMemory);

}  // namespace
}  // namespace crosscoder
