#include "crosscoder/model.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "crosscoder/backend_ops.hpp"
#include "crosscoder/communicator.hpp"
#include "crosscoder/error.hpp"
#include "random.hpp"
#include "validation.hpp"

namespace crosscoder {

Crosscoder::Crosscoder(const CrosscoderConfig& config, std::shared_ptr<Backend> backend)
    : config_(config), backend_(std::move(backend)) {
  config_.validate();
  if (!backend_) throw Error("Crosscoder: no backend given");
  const auto F = static_cast<std::size_t>(config_.latents);
  const auto D = static_cast<std::size_t>(config_.input_width());
  parameters_.encoder_weight = DeviceArray<float>(backend_, F * D);
  parameters_.encoder_bias = DeviceArray<float>(backend_, F);
  parameters_.decoder_weight = DeviceArray<float>(backend_, F * D);
  parameters_.decoder_bias = DeviceArray<float>(backend_, D);
  if (config_.activation == Activation::jumprelu) {
    parameters_.threshold = DeviceArray<float>(backend_, F);
  }
  normaliser_.scale.assign(config_.normalisation == Normalisation::per_channel
                               ? D
                               : static_cast<std::size_t>(config_.sources),
                           1.0f);
  normaliser_.mean.assign(D, 0.0f);
  normaliser_scale_ = DeviceArray<float>(backend_, D);
  normaliser_mean_ = DeviceArray<float>(backend_, D);
  upload_normaliser();
}

namespace {

// The config of latents [first, first + count) of a crosscoder configured as `c`.
CrosscoderConfig slice_config(const CrosscoderConfig& c, std::int64_t first, std::int64_t count) {
  if (first < 0 || count < 1 || first + count > c.latents) {
    throw Error(fmt::format("latent slice [{}, {}) is not inside the crosscoder's {} latents",
                            first, first + count, c.latents));
  }
  CrosscoderConfig shard_config = c;
  shard_config.latents = static_cast<int>(count);
  // Latents are ordered shared, then each model's exclusive block: a contiguous slice is the
  // same, with its own block sizes.
  for (std::size_t m = 0; m < c.exclusive.size(); ++m) {
    const int owner = static_cast<int>(m);
    shard_config.exclusive[m] = 0;
    for (std::int64_t f = first; f < first + count; ++f)
      shard_config.exclusive[m] += c.exclusive_owner(static_cast<int>(f)) == owner ? 1 : 0;
  }
  // Matryoshka groups likewise: each group's latents inside the slice (perhaps none).
  std::int64_t group_first = 0;
  for (int& size : shard_config.matryoshka_groups) {
    const std::int64_t group_end = group_first + size;
    size = static_cast<int>(std::max<std::int64_t>(
        0, std::min(group_end, first + count) - std::max(group_first, first)));
    group_first = group_end;
  }
  try {
    shard_config.validate();
  } catch (const Error& error) {
    throw Error(fmt::format("latent slice of {} latents: {}", count, error.what()));
  }
  return shard_config;
}

// Rows [first, first + count) of the initial decoder of a crosscoder configured as `whole`,
// drawn from `seed`: unit-norm rows of normals (zero for the sources an exclusive latent does
// not use), drawn from one stream in latent order, so a slice draws and discards the rows
// before it.
std::vector<float> initial_decoder_rows(const CrosscoderConfig& whole, std::uint64_t seed,
                                        std::int64_t first, std::int64_t count) {
  const std::int64_t D = whole.input_width();
  const int d = whole.width;
  detail::Random random(seed);
  std::vector<float> decoder(static_cast<std::size_t>(count * D), 0.0f);
  std::vector<float> row(static_cast<std::size_t>(D));
  for (std::int64_t f = 0; f < first + count; ++f) {
    double squared_norm = 0.0;
    std::fill(row.begin(), row.end(), 0.0f);
    for (int m = 0; m < whole.sources; ++m) {
      if (!whole.latent_uses_source(static_cast<int>(f), m)) continue;
      for (int i = 0; i < d; ++i) {
        const double value = random.normal();
        row[static_cast<std::size_t>(m * d + i)] = static_cast<float>(value);
        squared_norm += value * value;
      }
    }
    if (f < first) continue;
    const double inverse_norm = 1.0 / std::sqrt(squared_norm);
    for (std::int64_t j = 0; j < D; ++j) {
      decoder[static_cast<std::size_t>((f - first) * D + j)] =
          static_cast<float>(row[static_cast<std::size_t>(j)] * inverse_norm);
    }
  }
  return decoder;
}

}  // namespace

Crosscoder Crosscoder::latent_slice(const Crosscoder& full, std::int64_t first,
                                    std::int64_t count) {
  const CrosscoderConfig& c = full.config();
  Crosscoder shard(slice_config(c, first, count), full.backend());
  const auto D = static_cast<std::size_t>(c.input_width());
  const auto rows_of = [&](const DeviceArray<float>& array, std::size_t width) {
    const std::vector<float> all = array.download();
    return std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>(first * width),
                              all.begin() + static_cast<std::ptrdiff_t>((first + count) * width));
  };
  const CrosscoderParameters& p = full.parameters();
  CrosscoderParameters& q = shard.parameters_;
  q.encoder_weight.upload(rows_of(p.encoder_weight, D));
  q.encoder_bias.upload(rows_of(p.encoder_bias, 1));
  q.decoder_weight.upload(rows_of(p.decoder_weight, D));
  q.decoder_bias.upload(p.decoder_bias.download());
  if (!p.threshold.empty()) q.threshold.upload(rows_of(p.threshold, 1));
  if (full.normaliser().fitted) shard.set_normaliser(full.normaliser());
  shard.set_batch_threshold(full.batch_threshold());
  return shard;
}

