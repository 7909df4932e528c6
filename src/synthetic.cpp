#include "crosscoder/synthetic.hpp"

#include "crosscoder/latent_metrics.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <utility>

#include "crosscoder/error.hpp"
#include "random.hpp"

namespace crosscoder {
namespace {

// splitmix64's finaliser: turns (seed, stream) pairs into well-spread engine seeds.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Distinct domains so that parameter draws and sample streams never share an engine seed.
constexpr std::uint64_t kParameterDomain = 0x5057a9d1c3b2e001ULL;
constexpr std::uint64_t kSampleDomain = 0x7a3c5e1f09b4d002ULL;

// Uniform integer in [0, n) by rejection, so it carries no modulo bias.
std::uint64_t below(detail::Random& random, std::uint64_t n) {
  const std::uint64_t limit =
      std::numeric_limits<std::uint64_t>::max() - std::numeric_limits<std::uint64_t>::max() % n;
  std::uint64_t value = 0;
  do value = random.engine()();
  while (value >= limit);
  return value % n;
}

double norm(const std::vector<double>& v) {
  return std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0));
}

std::vector<double> random_unit(detail::Random& random, int width) {
  std::vector<double> v(static_cast<std::size_t>(width));
  double n = 0.0;
  while (n == 0.0) {
    for (double& x : v) x = random.normal();
    n = norm(v);
  }
  for (double& x : v) x /= n;
  return v;
}

// Callers phrase `ok` as the valid range (x >= 0 && ...) so that NaN fails it.
void require(bool ok, const char* field, const std::string& rule) {
  if (!ok) throw Error(fmt::format("synthetic config: {} {}", field, rule));
}

void validate(const SyntheticConfig& c) {
  require(c.sources >= 1, "sources", fmt::format("must be at least 1, got {}", c.sources));
  require(c.width >= 1, "width", fmt::format("must be at least 1, got {}", c.width));
  require(c.shared_features >= 0, "shared_features",
          fmt::format("must be non-negative, got {}", c.shared_features));
  require(c.exclusive_features.size() == static_cast<std::size_t>(c.sources), "exclusive_features",
          fmt::format("must have one entry per source ({}), got {}", c.sources,
                      c.exclusive_features.size()));
  for (int count : c.exclusive_features) {
    require(count >= 0, "exclusive_features",
            fmt::format("entries must be non-negative, got {}", count));
  }
  require(c.shared_direction_jitter >= 0.0 && std::isfinite(c.shared_direction_jitter),
          "shared_direction_jitter",
          fmt::format("must be finite and non-negative, got {}", c.shared_direction_jitter));
  require(c.source_scale.empty() || c.source_scale.size() == static_cast<std::size_t>(c.sources),
          "source_scale",
          fmt::format("must be empty or have one entry per source ({}), got {}", c.sources,
                      c.source_scale.size()));
  for (double s : c.source_scale) {
    require(s > 0.0 && std::isfinite(s), "source_scale",
            fmt::format("entries must be finite and positive, got {}", s));
  }
  require(c.mean_offset_norm >= 0.0 && std::isfinite(c.mean_offset_norm), "mean_offset_norm",
          fmt::format("must be finite and non-negative, got {}", c.mean_offset_norm));
  require(c.frequency_profile == FrequencyProfile::zipf ||
              c.frequency_profile == FrequencyProfile::log_uniform,
          "frequency_profile", "must be zipf or log_uniform");
  require(c.max_frequency > 0.0 && c.max_frequency <= 1.0, "max_frequency",
          fmt::format("must be in (0, 1], got {}", c.max_frequency));
  require(
      c.min_frequency > 0.0 && c.min_frequency <= c.max_frequency, "min_frequency",
      fmt::format("must be in (0, max_frequency = {}], got {}", c.max_frequency, c.min_frequency));
  require(c.magnitude_mean_min > 0.0 && std::isfinite(c.magnitude_mean_min), "magnitude_mean_min",
          fmt::format("must be finite and positive, got {}", c.magnitude_mean_min));
  require(c.magnitude_mean_max >= c.magnitude_mean_min && std::isfinite(c.magnitude_mean_max),
          "magnitude_mean_max",
          fmt::format("must be finite and at least magnitude_mean_min = {}, got {}",
                      c.magnitude_mean_min, c.magnitude_mean_max));
  require(c.magnitude_log_std >= 0.0 && c.magnitude_log_std <= 10.0, "magnitude_log_std",
          fmt::format("must be in [0, 10], got {}", c.magnitude_log_std));
  require(c.noise_std >= 0.0 && std::isfinite(c.noise_std), "noise_std",
          fmt::format("must be finite and non-negative, got {}", c.noise_std));
  require(c.label_fraction >= 0.0 && c.label_fraction <= 1.0, "label_fraction",
          fmt::format("must be in [0, 1], got {}", c.label_fraction));
  require(c.tool_rate_positive >= 0.0 && c.tool_rate_positive <= 1.0, "tool_rate_positive",
          fmt::format("must be in [0, 1], got {}", c.tool_rate_positive));
  require(c.tool_rate_negative >= 0.0 && c.tool_rate_negative <= 1.0, "tool_rate_negative",
          fmt::format("must be in [0, 1], got {}", c.tool_rate_negative));
  require(!c.plant_tool_feature || c.exclusive_features.back() >= 1, "plant_tool_feature",
          fmt::format("needs exclusive_features[{}] >= 1 (the tool feature is exclusive to the "
                      "last source)",
                      c.sources - 1));
}

}  // namespace

