#pragma once
/// @file backend_ops.hpp
/// The crosscoder's fused operations that a backend implements: the encoder GEMM, the
/// selections, the sparse decoder fused with the loss, the sparse backward, Adam under row
/// constraints, and the small passes around them. Row-major float32 in the backend's memory.
/// Reached through Backend::ops(); the CPU backend (src/backends/cpu) and the CUDA backend
/// (cuda/) implement them file for file.

#include <cstddef>
#include <cstdint>

#include "crosscoder/backend.hpp"

namespace crosscoder {

struct SparseCodes;

/// How BackendOps::select picks the active latents from pre-activations `pre[rows, F]`.
enum class Selection {
  positive,         ///< every latent with pre > 0, value pre (ReLU)
  per_row_top_k,    ///< the k largest max(pre, 0) of each row (TopK); exactly rows·k entries
  per_batch_top_k,  ///< the rows·k largest max(pre, 0)·weight[f] of the batch (BatchTopK);
                    ///< exactly rows·k entries; value max(pre, 0)
  batch_threshold,  ///< every latent with max(pre, 0)·weight[f] > threshold (BatchTopK inference)
  jump_threshold,   ///< every latent with pre > threshold[f], value pre (JumpReLU)
  near_threshold,   ///< every latent with |pre − threshold[f]| < bandwidth / 2, value pre
                    ///< (the JumpReLU straight-through estimator's support)
};

/// Parameters of BackendOps::select. Ties are broken towards the lower latent (and row) index.
struct SelectionRequest {
  Selection selection = Selection::positive;
  std::int64_t k = 0;                ///< per_row_top_k: per row; per_batch_top_k: per row (×rows)
  const float* weight = nullptr;     ///< [F] score weight (per_batch_top_k, batch_threshold)
  const float* threshold = nullptr;  ///< [F] (jump_threshold, near_threshold)
  float scalar_threshold = 0.0f;     ///< batch_threshold
  float bandwidth = 0.0f;            ///< near_threshold
  const std::uint8_t* allowed = nullptr;  ///< [F] mask in backend memory: only latents with a
                                          ///< non-zero entry compete (AuxK); null = all
  /// per_row_top_k: leave out the selected entries whose value is 0, so that a row may hold
  /// fewer than k (AuxK, where such entries add nothing to the loss or its gradient).
  bool positive_only = false;
};

/// How the rows of a [rows, row_width] parameter are constrained, in the optimiser's pass and in
/// the gradient norm that clipping uses: the decoder-norm handling of TopK/BatchTopK (Gao et al.
/// 2024) and the dedicated-feature partitions (a model-exclusive latent has no weights for the
/// sources it does not own).
struct RowConstraint {
  std::int64_t row_width = 0;  ///< 0: no constraint (then the fields below must be unset)
  /// Remove from each gradient row its component along the parameter row (over the row's
  /// trainable blocks) before the parameter uses it.
  bool remove_parallel = false;
  /// Rescale each non-zero row to unit L2 norm right after its update.
  bool unit_norm = false;
  /// [rows · blocks] in backend memory, or null (everything trainable): a zero entry freezes
  /// that block of the row, whose parameter and moments are then left untouched and whose
  /// gradient counts as zero.
  const std::uint8_t* trainable = nullptr;
  int blocks = 1;  ///< blocks per row, each row_width / blocks wide
};

/// One Adam step's scalars (Kingma & Ba, with bias correction).
struct AdamStep {
  float learning_rate = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float epsilon = 1e-8f;
  std::int64_t step = 1;        ///< 1-based step number, for bias correction
  float gradient_scale = 1.0f;  ///< multiplies the gradient first (gradient-norm clipping)
  RowConstraint rows;           ///< applied in the same pass as the update
};

/// The inputs and outputs of BackendOps::reconstruct: the sparse decoder fused with the per-source
/// squared error against a target and its gradient.
struct ReconstructionRequest {
  const float* decoder = nullptr;  ///< [F, D]
  const float* bias = nullptr;     ///< [D] or null
  const float* target = nullptr;   ///< [rows, D]
  int sources = 1;                 ///< M; D = M · width
  int width = 0;
  float gradient_scale = 1.0f;
  float* recon = nullptr;  ///< [rows, D] receives bias + Σ value·decoder row
  float* grad = nullptr;   ///< [rows, D] receives gradient_scale · (recon − target), or null
  double* squared_error = nullptr;  ///< host [M]: Σ_b ‖recon_bm − target_bm‖²
  double* target_energy = nullptr;  ///< host [M] or null: Σ_b ‖target_bm‖²
};

/// The inputs and outputs of BackendOps::sparse_backward: one pass per active latent through the
/// sparse decoder, the activation and the sparse encoder.
struct SparseBackwardRequest {
  const float* grad_out = nullptr;  ///< [rows, D] ∂L/∂recon
  const float* decoder = nullptr;   ///< [F, D]
  const float* xn = nullptr;        ///< [rows, D] the encoder's input
  std::int64_t latents = 0;         ///< F
  std::int64_t width = 0;           ///< D
  /// [F] in backend memory or null: added to ∂L/∂a of every entry (a per-latent L1 weight).
  const float* value_gradient_offset = nullptr;
  /// false: d_decoder, d_encoder and d_bias are overwritten, latents without entries getting
  /// zero (no separate zeroing pass); true: the pass adds to them (AuxK after the main codes).
  bool accumulate = false;
  float* d_decoder = nullptr;  ///< [F, D] Σ_e value[e]·grad_out[row(e)], or null
  float* d_encoder = nullptr;  ///< [F, D] Σ_e ∂L/∂pre[e]·xn[row(e)]
  float* d_bias = nullptr;     ///< [F]    Σ_e ∂L/∂pre[e]
  float* d_value = nullptr;    ///< [nnz] receives ∂L/∂a = decoder row·grad_out row, or null
  /// [F·statistics_blocks·4] doubles in backend memory, or null. For latent f and block m (of
  /// statistics_blocks equal parts of a row), at ((f·blocks + m)·4 + i): the sums over that
  /// block of d_encoder², d_decoder², d_decoder·decoder and decoder² (i = 0…3), taken from the
  /// rows as this pass leaves them. Latents without entries get zeros when overwriting and
  /// keep theirs when accumulating. The clipping norm under any RowConstraint follows from
  /// these, so the optimiser need not read the gradients twice.
  double* row_statistics = nullptr;
  int statistics_blocks = 1;  ///< must divide width
};

/// The operations. D = M·d is the concatenated input width, F the number of latents.
class BackendOps {
 public:
  virtual ~BackendOps() = default;

