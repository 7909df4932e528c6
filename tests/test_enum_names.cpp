// Every enum the library names: each value round-trips through to_string and its parser, the
// aliases parse, unknown text is refused listing the names, and a value outside the enum is
// named "unknown" rather than crashing.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "crosscoder/crosscoder.hpp"

namespace crosscoder {
namespace {

template <typename Enum, typename Parse>
void expect_round_trip(const std::vector<Enum>& values, Parse parse, const std::string& unknown,
                       const std::string& expected_list) {
  for (Enum value : values) EXPECT_EQ(parse(to_string(value)), value) << to_string(value);
  EXPECT_EQ(to_string(static_cast<Enum>(99)), "unknown");
  try {
    parse("no-such-name");
    FAIL() << unknown << " accepted an unknown name";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()),
              "unknown " + unknown + " \"no-such-name\" (expected " + expected_list + ")");
  }
}

TEST(EnumNames, RoundTripAndRefuseUnknownText) {
  expect_round_trip<BackendKind>({BackendKind::cpu, BackendKind::cuda}, parse_backend_kind,
                                 "backend", "cpu or cuda");
  expect_round_trip<MatmulPrecision>(
      {MatmulPrecision::float32, MatmulPrecision::tf32, MatmulPrecision::bfloat16},
      parse_matmul_precision, "matmul precision", "float32, tf32 or bf16");
  EXPECT_EQ(parse_matmul_precision("fp32"), MatmulPrecision::float32);
  EXPECT_EQ(parse_matmul_precision("bfloat16"), MatmulPrecision::bfloat16);
  EXPECT_EQ(to_string(MatmulPrecision::bfloat16), "bf16");
  expect_round_trip<Activation>(
      {Activation::relu, Activation::topk, Activation::batchtopk, Activation::jumprelu},
      parse_activation, "activation", "relu, topk, batchtopk or jumprelu");
  expect_round_trip<Normalisation>({Normalisation::none, Normalisation::scalar,
                                    Normalisation::mean_and_scale, Normalisation::per_channel},
                                   parse_normalisation, "normalisation",
                                   "none, scalar, mean_and_scale or per_channel");
  expect_round_trip<InterventionKind>({InterventionKind::add, InterventionKind::scale,
                                       InterventionKind::clamp, InterventionKind::project_out},
                                      parse_intervention_kind, "intervention",
                                      "add, scale, clamp or project_out");
  const auto parse_dtype = [](std::string_view name) { return parse_stored_type(name, "x.dtype"); };
  for (StoredType type :
       {StoredType::F32, StoredType::F16, StoredType::BF16, StoredType::I8, StoredType::I32})
    EXPECT_EQ(parse_dtype(to_string(type)), type);
  try {
    parse_dtype("f64");
    FAIL();
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()),
              "x.dtype: unknown dtype \"f64\" (expected f32, f16, bf16, int8 or int32)");
  }
}

}  // namespace
}  // namespace crosscoder