SyntheticPair::SyntheticPair(SyntheticConfig config) : config_(std::move(config)) {
  validate(config_);
  const int M = config_.sources, d = config_.width;
  const auto D = static_cast<std::size_t>(M) * static_cast<std::size_t>(d);
  features_ = config_.shared_features;
  for (int count : config_.exclusive_features) features_ += count;
  const auto N = static_cast<std::size_t>(features_);

  scale_.assign(static_cast<std::size_t>(M), 1.0);
  if (!config_.source_scale.empty()) scale_ = config_.source_scale;
  group_.assign(static_cast<std::size_t>(config_.shared_features), -1);
  for (int m = 0; m < M; ++m) group_.insert(group_.end(), config_.exclusive_features[m], m);
  if (config_.plant_tool_feature) tool_feature_ = features_ - config_.exclusive_features.back();

  detail::Random random(mix(mix(config_.seed) ^ kParameterDomain));

  directions_.assign(N * D, 0.0f);
  const double jitter = config_.shared_direction_jitter;
  for (std::size_t f = 0; f < N; ++f) {
    float* row = directions_.data() + f * D;
    if (group_[f] >= 0) {
      const std::vector<double> u = random_unit(random, d);
      std::copy(u.begin(), u.end(), row + static_cast<std::size_t>(group_[f]) * d);
      continue;
    }
    const std::vector<double> u = random_unit(random, d);
    for (int m = 0; m < M; ++m) {
      // Perturb orthogonally to u so that cos(dir_m, u) = 1/sqrt(1 + jitter²) exactly.
      std::vector<double> g = random_unit(random, d);
      const double along = std::inner_product(g.begin(), g.end(), u.begin(), 0.0);
      for (int i = 0; i < d; ++i) g[i] -= along * u[i];
      const double g_norm = norm(g);  // 0 only when d = 1: no orthogonal room, no jitter
      std::vector<double> v = u;
      if (g_norm > 0.0) {
        for (int i = 0; i < d; ++i) v[i] += jitter * g[i] / g_norm;
      }
      const double v_norm = norm(v);
      for (int i = 0; i < d; ++i) row[m * d + i] = static_cast<float>(v[i] / v_norm);
    }
  }

  magnitude_mean_.resize(N);
  for (double& mean : magnitude_mean_) {
    mean = config_.magnitude_mean_min +
           (config_.magnitude_mean_max - config_.magnitude_mean_min) * random.uniform();
  }

  // Frequencies go to features in a random order so that they are independent of the group.
  std::vector<std::size_t> order;
  for (std::size_t f = 0; f < N; ++f) {
    if (static_cast<std::int64_t>(f) != tool_feature_) order.push_back(f);
  }
  for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[below(random, i)]);
  frequency_.assign(N, 0.0);
  const double high = config_.max_frequency, low = config_.min_frequency;
  const double exponent =
      order.size() > 1 ? std::log(high / low) / std::log(static_cast<double>(order.size())) : 0.0;
  for (std::size_t rank = 0; rank < order.size(); ++rank) {
    frequency_[order[rank]] =
        config_.frequency_profile == FrequencyProfile::zipf
            ? high * std::pow(static_cast<double>(rank + 1), -exponent)
            : std::exp(std::log(low) + (std::log(high) - std::log(low)) * random.uniform());
  }
  if (tool_feature_ >= 0) {
    frequency_[tool_feature_] = config_.label_fraction * config_.tool_rate_positive +
                                (1.0 - config_.label_fraction) * config_.tool_rate_negative;
  }

  mean_.assign(D, 0.0f);
  for (int m = 0; m < M; ++m) {
    const std::vector<double> offset = random_unit(random, d);
    for (int i = 0; i < d; ++i) {
      mean_[m * d + i] = static_cast<float>(config_.mean_offset_norm * offset[i]);
    }
  }
}

