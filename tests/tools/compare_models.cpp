// Compares two saved crosscoders parameter by parameter:
//   compare_models A.safetensors B.safetensors TOLERANCE
// Prints the largest difference of each parameter relative to 1 + the largest magnitude in A,
// and fails when one exceeds TOLERANCE or the configurations differ.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "crosscoder/crosscoder.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: compare_models A.safetensors B.safetensors TOLERANCE\n");
    return 2;
  }
  try {
    using namespace crosscoder;
    const auto backend = make_backend(BackendKind::cpu);
    const Crosscoder a = Crosscoder::load(argv[1], backend);
    const Crosscoder b = Crosscoder::load(argv[2], backend);
    const double tolerance = std::strtod(argv[3], nullptr);
    if (a.config().to_json() != b.config().to_json()) {
      std::fprintf(stderr, "the configurations differ:\n%s\n%s\n", a.config().to_json().c_str(),
                   b.config().to_json().c_str());
      return 1;
    }
    const CrosscoderParameters& p = a.parameters();
    const CrosscoderParameters& q = b.parameters();
    const std::vector<
        std::pair<const char*, std::pair<const DeviceArray<float>*, const DeviceArray<float>*>>>
        pairs = {{"encoder", {&p.encoder_weight, &q.encoder_weight}},
                 {"encoder bias", {&p.encoder_bias, &q.encoder_bias}},
                 {"decoder", {&p.decoder_weight, &q.decoder_weight}},
                 {"decoder bias", {&p.decoder_bias, &q.decoder_bias}},
                 {"threshold", {&p.threshold, &q.threshold}}};
    bool ok = true;
    for (const auto& [name, arrays] : pairs) {
      const std::vector<float> x = arrays.first->download(), y = arrays.second->download();
      if (x.size() != y.size()) {
        std::printf("%s: %zu vs %zu values\n", name, x.size(), y.size());
        ok = false;
        continue;
      }
      double worst = 0.0, scale = 0.0;
      for (std::size_t i = 0; i < x.size(); ++i) {
        worst = std::max(worst, std::abs(static_cast<double>(x[i]) - y[i]));
        scale = std::max(scale, static_cast<double>(std::abs(x[i])));
      }
      const double relative = worst / (1.0 + scale);
      std::printf("%s: largest difference %.3g (relative %.3g)\n", name, worst, relative);
      ok = ok && relative <= tolerance;
    }
    const double threshold_difference = std::abs(a.batch_threshold() - b.batch_threshold());
    std::printf("BatchTopK threshold: %g vs %g\n", static_cast<double>(a.batch_threshold()),
                static_cast<double>(b.batch_threshold()));
    ok = ok && threshold_difference <= tolerance * (1.0 + std::abs(a.batch_threshold()));
    std::printf(ok ? "compare_models: equal within %g\n" : "compare_models: DIFFERENT (> %g)\n",
                tolerance);
    return ok ? 0 : 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "compare_models: %s\n", error.what());
    return 1;
  }
}