namespace {

// Every rank's sizes of the same `blocks` consecutive partitions of its latents, summed in rank
// order. Joined in rank order the ranks' latents must keep the partitions' order: a rank's
// latents of partition b may not follow an earlier rank's of a later partition. `name(b)` names
// partition b in the error.
std::vector<int> join_partitions(const std::vector<std::int64_t>& sizes, std::size_t blocks,
                                 const std::function<std::string(std::size_t)>& name) {
  const std::size_t ranks = blocks == 0 ? 0 : sizes.size() / blocks;
  std::vector<int> total(blocks, 0);
  std::size_t highest = 0;
  for (std::size_t r = 0; r < ranks; ++r) {
    for (std::size_t b = 0; b < blocks; ++b) {
      const std::int64_t size = sizes[r * blocks + b];
      if (size == 0) continue;
      if (b < highest) {
        throw Error(fmt::format(
            "joined latent shards: rank {}'s latents ({}) come after latents of a later "
            "partition; shards must be contiguous slices in rank order",
            r, name(b)));
      }
      highest = b;
      total[b] += static_cast<int>(size);
    }
  }
  return total;
}

}  // namespace

CrosscoderConfig Crosscoder::joined_slice_config(const CrosscoderConfig& shard,
                                                 Communicator& ranks) {
  const std::vector<std::int64_t> latents = ranks.all_gather(std::int64_t{shard.latents});
  CrosscoderConfig whole = shard;
  const std::int64_t total = std::accumulate(latents.begin(), latents.end(), std::int64_t{0});
  if (total > std::numeric_limits<int>::max())
    throw Error(fmt::format("joined latent shards: {} latents in all", total));
  whole.latents = static_cast<int>(total);
  // The partitions: the shared latents, then each model's exclusive block.
  std::vector<std::int64_t> partitions{shard.shared_latents()};
  partitions.insert(partitions.end(), shard.exclusive.begin(), shard.exclusive.end());
  const std::vector<std::int64_t> all_partitions = ranks.all_gather(partitions);
  if (all_partitions.size() != partitions.size() * latents.size())
    throw Error("joined latent shards: the shards' exclusive blocks differ in number");
  const std::vector<int> joined =
      join_partitions(all_partitions, partitions.size(), [](std::size_t b) {
        return b == 0 ? std::string("shared") : fmt::format("model {}", b - 1);
      });
  std::copy(joined.begin() + 1, joined.end(), whole.exclusive.begin());
  // Nested (Matryoshka) groups are in latent order too.
  const std::vector<std::int64_t> groups = ranks.all_gather(
      std::vector<std::int64_t>(shard.matryoshka_groups.begin(), shard.matryoshka_groups.end()));
  if (groups.size() != shard.matryoshka_groups.size() * latents.size())
    throw Error("joined latent shards: the shards' Matryoshka groups differ in number");
  whole.matryoshka_groups =
      join_partitions(groups, shard.matryoshka_groups.size(),
                      [](std::size_t g) { return fmt::format("Matryoshka group {}", g); });
  whole.validate();
  return whole;
}