int SyntheticPair::feature_group(std::int64_t feature) const {
  if (feature < 0 || feature >= features_) {
    throw Error(fmt::format("synthetic: feature {} out of range [0, {})", feature, features_));
  }
  return group_[feature];
}

double SyntheticPair::frequency(std::int64_t feature) const {
  feature_group(feature);  // range check
  return frequency_[feature];
}

double SyntheticPair::magnitude_mean(std::int64_t feature) const {
  feature_group(feature);
  return magnitude_mean_[feature];
}

std::span<const float> SyntheticPair::direction(std::int64_t feature, int source) const {
  feature_group(feature);  // range checks
  source_scale(source);
  const auto d = static_cast<std::size_t>(config_.width);
  return {directions_.data() + (feature * config_.sources + source) * d, d};
}

std::vector<double> SyntheticPair::raw_direction(std::int64_t feature) const {
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(config_.sources) * config_.width);
  for (int m = 0; m < config_.sources; ++m) {
    for (float x : direction(feature, m)) out.push_back(scale_[m] * x);
  }
  return out;
}

double SyntheticPair::source_scale(int source) const {
  if (source < 0 || source >= config_.sources) {
    throw Error(fmt::format("synthetic: source {} out of range [0, {})", source, config_.sources));
  }
  return scale_[source];
}

std::span<const float> SyntheticPair::source_mean(int source) const {
  source_scale(source);  // range check
  const auto d = static_cast<std::size_t>(config_.width);
  return {mean_.data() + source * d, d};
}

double SyntheticPair::expected_square_norm(int source) const {
  const double scale = source_scale(source);
  const int d = config_.width;
  const double sigma = config_.magnitude_log_std;
  // Features fire independently, so E‖s‖² = ‖E s‖² + Σ_f Var(a_f 1_f)·‖dir_f‖².
  std::vector<double> mean_sum(static_cast<std::size_t>(d), 0.0);
  double variance = 0.0;
  for (std::int64_t f = 0; f < features_; ++f) {
    const std::span<const float> dir = direction(f, source);
    const double p = frequency_[f], mean = magnitude_mean_[f];
    const double first = p * mean, second = p * mean * mean * std::exp(sigma * sigma);
    double dir_square = 0.0;
    for (int i = 0; i < d; ++i) {
      mean_sum[i] += first * dir[i];
      dir_square += static_cast<double>(dir[i]) * dir[i];
    }
    variance += (second - first * first) * dir_square;
  }
  const std::span<const float> offset = source_mean(source);
  double total = 0.0;
  for (int i = 0; i < d; ++i) total += std::pow(scale * mean_sum[i] + offset[i], 2);
  return total + scale * scale * variance + d * config_.noise_std * config_.noise_std;
}