  /// xn[b, j] = (x[b, j] − mean[j]) · scale[j] over the D = M·d columns j (one scale per
  /// column: per-source scales are repeated d times). `mean` may be null.
  virtual void normalise(const float* x, std::int64_t rows, int sources, int width,
                         const float* scale, const float* mean, float* xn) = 0;
  /// Inverse of normalise: x[b, j] = xn[b, j] / scale[j] + mean[j].
  virtual void denormalise(const float* xn, std::int64_t rows, int sources, int width,
                           const float* scale, const float* mean, float* x) = 0;
  /// The dense encoder step: pre[b, f] = Σ_j xn[b, j]·encoder[f, j] + bias[f], and, when
  /// `rectify`, max(pre, 0) in the same pass (the GEMM's epilogue on CUDA), for the variants
  /// whose selections see only max(pre, 0). `encoder` is [F, D] (one contiguous row per latent).
  virtual void encode(const float* xn, std::int64_t rows, std::int64_t input_width,
                      const float* encoder, const float* bias, std::int64_t latents, bool rectify,
                      float* pre) = 0;
  /// Picks active latents from pre[rows, F] as `request` says.
  /// @param min_selected_score if not null, receives the smallest positive selected score
  ///        (per_batch_top_k: max(pre, 0)·weight; used for BatchTopK's inference threshold),
  ///        or a negative number when nothing positive was selected.
  virtual SparseCodes select(const float* pre, std::int64_t rows, std::int64_t latents,
                             const SelectionRequest& request, float* min_selected_score) = 0;
  /// The `count` highest-scoring entries of `codes` (score value·weight[latent], or value when
  /// `weight` is null; ties go to the earlier entry), as codes over the same rows that keep
  /// the entries' order; every entry when count ≥ nnz. The last step of a BatchTopK selection
  /// made tile by tile: `codes` holds each tile's best candidates, and the result equals
  /// per_batch_top_k over the whole batch.
  /// @param min_selected_score as for select (per_batch_top_k).
  virtual SparseCodes select_top_entries(const SparseCodes& codes, std::int64_t count,
                                         const float* weight, float* min_selected_score) = 0;
  /// Sparse decoder: out[b, :] = bias + Σ_e value[e]·decoder[latent[e], :] over row b's
  /// entries. `decoder` is [F, D]; `bias` [D] may be null.
  virtual void decode(const SparseCodes& codes, const float* decoder, const float* bias,
                      std::int64_t output_width, float* out) = 0;
  /// Squared error per source and its gradient: sse[m] = Σ_b ‖recon_bm − target_bm‖² (host
  /// array of M doubles); grad = gradient_scale·(recon − target) when grad is not null.
  virtual void squared_error(const float* recon, const float* target, std::int64_t rows,
                             int sources, int width, float gradient_scale, float* grad,
                             double* sse) = 0;
  /// The sparse decoder fused with the squared error (one pass over each row): recon, its
  /// per-source squared error against target, the gradient, and optionally the target's
  /// per-source energy (for the fraction of variance explained), as `request` says.
  virtual void reconstruct(const SparseCodes& codes, const ReconstructionRequest& request) = 0;
  /// The training step's backward pass below the reconstruction, grouped by latent: for each
  /// entry e of latent f, ∂L/∂a[e] = decoder[f]·grad_out[row(e)] (+ offset[f]) and
  /// ∂L/∂pre[e] = ∂L/∂a[e] where value[e] > 0, else 0; the decoder, encoder and encoder-bias
  /// gradients as `request` says. Each decoder and encoder gradient row is written once.
  virtual void sparse_backward(const SparseCodes& codes, const SparseBackwardRequest& request) = 0;