// The whole crosscoder from `shard` and its per-latent arrays joined over the shards
// (`joined`: encoder weight, encoder bias, decoder weight, threshold); the decoder bias, the
// normaliser and the threshold are the shard's.
Crosscoder Crosscoder::from_joined_arrays(const Crosscoder& shard, const CrosscoderConfig& config,
                                          const std::vector<std::vector<float>>& joined) {
  Crosscoder whole(config, shard.backend());
  CrosscoderParameters& q = whole.parameters_;
  std::size_t i = 0;
  for (DeviceArray<float>* to :
       {&q.encoder_weight, &q.encoder_bias, &q.decoder_weight, &q.threshold}) {
    const std::vector<float>& values = joined[i++];
    if (to->empty()) continue;
    if (values.size() != to->size())
      throw Error(fmt::format("joined latent shards: {} values for {}", values.size(), to->size()));
    to->upload(values);
  }
  q.decoder_bias.upload(shard.parameters().decoder_bias.download());
  if (shard.normaliser().fitted) whole.set_normaliser(shard.normaliser());
  whole.set_batch_threshold(shard.batch_threshold());
  return whole;
}

namespace {

// Per-latent arrays of a shard, in the order from_joined_arrays takes them, each joined over
// the ranks by `join` (empty arrays stay empty).
std::vector<std::vector<float>> joined_arrays(
    const CrosscoderParameters& p,
    const std::function<std::vector<float>(std::vector<float>)>& join) {
  std::vector<std::vector<float>> joined;
  for (const DeviceArray<float>* from :
       {&p.encoder_weight, &p.encoder_bias, &p.decoder_weight, &p.threshold})
    joined.push_back(from->empty() ? std::vector<float>() : join(from->download()));
  return joined;
}

}  // namespace

Crosscoder Crosscoder::join_latent_slices(const Crosscoder& shard, Communicator& ranks) {
  const CrosscoderConfig config = joined_slice_config(shard.config(), ranks);
  return from_joined_arrays(shard, config,
                            joined_arrays(shard.parameters(), [&](std::vector<float> values) {
                              return ranks.all_gather(values);
                            }));
}

std::optional<Crosscoder> Crosscoder::gather_latent_slices(const Crosscoder& shard,
                                                           Communicator& ranks, int root) {
  const CrosscoderConfig config = joined_slice_config(shard.config(), ranks);
  const std::vector<std::vector<float>> joined = joined_arrays(
      shard.parameters(), [&](std::vector<float> values) { return ranks.gather(values, root); });
  if (ranks.rank() != root) return std::nullopt;
  return from_joined_arrays(shard, config, joined);
}

Crosscoder::Crosscoder(const CrosscoderConfig& config, std::shared_ptr<Backend> backend,
                       std::uint64_t seed)
    : Crosscoder(config, std::move(backend)) {
  initialise(initial_decoder_rows(config_, seed, 0, config_.latents));
}

Crosscoder Crosscoder::initial_latent_slice(const CrosscoderConfig& config,
                                            std::shared_ptr<Backend> backend, std::uint64_t seed,
                                            std::int64_t first, std::int64_t count) {
  config.validate();
  if (first == 0 && count == config.latents) return Crosscoder(config, std::move(backend), seed);
  Crosscoder shard(slice_config(config, first, count), std::move(backend));
  shard.initialise(initial_decoder_rows(config, seed, first, count));
  return shard;
}

void Crosscoder::initialise(const std::vector<float>& decoder) {
  const auto F = static_cast<std::int64_t>(config_.latents);
  parameters_.decoder_weight.upload(decoder);
  // Tied initialisation (encoder = decoderᵀ) starts every latent as a matched filter.
  parameters_.encoder_weight.upload(decoder);
  parameters_.encoder_bias.zero();
  parameters_.decoder_bias.zero();
  if (!parameters_.threshold.empty()) {
    parameters_.threshold.upload(
        std::vector<float>(static_cast<std::size_t>(F), config_.jumprelu_initial_threshold));
  }
}