void SyntheticPair::sample(std::int64_t rows, std::uint64_t stream, float* out, std::int8_t* labels,
                           float* codes) const {
  if (rows < 0)
    throw Error(fmt::format("synthetic sample: rows must be non-negative, got {}", rows));
  if (rows > 0 && out == nullptr) throw Error("synthetic sample: out is null");
  const int M = config_.sources, d = config_.width;
  const auto D = static_cast<std::size_t>(M) * static_cast<std::size_t>(d);
  const auto N = static_cast<std::size_t>(features_);
  const double sigma = config_.magnitude_log_std;
  detail::Random random(mix(mix(config_.seed ^ kSampleDomain) + stream));
  std::vector<double> sum(D);

  for (std::int64_t b = 0; b < rows; ++b) {
    const bool positive = random.uniform() < config_.label_fraction;
    if (labels != nullptr) labels[b] = positive ? 1 : 0;
    float* code_row = codes != nullptr ? codes + static_cast<std::size_t>(b) * N : nullptr;
    std::fill(sum.begin(), sum.end(), 0.0);
    for (std::size_t f = 0; f < N; ++f) {
      double p = frequency_[f];
      if (static_cast<std::int64_t>(f) == tool_feature_) {
        p = positive ? config_.tool_rate_positive : config_.tool_rate_negative;
      }
      double a = 0.0;
      if (random.uniform() < p) {
        a = magnitude_mean_[f] * std::exp(sigma * random.normal() - 0.5 * sigma * sigma);
        const float* dir = directions_.data() + f * D;
        const int owner = group_[f];
        // Exclusive features touch only their own block, so other sources stay exactly zero.
        const std::size_t begin = owner < 0 ? 0 : static_cast<std::size_t>(owner) * d;
        const std::size_t end = owner < 0 ? D : begin + d;
        for (std::size_t i = begin; i < end; ++i) sum[i] += a * dir[i];
      }
      if (code_row != nullptr) code_row[f] = static_cast<float>(a);
    }
    float* x = out + static_cast<std::size_t>(b) * D;
    for (int m = 0; m < M; ++m) {
      for (int i = 0; i < d; ++i) {
        const std::size_t j = static_cast<std::size_t>(m) * d + i;
        double value = scale_[m] * sum[j] + mean_[j];
        if (config_.noise_std > 0.0) value += config_.noise_std * random.normal();
        x[j] = static_cast<float>(value);
      }
    }
  }
}

void SyntheticPair::fill(std::int64_t step, std::int64_t rows, float* out, std::int8_t* labels) {
  sample(rows, static_cast<std::uint64_t>(step), out, labels);
}

std::string SyntheticPair::identity() const {
  const SyntheticConfig& c = config_;
  return fmt::format(
      "synthetic(sources={}, width={}, shared_features={}, exclusive_features=[{}], "
      "shared_direction_jitter={}, source_scale=[{}], mean_offset_norm={}, "
      "frequency_profile={}, max_frequency={}, min_frequency={}, magnitude_mean_min={}, "
      "magnitude_mean_max={}, magnitude_log_std={}, noise_std={}, plant_tool_feature={}, "
      "label_fraction={}, tool_rate_positive={}, tool_rate_negative={}, seed={})",
      c.sources, c.width, c.shared_features, fmt::join(c.exclusive_features, ","),
      c.shared_direction_jitter, fmt::join(scale_, ","), c.mean_offset_norm,
      c.frequency_profile == FrequencyProfile::zipf ? "zipf" : "log_uniform", c.max_frequency,
      c.min_frequency, c.magnitude_mean_min, c.magnitude_mean_max, c.magnitude_log_std, c.noise_std,
      c.plant_tool_feature, c.label_fraction, c.tool_rate_positive, c.tool_rate_negative, c.seed);
}

