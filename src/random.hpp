#pragma once
// A portable random source: std::mt19937_64 with hand-written distributions, because the
// standard library's distributions differ between implementations and runs must reproduce.

#include <cmath>
#include <cstdint>
#include <random>

namespace crosscoder::detail {

class Random {
 public:
  explicit Random(std::uint64_t seed) : engine_(seed) {}

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

  /// Standard normal (Box–Muller; the spare value is kept).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u = 0.0;
    while (u <= 0.0) u = uniform();
    const double v = uniform();
    const double radius = std::sqrt(-2.0 * std::log(u));
    spare_ = radius * std::sin(2.0 * M_PI * v);
    has_spare_ = true;
    return radius * std::cos(2.0 * M_PI * v);
  }

  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace crosscoder::detail