std::vector<float> Normaliser::column_scales(int sources, int width) const {
  const auto D = static_cast<std::size_t>(sources) * static_cast<std::size_t>(width);
  if (scale.size() == D) return scale;
  if (scale.size() != static_cast<std::size_t>(sources)) {
    throw Error(fmt::format("normaliser: scale has {} values, neither {} sources nor {} columns",
                            scale.size(), sources, D));
  }
  std::vector<float> columns(D);
  for (std::size_t j = 0; j < D; ++j) columns[j] = scale[j / static_cast<std::size_t>(width)];
  return columns;
}

void Crosscoder::upload_normaliser() {
  normaliser_scale_.upload(normaliser_.column_scales(config_.sources, config_.width));
  normaliser_mean_.upload(normaliser_.mean);
}

void Crosscoder::set_normaliser(Normaliser normaliser) {
  const auto D = static_cast<std::size_t>(config_.input_width());
  const bool per_channel = config_.normalisation == Normalisation::per_channel;
  const std::size_t scales = per_channel ? D : static_cast<std::size_t>(config_.sources);
  if (normaliser.scale.size() != scales || normaliser.mean.size() != D) {
    throw Error(fmt::format("normaliser ({}): expected scale [{}] and mean [{}], got [{}] and [{}]",
                            to_string(config_.normalisation), scales, D, normaliser.scale.size(),
                            normaliser.mean.size()));
  }
  for (std::size_t j = 0; j < scales; ++j) {
    if (!(normaliser.scale[j] > 0.0f) || !std::isfinite(normaliser.scale[j])) {
      throw Error(fmt::format(
          "normaliser: scale of source {}{} must be positive and finite, got {}",
          per_channel ? j / static_cast<std::size_t>(config_.width) : j,
          per_channel ? fmt::format(" channel {}", j % static_cast<std::size_t>(config_.width))
                      : std::string(),
          normaliser.scale[j]));
    }
  }
  for (std::size_t j = 0; j < D; ++j) {
    if (!std::isfinite(normaliser.mean[j])) {
      throw Error(
          fmt::format("normaliser: mean of column {} is not finite ({})", j, normaliser.mean[j]));
    }
  }
  normaliser_ = std::move(normaliser);
  normaliser_.fitted = true;
  upload_normaliser();
}

namespace {

// The study's z-score per channel: μ the column mean, σ the unbiased standard deviation clamped
// at 1e-6 as its activation cache does, in float64 over two passes.
Normaliser fit_per_channel(std::span<const float> x, std::int64_t rows, std::int64_t D) {
  if (rows < 2) {
    throw Error(
        fmt::format("normaliser (per_channel): needs at least 2 rows for a standard "
                    "deviation, got {}",
                    rows));
  }
  std::vector<double> mean(static_cast<std::size_t>(D), 0.0), squares(mean.size(), 0.0);
  for (std::int64_t b = 0; b < rows; ++b)
    for (std::int64_t j = 0; j < D; ++j) mean[j] += x[b * D + j];
  for (double& m : mean) m /= static_cast<double>(rows);
  for (std::int64_t b = 0; b < rows; ++b) {
    for (std::int64_t j = 0; j < D; ++j) {
      const double centred = x[b * D + j] - mean[j];
      squares[j] += centred * centred;
    }
  }
  Normaliser fitted;
  fitted.scale.resize(mean.size());
  fitted.mean.resize(mean.size());
  for (std::size_t j = 0; j < mean.size(); ++j) {
    const double sigma = std::max(std::sqrt(squares[j] / static_cast<double>(rows - 1)), 1e-6);
    fitted.scale[j] = static_cast<float>(1.0 / sigma);
    fitted.mean[j] = static_cast<float>(mean[j]);
  }
  return fitted;
}

}  // namespace