namespace {

void require_option(bool ok, const char* field, const std::string& rule) {
  if (!ok) throw Error(fmt::format("evaluate_recovery: {} {}", field, rule));
}

// Class of one latent by its (weighted) relative decoder norms; see evaluate_recovery's docs.
int classify(const float* latent, int sources, int width, const std::vector<double>& weight,
             double exclusive_threshold) {
  std::vector<double> norms(static_cast<std::size_t>(sources));
  for (int m = 0; m < sources; ++m) {
    double square = 0.0;
    for (int i = 0; i < width; ++i) {
      const double x = latent[m * width + i];
      square += x * x;
    }
    norms[m] = weight[m] * std::sqrt(square);
  }
  return classify_by_norms(norms, exclusive_threshold);
}

}  // namespace

RecoveryReport evaluate_recovery(const SyntheticPair& pair, const float* decoder,
                                 std::size_t latents, const RecoveryOptions& options) {
  const int M = pair.sources(), d = pair.width();
  const auto D = static_cast<Eigen::Index>(M) * d;
  const std::int64_t N = pair.features();
  require_option(options.cosine_threshold > 0.0 && options.cosine_threshold <= 1.0,
                 "cosine_threshold",
                 fmt::format("must be in (0, 1], got {}", options.cosine_threshold));
  require_option(options.min_frequency >= 0.0 && options.min_frequency <= 1.0, "min_frequency",
                 fmt::format("must be in [0, 1], got {}", options.min_frequency));
  require_option(options.exclusive_threshold > 0.5 && options.exclusive_threshold <= 1.0,
                 "exclusive_threshold",
                 fmt::format("must be in (0.5, 1], got {}", options.exclusive_threshold));
  require_option(
      options.norm_scale.empty() || options.norm_scale.size() == static_cast<std::size_t>(M),
      "norm_scale",
      fmt::format("must be empty or have one entry per source ({}), got {}", M,
                  options.norm_scale.size()));
  for (double w : options.norm_scale) {
    require_option(w > 0.0 && std::isfinite(w), "norm_scale",
                   fmt::format("entries must be finite and positive, got {}", w));
  }
  require_option(decoder != nullptr || latents == 0, "decoder",
                 fmt::format("is null but latents = {}", latents));
  const std::vector<double> weight = options.norm_scale.empty()
                                         ? std::vector<double>(static_cast<std::size_t>(M), 1.0)
                                         : options.norm_scale;

  // Unit ground-truth columns [D, N] in raw space.
  Eigen::MatrixXd truth(D, N);
  for (std::int64_t f = 0; f < N; ++f) {
    const std::vector<double> raw = pair.raw_direction(f);
    truth.col(f) = Eigen::Map<const Eigen::VectorXd>(raw.data(), D).normalized();
  }

  RecoveryReport report;
  report.options = options;
  report.best_cosine.assign(N, latents > 0 ? -std::numeric_limits<double>::infinity() : 0.0);
  report.best_latent.assign(N, -1);

  // Latents in blocks, so a large dictionary never needs a [latents, N] matrix at once.
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  constexpr std::size_t kBlock = 4096;
  for (std::size_t begin = 0; begin < latents; begin += kBlock) {
    const auto rows = static_cast<Eigen::Index>(std::min(kBlock, latents - begin));
    const Eigen::MatrixXd block =
        Eigen::Map<const RowMajor>(decoder + begin * D, rows, D).cast<double>();
    if (!block.allFinite()) {
      for (Eigen::Index l = 0; l < rows; ++l) {
        require_option(block.row(l).allFinite(), "decoder",
                       fmt::format("holds a non-finite value in latent {}", begin + l));
      }
    }
    const Eigen::VectorXd norms = block.rowwise().norm();
    const Eigen::MatrixXd dots = block * truth;  // [rows, N]
    for (Eigen::Index l = 0; l < rows; ++l) {
      for (std::int64_t f = 0; f < N; ++f) {
        const double cosine = norms[l] > 0.0 ? dots(l, f) / norms[l] : 0.0;
        if (cosine > report.best_cosine[f]) {
          report.best_cosine[f] = cosine;
          report.best_latent[f] = static_cast<std::int64_t>(begin) + l;
        }
      }
    }
  }

  report.exclusive.assign(static_cast<std::size_t>(M), GroupRecovery{});
  report.matched_group.assign(N, kMixedGroup);
  report.eligible.assign(N, false);
  report.recovered.assign(N, false);
  std::set<std::int64_t> matched;
  double cosine_sum = 0.0;
  for (std::int64_t f = 0; f < N; ++f) {
    const int group = pair.feature_group(f);
    GroupRecovery& counts = group < 0 ? report.shared : report.exclusive[group];
    ++counts.planted;
    const std::int64_t latent = report.best_latent[f];
    if (latent >= 0) {
      report.matched_group[f] =
          classify(decoder + latent * D, M, d, weight, options.exclusive_threshold);
    }
    if (pair.frequency(f) < options.min_frequency) continue;
    report.eligible[f] = true;
    ++counts.eligible;
    cosine_sum += report.best_cosine[f];
    if (latent < 0 || report.best_cosine[f] < options.cosine_threshold) continue;
    report.recovered[f] = true;
    ++counts.recovered;
    matched.insert(latent);
    if (M == 1 || report.matched_group[f] == group) ++counts.classified;
  }

  const auto add = [&report](const GroupRecovery& g) {
    report.total.planted += g.planted;
    report.total.eligible += g.eligible;
    report.total.recovered += g.recovered;
    report.total.classified += g.classified;
  };
  add(report.shared);
  for (const GroupRecovery& g : report.exclusive) add(g);
  const auto ratio = [](std::int64_t a, std::int64_t b) {
    return b > 0 ? static_cast<double>(a) / static_cast<double>(b) : 0.0;
  };
  report.recovery_rate = ratio(report.total.recovered, report.total.eligible);
  report.classification_rate = ratio(report.total.classified, report.total.recovered);
  report.mean_best_cosine =
      report.total.eligible > 0 ? cosine_sum / static_cast<double>(report.total.eligible) : 0.0;
  report.matched_latents = static_cast<std::int64_t>(matched.size());

  report.tool_feature = pair.tool_feature();
  if (report.tool_feature >= 0) {
    const std::int64_t t = report.tool_feature;
    report.tool_best_latent = report.best_latent[t];
    report.tool_best_cosine = report.best_cosine[t];
    report.tool_recovered = report.recovered[t];
    report.tool_classified =
        report.tool_recovered && report.matched_group[t] == pair.feature_group(t);
  }
  return report;
}

