#include "crosscoder/lm_evaluation.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "crosscoder/error.hpp"

namespace crosscoder {

namespace {

// log Σ exp(row), in float64.
double log_sum_exp(const float* row, int vocab) {
  double largest = -std::numeric_limits<double>::infinity();
  for (int v = 0; v < vocab; ++v) largest = std::max(largest, static_cast<double>(row[v]));
  double sum = 0.0;
  for (int v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - largest);
  return largest + std::log(sum);
}

double percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  const double position = p * static_cast<double>(values.size() - 1);
  const auto below = static_cast<std::size_t>(std::floor(position));
  const std::size_t above = std::min(below + 1, values.size() - 1);
  return values[below] + (position - static_cast<double>(below)) * (values[above] - values[below]);
}

}  // namespace

const ConditionScores& LanguageModelReport::condition(const std::string& name) const {
  for (const ConditionScores& c : conditions)
    if (c.name == name) return c;
  throw Error(fmt::format("language-model scores: no condition '{}'", name));
}

Interval LanguageModelReport::recovered(const std::string& spliced, const std::string& clean,
                                        const std::string& zero) const {
  const auto ratio = [](double s, double c, double z) { return (z - s) / (z - c); };
  Interval out;
  out.value = ratio(condition(spliced).cross_entropy.value, condition(clean).cross_entropy.value,
                    condition(zero).cross_entropy.value);
  const std::vector<double>& s = resampled_cross_entropy.at(spliced);
  const std::vector<double>& c = resampled_cross_entropy.at(clean);
  const std::vector<double>& z = resampled_cross_entropy.at(zero);
  std::vector<double> draws;
  for (std::size_t r = 0; r < s.size(); ++r) {
    const double value = ratio(s[r], c[r], z[r]);
    if (std::isfinite(value)) draws.push_back(value);
  }
  if (draws.empty()) {
    out.low = out.high = out.value;
  } else {
    out.low = percentile(draws, 0.025);
    out.high = percentile(draws, 0.975);
  }
  return out;
}

LanguageModelScores::LanguageModelScores(std::vector<std::string> conditions)
    : conditions_(std::move(conditions)) {
  if (conditions_.empty()) throw Error("language-model scores: no conditions");
  std::set<std::string> seen;
  for (const std::string& name : conditions_) {
    if (name.empty()) throw Error("language-model scores: an empty condition name");
    if (!seen.insert(name).second)
      throw Error(fmt::format("language-model scores: condition '{}' given twice", name));
  }
}

void LanguageModelScores::add(std::int64_t sequence, int condition, std::span<const float> logits,
                              int vocab, std::span<const std::int32_t> targets,
                              std::span<const float> reference) {
  if (condition < 0 || condition >= static_cast<int>(conditions_.size())) {
    throw Error(fmt::format("language-model scores: condition {} out of range [0, {})", condition,
                            conditions_.size()));
  }
  const std::string& name = conditions_[static_cast<std::size_t>(condition)];
  if (vocab < 1) throw Error(fmt::format("language-model scores: vocabulary of {}", vocab));
  const auto T = static_cast<std::int64_t>(targets.size());
  if (static_cast<std::int64_t>(logits.size()) != T * vocab ||
      (!reference.empty() && reference.size() != logits.size())) {
    throw Error(fmt::format(
        "language-model scores ({}): {} logits and {} reference logits for {} targets × {} tokens",
        name, logits.size(), reference.size(), T, vocab));
  }
  for (const float value : logits)
    if (!std::isfinite(value))
      throw Error(fmt::format("language-model scores ({}): a logit is {}", name, value));
  for (const float value : reference)
    if (!std::isfinite(value))
      throw Error(fmt::format("language-model scores ({}): a reference logit is {}", name, value));
  // Every check before anything is added, so that a refused call leaves the scores as they were.
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int32_t target = targets[static_cast<std::size_t>(t)];
    if (target >= vocab) {
      throw Error(
          fmt::format("language-model scores ({}): target {} at token {} is outside the "
                      "vocabulary of {}",
                      name, target, t, vocab));
    }
  }
  std::vector<Sums>& sums = sequences_[sequence];
  if (sums.empty()) sums.resize(conditions_.size());
  Sums& s = sums[static_cast<std::size_t>(condition)];
  s.seen = true;
  s.with_kl = s.with_kl || !reference.empty();
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int32_t target = targets[static_cast<std::size_t>(t)];
    if (target < 0) continue;
    const float* row = logits.data() + t * vocab;
    const double log_z = log_sum_exp(row, vocab);
    s.cross_entropy += log_z - static_cast<double>(row[target]);
    ++s.tokens;
    if (!reference.empty()) {
      // KL(p ‖ q) = Σ p·(log p − log q) with p the reference's distribution.
      const float* ref = reference.data() + t * vocab;
      const double log_z_ref = log_sum_exp(ref, vocab);
      double kl = 0.0;
      for (int v = 0; v < vocab; ++v) {
        const double log_p = static_cast<double>(ref[v]) - log_z_ref;
        const double log_q = static_cast<double>(row[v]) - log_z;
        kl += std::exp(log_p) * (log_p - log_q);
      }
      s.kl += std::max(kl, 0.0);  // rounding can leave −1e-17 for identical rows
    }
  }
}