void Crosscoder::fit_normaliser(std::span<const float> x, std::int64_t rows) {
  const int M = config_.sources;
  const int d = config_.width;
  const std::int64_t D = config_.input_width();
  detail::check_batch(x, rows, M, d, "normaliser data");
  if (rows < 1) throw Error("normaliser: needs at least one row");
  Normaliser fitted;
  fitted.scale.assign(static_cast<std::size_t>(M), 1.0f);
  fitted.mean.assign(static_cast<std::size_t>(D), 0.0f);
  if (config_.normalisation == Normalisation::none) {
    set_normaliser(std::move(fitted));
    return;
  }
  std::vector<double> mean(static_cast<std::size_t>(D), 0.0);
  if (config_.normalisation == Normalisation::per_channel) {
    set_normaliser(fit_per_channel(x, rows, D));
    return;
  }
  if (config_.normalisation == Normalisation::mean_and_scale) {
    for (std::int64_t b = 0; b < rows; ++b) {
      for (std::int64_t j = 0; j < D; ++j) mean[j] += x[b * D + j];
    }
    for (std::int64_t j = 0; j < D; ++j) {
      mean[j] /= static_cast<double>(rows);
      fitted.mean[j] = static_cast<float>(mean[j]);
    }
  }
  for (int m = 0; m < M; ++m) {
    double energy = 0.0;
    for (std::int64_t b = 0; b < rows; ++b) {
      for (int i = 0; i < d; ++i) {
        const double centred = x[b * D + m * d + i] - static_cast<double>(fitted.mean[m * d + i]);
        energy += centred * centred;
      }
    }
    const double mean_squared_norm = energy / static_cast<double>(rows);
    if (!(mean_squared_norm > 0.0)) {
      throw Error(fmt::format("normaliser: source {} has zero energy over {} rows; cannot scale it",
                              m, rows));
    }
    fitted.scale[m] = static_cast<float>(std::sqrt(static_cast<double>(d) / mean_squared_norm));
  }
  set_normaliser(std::move(fitted));
}

void Crosscoder::normalise(const float* x, std::int64_t rows, float* xn) const {
  backend_->ops().normalise(x, rows, config_.sources, config_.width, normaliser_scale_.data(),
                            normaliser_mean_.data(), xn);
}

void Crosscoder::latent_score_weights(float* weights) const {
  const auto F = static_cast<std::size_t>(config_.latents);
  const auto M = static_cast<std::size_t>(config_.sources);
  DeviceArray<float> norms(backend_, F * M);
  backend_->ops().decoder_norms(parameters_.decoder_weight.data(), config_.latents, config_.sources,
                                config_.width, norms.data());
  // Summing over sources is a tiny [F, M] reduction; do it on the host.
  const std::vector<float> host = norms.download();
  std::vector<float> sums(F, 0.0f);
  for (std::size_t f = 0; f < F; ++f) {
    for (std::size_t m = 0; m < M; ++m) sums[f] += host[f * M + m];
  }
  backend_->copy_to_device(weights, sums.data(), F * sizeof(float));
}

void Crosscoder::preactivations(const float* x, std::int64_t rows, float* xn, float* pre) const {
  normalise(x, rows, xn);
  // Every selection but JumpReLU's (whose straight-through support reaches below zero) sees
  // only max(pre, 0), so the GEMM's epilogue may clip.
  const bool rectify = config_.activation != Activation::jumprelu;
  backend_->ops().encode(xn, rows, config_.input_width(), parameters_.encoder_weight.data(),
                         parameters_.encoder_bias.data(), config_.latents, rectify, pre);
}

SelectionRequest Crosscoder::selection_request(int k, bool training,
                                               DeviceArray<float>& score_weights) const {
  SelectionRequest request;
  switch (config_.activation) {
    case Activation::relu:
      request.selection = Selection::positive;
      break;
    case Activation::topk:
      request.selection = Selection::per_row_top_k;
      request.k = k;
      break;
    case Activation::batchtopk:
      if (score_weights.size() != static_cast<std::size_t>(config_.latents)) {
        score_weights = DeviceArray<float>(backend_, static_cast<std::size_t>(config_.latents));
      }
      latent_score_weights(score_weights.data());
      request.weight = score_weights.data();
      request.k = k;
      if (!training && batch_threshold_ >= 0.0f) {
        request.selection = Selection::batch_threshold;
        request.scalar_threshold = batch_threshold_;
      } else {
        request.selection = Selection::per_batch_top_k;
      }
      break;
    case Activation::jumprelu:
      request.selection = Selection::jump_threshold;
      request.threshold = parameters_.threshold.data();
      break;
  }
  return request;
}

HostSparseCodes Crosscoder::encode(std::span<const float> x, std::int64_t rows) const {
  detail::check_batch(x, rows, config_.sources, config_.width, "encode input");
  DeviceArray<float> raw(backend_, x);
  DeviceArray<float> xn(backend_, static_cast<std::size_t>(rows * config_.input_width()));
  DeviceArray<float> pre(backend_, static_cast<std::size_t>(rows * config_.latents));
  preactivations(raw.data(), rows, xn.data(), pre.data());
  DeviceArray<float> score_weights;
  const SelectionRequest request = selection_request(config_.k, /*training=*/false, score_weights);
  return HostSparseCodes::from(
      backend_->ops().select(pre.data(), rows, config_.latents, request, nullptr));
}

