#pragma once
/// @file backend.hpp
/// The compute backend interface: device memory plus the crosscoder's fused operations.
///
/// A Backend owns a device (the host for the CPU backend), its memory, and on CUDA a
/// stream and a cuBLAS handle. Model code holds its tensors in DeviceArray objects
/// allocated on one backend and calls only the virtual operations below, so the CPU
/// and CUDA backends are interchangeable and one test suite runs over both.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace crosscoder {

struct SparseCodes;

/// The kinds of backend this library knows about.
enum class BackendKind { cpu, cuda };

/// "cpu" or "cuda".
std::string_view to_string(BackendKind kind) noexcept;

/// Parses "cpu" or "cuda"; throws Error naming the text otherwise.
BackendKind parse_backend_kind(std::string_view text);

/// The arithmetic of the encoder GEMM, the one dense product of a training step.
enum class MatmulPrecision {
  float32,   ///< float32 operands and accumulation
  tf32,      ///< float32 in memory, TF32 tensor-core products (10-bit mantissa), float32 sums
  bfloat16,  ///< bfloat16 copies of the operands, float32 accumulation; weights stay float32
};

/// "float32", "tf32" or "bf16".
std::string_view to_string(MatmulPrecision precision) noexcept;

/// Parses "float32", "tf32" or "bf16"; throws Error naming the text otherwise.
MatmulPrecision parse_matmul_precision(std::string_view text);

/// What available_backends() says about one backend.
struct BackendInfo {
  BackendKind kind = BackendKind::cpu;
  bool built = false;   ///< compiled into this library
  bool usable = false;  ///< can be created now (device present, driver recent enough, ...)
  std::string reason;   ///< why it is not usable (empty when usable)
  std::string device;   ///< the device's description when usable, e.g. "NVIDIA H100 (80 GiB)"
};

/// How Backend::select picks the active latents from pre-activations `pre[rows, F]`.
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

/// Parameters of Backend::select. Ties are broken towards the lower latent (and row) index.
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

/// The inputs and outputs of Backend::reconstruct: the sparse decoder fused with the per-source
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

/// The inputs and outputs of Backend::sparse_backward: one pass per active latent through the
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

/// Abstract compute backend. Not thread-safe: use one backend per thread of work.
class Backend {
 public:
  virtual ~Backend() = default;
  Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  /// Which kind of backend this is.
  virtual BackendKind kind() const noexcept = 0;
  /// A human-readable description of the device, e.g. "CPU (2 threads, Eigen 3.4.0)".
  virtual std::string describe() const = 0;
  /// Sets the arithmetic of encode(). The CPU backend always computes in float32, at least as
  /// accurate as any request, and ignores it.
  virtual void set_matmul_precision(MatmulPrecision /*precision*/) {}
  /// The arithmetic encode() uses.
  virtual MatmulPrecision matmul_precision() const noexcept { return MatmulPrecision::float32; }

  /// Allocates `bytes` of device memory, aligned to at least 64 bytes.
  /// @throws Error naming the size when the device is out of memory.
  virtual void* allocate(std::size_t bytes) = 0;
  /// Frees memory from allocate(); nullptr is ignored.
  virtual void deallocate(void* pointer) noexcept = 0;
  /// Copies host memory to device memory. Blocks until done.
  virtual void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) = 0;
  /// Copies device memory to host memory. Blocks until done.
  virtual void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) = 0;
  /// Copies within the device.
  virtual void copy_on_device(void* device_dst, const void* device_src, std::size_t bytes) = 0;
  /// Sets `bytes` of device memory to zero.
  virtual void fill_zero(void* device_dst, std::size_t bytes) = 0;
  /// Waits until all queued work on this backend has finished.
  virtual void synchronize() = 0;

  // ---- The crosscoder's fused operations. Row-major float32 in this backend's memory;
  // ---- D = M·d is the concatenated input width, F the number of latents. -----------------

  /// xn[b, m·d + i] = (x[b, m·d + i] − mean[m·d + i]) · scale[m]. `mean` may be null.
  virtual void normalise(const float* x, std::int64_t rows, int sources, int width,
                         const float* scale, const float* mean, float* xn) = 0;
  /// Inverse of normalise: x[b, m·d + i] = xn[b, m·d + i] / scale[m] + mean[m·d + i].
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
  // decoder_backward, encoder_backward and constrain_decoder are the unfused primitives for
  // training loops of one's own (a custom loss on the reconstruction or the codes): the
  // Trainer uses the fused sparse_backward and adam_update instead, and JumpReLU's threshold
  // estimator uses decoder_backward.

  /// Sparse decoder backward for upstream gradient grad_out[rows, D]:
  /// d_value[e] = decoder[latent[e]]·grad_out[row(e)], and, when d_decoder is not null,
  /// d_decoder[latent[e]] += value[e]·grad_out[row(e)] (reading each decoder row once).
  virtual void decoder_backward(const SparseCodes& codes, const float* grad_out,
                                const float* decoder, std::int64_t output_width, float* d_value,
                                float* d_decoder) = 0;
  /// Sparse encoder backward: d_encoder[latent[e]] += d_pre[e]·xn[row(e)],
  /// d_bias[latent[e]] += d_pre[e]. No dense rows×F buffer is formed.
  virtual void encoder_backward(const SparseCodes& codes, const float* d_pre, const float* xn,
                                std::int64_t input_width, float* d_encoder, float* d_bias) = 0;
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
  /// The decoder-norm constraint of TopK/BatchTopK (Gao et al. 2024). When `gradient` is not
  /// null it removes from each latent's gradient row its component parallel to the decoder
  /// row; otherwise it rescales each non-zero decoder row [D] to unit norm.
  virtual void constrain_decoder(float* decoder, float* gradient, std::int64_t latents,
                                 std::int64_t width) = 0;
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

/// Every backend this library knows, whether built, and whether usable here (with the reason).
std::vector<BackendInfo> available_backends();

/// Creates a backend of the given kind.
/// @throws Error carrying the reason when that backend is not usable here.
std::shared_ptr<Backend> make_backend(BackendKind kind);

/// The CUDA backend when usable, else the CPU backend. Logs once, at info level, which one
/// was chosen and why CUDA was not. Never throws because CUDA is unusable.
std::shared_ptr<Backend> best_backend();

}  // namespace crosscoder