LanguageModelReport LanguageModelScores::result(int resamples, std::uint64_t seed) const {
  if (sequences_.empty()) throw Error("language-model scores: no sequence was added");
  if (resamples < 1) throw Error(fmt::format("language-model scores: {} resamples", resamples));
  const std::size_t C = conditions_.size();
  std::vector<const std::vector<Sums>*> rows;
  for (const auto& [sequence, sums] : sequences_) rows.push_back(&sums);
  const auto means = [&](const std::vector<std::size_t>& drawn, std::vector<double>& ce,
                         std::vector<double>& kl) {
    std::vector<double> ce_sum(C, 0.0), kl_sum(C, 0.0), tokens(C, 0.0);
    for (const std::size_t q : drawn)
      for (std::size_t c = 0; c < C; ++c) {
        const Sums& s = (*rows[q])[c];
        ce_sum[c] += s.cross_entropy;
        kl_sum[c] += s.kl;
        tokens[c] += static_cast<double>(s.tokens);
      }
    ce.assign(C, std::numeric_limits<double>::quiet_NaN());
    kl.assign(C, std::numeric_limits<double>::quiet_NaN());
    for (std::size_t c = 0; c < C; ++c) {
      if (tokens[c] > 0.0) {
        ce[c] = ce_sum[c] / tokens[c];
        kl[c] = kl_sum[c] / tokens[c];
      }
    }
  };
  LanguageModelReport report;
  report.sequences = static_cast<std::int64_t>(rows.size());
  report.resamples = resamples;
  std::vector<std::size_t> all(rows.size());
  for (std::size_t q = 0; q < all.size(); ++q) all[q] = q;
  std::vector<double> ce, kl;
  means(all, ce, kl);
  std::vector<std::vector<double>> ce_draws(C), kl_draws(C);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::size_t> pick(0, rows.size() - 1);
  std::vector<std::size_t> drawn(rows.size());
  std::vector<double> ce_r, kl_r;
  for (int r = 0; r < resamples; ++r) {
    for (std::size_t& q : drawn) q = pick(rng);
    means(drawn, ce_r, kl_r);
    for (std::size_t c = 0; c < C; ++c) {
      ce_draws[c].push_back(ce_r[c]);
      kl_draws[c].push_back(kl_r[c]);
    }
  }
  const auto interval = [](double value, std::vector<double> draws) {
    draws.erase(std::remove_if(draws.begin(), draws.end(), [](double v) { return std::isnan(v); }),
                draws.end());
    Interval out{value, value, value};
    if (!draws.empty()) {
      out.low = percentile(draws, 0.025);
      out.high = percentile(draws, 0.975);
    }
    return out;
  };
  for (std::size_t c = 0; c < C; ++c) {
    ConditionScores scores;
    scores.name = conditions_[c];
    for (const auto* sums : rows) {
      const Sums& s = (*sums)[c];
      scores.sequences += s.seen ? 1 : 0;
      scores.tokens += s.tokens;
      scores.has_kl = scores.has_kl || s.with_kl;
    }
    scores.cross_entropy = interval(ce[c], ce_draws[c]);
    if (scores.has_kl) scores.kl = interval(kl[c], kl_draws[c]);
    report.resampled_cross_entropy[scores.name] = ce_draws[c];
    report.conditions.push_back(std::move(scores));
  }
  return report;
}

}  // namespace crosscoder