RecoveryReport evaluate_recovery(const SyntheticPair& pair, const float* decoder,
                                 std::size_t latents, double cosine_threshold,
                                 double min_frequency) {
  RecoveryOptions options;
  options.cosine_threshold = cosine_threshold;
  options.min_frequency = min_frequency;
  return evaluate_recovery(pair, decoder, latents, options);
}

std::string format_recovery_report(const RecoveryReport& report) {
  const auto line = [](const std::string& name, const GroupRecovery& g) {
    return fmt::format(
        "  {:<16} planted {:>5}, eligible {:>5}, recovered {:>5}, classified {:>5}\n", name,
        g.planted, g.eligible, g.recovered, g.classified);
  };
  std::string out = fmt::format(
      "recovered {}/{} eligible features ({:.1f}%) at cosine >= {:.2f} (frequency >= {:g}); "
      "classified {}/{} ({:.1f}%); mean best cosine {:.3f}; {} distinct latents\n",
      report.total.recovered, report.total.eligible, 100.0 * report.recovery_rate,
      report.options.cosine_threshold, report.options.min_frequency, report.total.classified,
      report.total.recovered, 100.0 * report.classification_rate, report.mean_best_cosine,
      report.matched_latents);
  out += line("shared", report.shared);
  for (std::size_t m = 0; m < report.exclusive.size(); ++m) {
    out += line(fmt::format("exclusive to {}", m), report.exclusive[m]);
  }
  if (report.tool_feature >= 0) {
    out += fmt::format("  tool feature {}: best latent {}, cosine {:.3f}, {}\n",
                       report.tool_feature, report.tool_best_latent, report.tool_best_cosine,
                       !report.tool_recovered   ? "not recovered"
                       : report.tool_classified ? "recovered and classified"
                                                : "recovered, misclassified");
  }
  return out;
}

}  // namespace crosscoder