  /// Sparse decoder backward for upstream gradient grad_out[rows, D] (JumpReLU's threshold
  /// estimator; the training step uses the fused sparse_backward):
  /// d_value[e] = decoder[latent[e]]·grad_out[row(e)], and, when d_decoder is not null,
  /// d_decoder[latent[e]] += value[e]·grad_out[row(e)] (reading each decoder row once).
  virtual void decoder_backward(const SparseCodes& codes, const float* grad_out,
                                const float* decoder, std::int64_t output_width, float* d_value,
                                float* d_decoder) = 0;
  /// Per-latent sums of the activation values: sums[f] = Σ_{e: latent[e]=f} value[e];
  /// counts[f] (if not null) = number of entries. Both [F] host arrays, overwritten.
  virtual void latent_totals(const SparseCodes& codes, std::int64_t latents, float* sums,
                             std::int64_t* counts) = 0;
  /// Per-source decoder norms: norms[f, m] = ‖decoder[f, m·d : (m+1)·d]‖.
  virtual void decoder_norms(const float* decoder, std::int64_t latents, int sources, int width,
                             float* norms) = 0;
  /// target[f, m·d + i] += factor[f·M + m]·source[f, m·d + i] for every latent f and source m:
  /// the gradient of the ReLU crosscoder's decoder-norm-weighted L1 penalty. `factor` [F·M] is
  /// in backend memory.
  virtual void add_scaled_blocks(const float* source, const float* factor, std::int64_t latents,
                                 int sources, int width, float* target) = 0;
  /// Column sums of x[rows, width] into sums[width] (overwritten), in double precision (a host
  /// array).
  virtual void column_sums(const float* x, std::int64_t rows, std::int64_t width, double* sums) = 0;
  /// x[i] = max(x[i], lower) for n numbers.
  virtual void clamp_min(float* x, std::int64_t n, float lower) = 0;
  /// Sum of squares of n numbers, in double precision.
  virtual double sum_of_squares(const float* x, std::int64_t n) = 0;
  /// Σ g² over the gradient as adam_update with the same constraint uses it (frozen blocks left
  /// out, the component along the parameter row removed), in double precision, without
  /// changing the gradient.
  /// @throws Error when the constraint does not fit n (see adam_update).
  virtual double constrained_sum_of_squares(const float* gradient, const float* parameter,
                                            std::int64_t n, const RowConstraint& constraint) = 0;
  /// One fused Adam update of n parameters (m and v are the moment estimates), with the moments
  /// flushed to zero below 1e-30 and step.rows applied in the same pass.
  /// @throws Error when step.rows.row_width does not divide n or blocks does not divide it, or
  ///         a row option is set without a row width.
  virtual void adam_update(float* parameter, const float* gradient, float* m, float* v,
                           std::int64_t n, const AdamStep& step) = 0;
};

}  // namespace crosscoder