std::vector<float> Crosscoder::reconstruct(std::span<const float> x, std::int64_t rows) const {
  const HostSparseCodes host_codes = encode(x, rows);
  const std::int64_t D = config_.input_width();
  SparseCodes codes;
  codes.rows = rows;
  codes.nnz = static_cast<std::int64_t>(host_codes.latent.size());
  codes.row_ptr =
      DeviceArray<std::int64_t>(backend_, std::span<const std::int64_t>(host_codes.row_ptr));
  codes.latent =
      DeviceArray<std::int32_t>(backend_, std::span<const std::int32_t>(host_codes.latent));
  codes.value = DeviceArray<float>(backend_, std::span<const float>(host_codes.value));
  DeviceArray<float> xn_hat(backend_, static_cast<std::size_t>(rows * D));
  backend_->ops().decode(codes, parameters_.decoder_weight.data(), parameters_.decoder_bias.data(),
                         D, xn_hat.data());
  DeviceArray<float> out(backend_, static_cast<std::size_t>(rows * D));
  backend_->ops().denormalise(xn_hat.data(), rows, config_.sources, config_.width,
                              normaliser_scale_.data(), normaliser_mean_.data(), out.data());
  return out.download();
}

Crosscoder::Inference Crosscoder::infer(std::span<const float> x, std::int64_t rows) const {
  detail::check_batch(x, rows, config_.sources, config_.width, "inference input");
  const std::int64_t D = config_.input_width();
  DeviceArray<float> raw(backend_, x);
  DeviceArray<float> xn(backend_, static_cast<std::size_t>(rows * D));
  DeviceArray<float> pre(backend_, static_cast<std::size_t>(rows * config_.latents));
  preactivations(raw.data(), rows, xn.data(), pre.data());
  DeviceArray<float> score_weights;
  const SparseCodes codes = backend_->ops().select(
      pre.data(), rows, config_.latents,
      selection_request(config_.k, /*training=*/false, score_weights), nullptr);
  DeviceArray<float> xn_hat(backend_, static_cast<std::size_t>(rows * D));
  backend_->ops().decode(codes, parameters_.decoder_weight.data(), parameters_.decoder_bias.data(),
                         D, xn_hat.data());
  Inference result;
  result.rows = rows;
  result.codes = HostSparseCodes::from(codes);
  result.normalised_input = xn.download();
  result.normalised_reconstruction = xn_hat.download();
  return result;
}

std::vector<float> Crosscoder::decoder_vectors() const {
  return parameters_.decoder_weight.download();
}

std::vector<float> Crosscoder::raw_decoder_vectors() const {
  std::vector<float> vectors = decoder_vectors();
  const std::int64_t D = config_.input_width();
  const std::vector<float> scales = normaliser_.column_scales(config_.sources, config_.width);
  for (std::int64_t f = 0; f < config_.latents; ++f) {
    for (int m = 0; m < config_.sources; ++m) {
      for (int i = 0; i < config_.width; ++i) {
        vectors[f * D + m * config_.width + i] /= scales[m * config_.width + i];
      }
    }
  }
  return vectors;
}

std::vector<float> Crosscoder::decoder_norms() const {
  const auto F = static_cast<std::size_t>(config_.latents);
  const auto M = static_cast<std::size_t>(config_.sources);
  DeviceArray<float> norms(backend_, F * M);
  backend_->ops().decoder_norms(parameters_.decoder_weight.data(), config_.latents, config_.sources,
                                config_.width, norms.data());
  return norms.download();
}

std::vector<float> Crosscoder::relative_decoder_norms() const {
  std::vector<float> norms = decoder_norms();
  const auto M = static_cast<std::size_t>(config_.sources);
  for (std::size_t f = 0; f < static_cast<std::size_t>(config_.latents); ++f) {
    float total = 0.0f;
    for (std::size_t m = 0; m < M; ++m) total += norms[f * M + m];
    for (std::size_t m = 0; m < M; ++m)
      norms[f * M + m] = total > 0.0f ? norms[f * M + m] / total : 0.0f;
  }
  return norms;
}

}  // namespace crosscoder
