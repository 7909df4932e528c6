// Backend::select against plain sorting references, with deliberate ties and masks.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <tuple>
#include <vector>

#include "backend_params.hpp"
#include "crosscoder/crosscoder.hpp"

namespace crosscoder {
namespace {

// Pre-activations drawn from a few values only, so ties are everywhere, plus negatives.
std::vector<float> tied_preactivations(std::int64_t rows, std::int64_t latents,
                                       std::mt19937_64& rng) {
  std::uniform_int_distribution<int> level(-3, 6);
  std::vector<float> pre(static_cast<std::size_t>(rows * latents));
  for (float& v : pre) v = 0.25f * static_cast<float>(level(rng));
  return pre;
}

using Entries =
    std::vector<std::vector<std::pair<std::int32_t, float>>>;  // per row (latent, value)

Entries entries_of(const SparseCodes& codes) {
  const HostSparseCodes host = HostSparseCodes::from(codes);
  Entries rows(static_cast<std::size_t>(host.rows));
  for (std::int64_t b = 0; b < host.rows; ++b)
    for (std::int64_t e = host.row_ptr[b]; e < host.row_ptr[b + 1]; ++e)
      rows[b].push_back({host.latent[e], host.value[e]});
  return rows;
}

// Continuous pre-activations (ties only by chance), half of them negative.
std::vector<float> normal_preactivations(std::int64_t rows, std::int64_t latents,
                                         std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> pre(static_cast<std::size_t>(rows * latents));
  for (float& v : pre) v = normal(rng);
  return pre;
}

// Per-row TopK of `host` against a stable sort of each row, with and without a random mask.
void check_per_row_top_k(const std::shared_ptr<Backend>& backend, const std::vector<float>& host,
                         std::int64_t rows, std::int64_t latents, std::int64_t k,
                         std::mt19937_64& rng) {
  // Masks admitting about 2/3 of the latents and about 1/16 (as AuxK's dead latents: the CPU
  // backend then reads the mask as a list).
  DeviceArray<float> pre(backend, std::span<const float>(host));
  for (const int admit_one_in : {0, 3, 16}) {
    std::vector<std::uint8_t> mask(latents);
    for (auto& m : mask)
      m = static_cast<std::uint8_t>(admit_one_in == 3 ? rng() % 3 != 0 : rng() % 16 == 0);
    DeviceArray<std::uint8_t> allowed(backend, std::span<const std::uint8_t>(mask));
    const bool masked = admit_one_in != 0;
    for (const bool positive_only : {false, true}) {
      SelectionRequest request;
      request.selection = Selection::per_row_top_k;
      request.k = k;
      request.allowed = masked ? allowed.data() : nullptr;
      request.positive_only = positive_only;
      const Entries got =
          entries_of(backend->ops().select(pre.data(), rows, latents, request, nullptr));
      for (std::int64_t b = 0; b < rows; ++b) {
        std::vector<std::pair<float, std::int32_t>> order;
        for (std::int64_t f = 0; f < latents; ++f)
          if (!masked || mask[f])
            order.push_back({std::max(host[b * latents + f], 0.0f), static_cast<std::int32_t>(f)});
        std::stable_sort(order.begin(), order.end(),
                         [](auto& a, auto& c) { return a.first > c.first; });
        std::int64_t expected = std::min<std::int64_t>(k, static_cast<std::int64_t>(order.size()));
        if (positive_only) {
          expected = std::min<std::int64_t>(
              expected,
              std::count_if(order.begin(), order.end(), [](auto& e) { return e.first > 0; }));
        }
        ASSERT_EQ(got[b].size(), static_cast<std::size_t>(expected))
            << "row " << b << (masked ? " (masked)" : "") << (positive_only ? " (positive)" : "");
        for (std::size_t i = 0; i < got[b].size(); ++i) {
          ASSERT_EQ(got[b][i].first, order[i].second)
              << "row " << b << " rank " << i << (masked ? " (masked)" : "")
              << (positive_only ? " (positive)" : "");
          ASSERT_EQ(got[b][i].second, order[i].first);
        }
      }
    }
  }
}

// BatchTopK of `host` with random score weights against a stable sort of the whole batch.
void check_per_batch_top_k(const std::shared_ptr<Backend>& backend, const std::vector<float>& host,
                           std::int64_t rows, std::int64_t latents, std::int64_t k,
                           std::mt19937_64& rng) {
  std::vector<float> weights(latents);
  std::uniform_int_distribution<int> w(1, 3);
  for (float& x : weights) x = 0.5f * static_cast<float>(w(rng));
  DeviceArray<float> pre(backend, std::span<const float>(host));
  DeviceArray<float> weight(backend, std::span<const float>(weights));
  SelectionRequest request;
  request.selection = Selection::per_batch_top_k;
  request.k = k;
  request.weight = weight.data();
  float smallest = 0.0f;
  const Entries got =
      entries_of(backend->ops().select(pre.data(), rows, latents, request, &smallest));

  std::vector<std::tuple<float, std::int64_t>> all;  // (score, flat index)
  for (std::int64_t i = 0; i < rows * latents; ++i)
    all.push_back({std::max(host[i], 0.0f) * weights[i % latents], i});
  std::stable_sort(all.begin(), all.end(),
                   [](auto& a, auto& c) { return std::get<0>(a) > std::get<0>(c); });
  std::vector<std::vector<std::int32_t>> want(rows);
  float want_smallest = -1.0f;
  for (std::int64_t n = 0; n < rows * k; ++n) {
    const auto [score, i] = all[n];
    want[i / latents].push_back(static_cast<std::int32_t>(i % latents));
    if (score > 0.0f) want_smallest = score;
  }
  std::int64_t total = 0;
  for (std::int64_t b = 0; b < rows; ++b) {
    std::vector<std::int32_t> latents_got;
    for (auto [f, value] : got[b]) {
      latents_got.push_back(f);
      ASSERT_EQ(value, std::max(host[b * latents + f], 0.0f));
    }
    std::sort(latents_got.begin(), latents_got.end());
    std::sort(want[b].begin(), want[b].end());
    ASSERT_EQ(latents_got, want[b]) << "row " << b;
    total += static_cast<std::int64_t>(latents_got.size());
  }
  EXPECT_EQ(total, rows * k);
  EXPECT_EQ(smallest, want_smallest);
}

class Selections : public ::testing::TestWithParam<BackendKind> {};

// Small shapes, a width that is not a multiple of 16, and a batch large enough (≥ 2^19
// entries) for the CPU backend's sampled BatchTopK threshold and block-skipping TopK.
constexpr std::int64_t kShapes[][3] = {
    {37, 301, 17}, {23, 157, 9}, {160, 4099, 24}, {130, 8192, 3}};

TEST_P(Selections, PerRowTopKTakesTheKLargestWithLowerIndexOnTies) {
  auto backend = testing::make_test_backend(GetParam());
  std::mt19937_64 rng(std::random_device{}());
  for (const auto& [rows, latents, k] : kShapes) {
    SCOPED_TRACE(::testing::Message() << rows << " x " << latents << ", k " << k);
    check_per_row_top_k(backend, tied_preactivations(rows, latents, rng), rows, latents, k, rng);
    check_per_row_top_k(backend, normal_preactivations(rows, latents, rng), rows, latents, k, rng);
  }
}

TEST_P(Selections, PerBatchTopKTakesExactlyRowsTimesKOfTheWeightedScores) {
  auto backend = testing::make_test_backend(GetParam());
  std::mt19937_64 rng(std::random_device{}());
  for (const auto& [rows, latents, k] : kShapes) {
    SCOPED_TRACE(::testing::Message() << rows << " x " << latents << ", k " << k);
    check_per_batch_top_k(backend, tied_preactivations(rows, latents, rng), rows, latents, k, rng);
    check_per_batch_top_k(backend, normal_preactivations(rows, latents, rng), rows, latents, k,
                          rng);
  }
}

TEST_P(Selections, PerBatchTopKWhenFewScoresArePositive) {
  // Most entries negative: the k·rows best include zeros, so no positive threshold exists and
  // the ties at zero are taken in row-major order.
  auto backend = testing::make_test_backend(GetParam());
  std::mt19937_64 rng(std::random_device{}());
  const std::int64_t rows = 128, latents = 8192, k = 40;
  std::vector<float> host = normal_preactivations(rows, latents, rng);
  std::uniform_real_distribution<float> unit;
  for (float& v : host) v = unit(rng) < 0.995f ? -std::abs(v) : std::abs(v);
  check_per_batch_top_k(backend, host, rows, latents, k, rng);
}

TEST_P(Selections, ThresholdSelectionsKeepWhatTheyShould) {
  auto backend = testing::make_test_backend(GetParam());
  std::mt19937_64 rng(std::random_device{}());
  const std::int64_t rows = 11, latents = 53;
  std::normal_distribution<float> normal;
  std::vector<float> host(rows * latents), thresholds(latents);
  for (float& v : host) v = normal(rng);
  for (float& t : thresholds) t = 0.5f * std::abs(normal(rng));
  DeviceArray<float> pre(backend, std::span<const float>(host));
  DeviceArray<float> threshold(backend, std::span<const float>(thresholds));
  SelectionRequest jump;
  jump.selection = Selection::jump_threshold;
  jump.threshold = threshold.data();
  SelectionRequest relu;
  relu.selection = Selection::positive;
  SelectionRequest near = jump;
  near.selection = Selection::near_threshold;
  near.bandwidth = 0.3f;
  const Entries jumped =
      entries_of(backend->ops().select(pre.data(), rows, latents, jump, nullptr));
  const Entries positive =
      entries_of(backend->ops().select(pre.data(), rows, latents, relu, nullptr));
  const Entries nearby =
      entries_of(backend->ops().select(pre.data(), rows, latents, near, nullptr));
  for (std::int64_t b = 0; b < rows; ++b) {
    std::size_t j = 0, p = 0, n = 0;
    for (std::int64_t f = 0; f < latents; ++f) {
      const float v = host[b * latents + f];
      if (v > thresholds[f]) {
        ASSERT_EQ(jumped[b].at(j++), std::make_pair(static_cast<std::int32_t>(f), v));
      }
      if (v > 0.0f) {
        ASSERT_EQ(positive[b].at(p++), std::make_pair(static_cast<std::int32_t>(f), v));
      }
      if (std::abs(v - thresholds[f]) < 0.15f) {
        ASSERT_EQ(nearby[b].at(n++).first, f);
      }
    }
    EXPECT_EQ(j, jumped[b].size());
    EXPECT_EQ(p, positive[b].size());
    EXPECT_EQ(n, nearby[b].size());
  }
}

TEST_P(Selections, KAtLeastTheLatentCountSelectsEveryLatentInRankOrder) {
  // k ≥ F: TopK keeps every latent of each row and BatchTopK every entry of the batch, each row
  // in descending order of score with ties (the zeros of negative pre-activations) by latent.
  auto backend = testing::make_test_backend(GetParam());
  std::mt19937_64 rng(std::random_device{}());
  const std::int64_t rows = 5, latents = 7;
  const std::vector<float> host = normal_preactivations(rows, latents, rng);
  DeviceArray<float> pre(backend, std::span<const float>(host));
  for (const Selection selection : {Selection::per_row_top_k, Selection::per_batch_top_k}) {
    for (const std::int64_t k : {latents, latents + 3}) {
      SelectionRequest request;
      request.selection = selection;
      request.k = k;
      const Entries got =
          entries_of(backend->ops().select(pre.data(), rows, latents, request, nullptr));
      for (std::int64_t b = 0; b < rows; ++b) {
        std::vector<std::pair<float, std::int32_t>> want;
        for (std::int32_t f = 0; f < latents; ++f)
          want.push_back({std::max(host[b * latents + f], 0.0f), f});
        std::stable_sort(want.begin(), want.end(),
                         [](const auto& a, const auto& c) { return a.first > c.first; });
        ASSERT_EQ(got[b].size(), want.size()) << "row " << b << ", k " << k;
        for (std::size_t i = 0; i < want.size(); ++i) {
          EXPECT_EQ(got[b][i].first, want[i].second) << "row " << b << " place " << i;
          EXPECT_EQ(got[b][i].second, want[i].first) << "row " << b << " place " << i;
        }
      }
    }
  }
}

// BatchTopK selected tile by tile (each tile's best B·k candidates, joined, then the batch's best
// B·k among them) is the whole batch's selection, entry for entry, with ties everywhere.
TEST_P(Selections, BatchTopKOverTilesEqualsTheWholeBatchSelection) {
  auto backend = testing::make_test_backend(GetParam());
  std::mt19937_64 rng(std::random_device{}());
  const std::int64_t rows = 29, latents = 211, k = 13;
  for (const bool tied : {true, false}) {
    const std::vector<float> host =
        tied ? tied_preactivations(rows, latents, rng) : normal_preactivations(rows, latents, rng);
    std::uniform_real_distribution<float> spread(0.5f, 1.5f);
    std::vector<float> weight_host(static_cast<std::size_t>(latents));
    for (std::size_t f = 0; f < weight_host.size(); ++f)
      weight_host[f] = tied && f % 2 == 0 ? 1.0f : spread(rng);
    DeviceArray<float> pre(backend, std::span<const float>(host));
    DeviceArray<float> weight(backend, std::span<const float>(weight_host));
    SelectionRequest request;
    request.selection = Selection::per_batch_top_k;
    request.k = k;
    request.weight = weight.data();
    float want_smallest = 0.0f;
    const HostSparseCodes want = HostSparseCodes::from(
        backend->ops().select(pre.data(), rows, latents, request, &want_smallest));
    for (const std::int64_t tile : {std::int64_t{1}, std::int64_t{4}, std::int64_t{11}, rows}) {
      SCOPED_TRACE(::testing::Message() << (tied ? "tied" : "continuous") << ", tile " << tile);
      std::vector<SparseCodes> parts;
      for (std::int64_t first = 0; first < rows; first += tile) {
        const std::int64_t here = std::min(tile, rows - first);
        SelectionRequest part = request;
        part.k = (rows * k + here - 1) / here;
        parts.push_back(
            backend->ops().select(pre.data() + first * latents, here, latents, part, nullptr));
      }
      const SparseCodes joined = concatenate_rows(backend, parts);
      float smallest = 0.0f;
      const HostSparseCodes got = HostSparseCodes::from(
          backend->ops().select_top_entries(joined, rows * k, weight.data(), &smallest));
      EXPECT_EQ(got.row_ptr, want.row_ptr);
      EXPECT_EQ(got.latent, want.latent);
      EXPECT_EQ(got.value, want.value);
      EXPECT_EQ(smallest, want_smallest);
    }
  }
}

// select_top_entries against a stable sort of the entries by score, for counts from none to
// more than there are; the kept entries keep their order.
TEST_P(Selections, TopEntriesKeepTheBestInEntryOrder) {
  auto backend = testing::make_test_backend(GetParam());
  std::mt19937_64 rng(std::random_device{}());
  const std::int64_t rows = 31, latents = 40;
  HostSparseCodes host;
  host.rows = rows;
  host.row_ptr.push_back(0);
  std::uniform_int_distribution<int> count(0, 12), level(0, 5);
  for (std::int64_t b = 0; b < rows; ++b) {
    const int n = count(rng);
    for (int i = 0; i < n; ++i) {
      host.latent.push_back(static_cast<std::int32_t>(rng() % latents));
      host.value.push_back(0.5f * static_cast<float>(level(rng)));  // ties and zeros
    }
    host.row_ptr.push_back(static_cast<std::int64_t>(host.latent.size()));
  }
  const auto nnz = static_cast<std::int64_t>(host.latent.size());
  SparseCodes codes;
  codes.rows = rows;
  codes.nnz = nnz;
  codes.row_ptr = DeviceArray<std::int64_t>(backend, std::span<const std::int64_t>(host.row_ptr));
  codes.latent = DeviceArray<std::int32_t>(backend, std::span<const std::int32_t>(host.latent));
  codes.value = DeviceArray<float>(backend, std::span<const float>(host.value));
  std::vector<float> weight_host(static_cast<std::size_t>(latents));
  for (float& w : weight_host) w = 0.25f * static_cast<float>(1 + rng() % 4);
  DeviceArray<float> weight(backend, std::span<const float>(weight_host));
  for (const bool weighted : {false, true}) {
    std::vector<std::pair<float, std::int64_t>> order;  // (score, entry)
    for (std::int64_t e = 0; e < nnz; ++e)
      order.push_back({host.value[e] * (weighted ? weight_host[host.latent[e]] : 1.0f), e});
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& c) { return a.first > c.first; });
    for (const std::int64_t wanted : {std::int64_t{0}, std::int64_t{1}, nnz / 3, nnz, nnz + 5}) {
      SCOPED_TRACE(::testing::Message() << (weighted ? "weighted" : "plain") << ", " << wanted);
      std::vector<std::uint8_t> keep(static_cast<std::size_t>(nnz), 0);
      float want_smallest = -1.0f;
      for (std::int64_t i = 0; i < std::min(wanted, nnz); ++i) {
        keep[order[i].second] = 1;
        if (order[i].first > 0.0f) want_smallest = order[i].first;
      }
      float smallest = 0.0f;
      const HostSparseCodes got = HostSparseCodes::from(backend->ops().select_top_entries(
          codes, wanted, weighted ? weight.data() : nullptr, &smallest));
      ASSERT_EQ(got.rows, rows);
      for (std::int64_t b = 0; b < rows; ++b) {
        std::vector<std::pair<std::int32_t, float>> want_row, got_row;
        for (std::int64_t e = host.row_ptr[b]; e < host.row_ptr[b + 1]; ++e)
          if (keep[e]) want_row.push_back({host.latent[e], host.value[e]});
        for (std::int64_t e = got.row_ptr[b]; e < got.row_ptr[b + 1]; ++e)
          got_row.push_back({got.latent[e], got.value[e]});
        ASSERT_EQ(got_row, want_row) << "row " << b;
      }
      EXPECT_EQ(smallest, want_smallest);
    }
  }
}

CROSSCODER_INSTANTIATE_FOR_BACKENDS(Selections);

}  // namespace
}  // namespace crosscoder
