// The device-wide primitives on the GPU: CUB for scans and sorts, cuBLASLt for the encoder GEMM
// with its bias in the epilogue (cublasGemmEx and a bias kernel where cuBLASLt offers no
// algorithm for the shape).
#include "device_primitives.hpp"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <climits>
#include <cstdio>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>
#include <string>
#include <utility>

#include "cuda_check.hpp"

namespace crosscoder::CROSSCODER_CUDA_NS {
namespace {

constexpr int kElementwiseThreads = 256;

int elementwise_blocks(std::int64_t n) {
  const std::int64_t blocks = (n + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

__global__ void to_bfloat16(const float* in, std::int64_t n, __nv_bfloat16* out) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void add_bias(float* pre, std::int64_t n, std::int64_t latents, const float* bias,
                         bool rectify) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float biased = pre[i] + bias[i % latents];
    pre[i] = rectify ? fmaxf(biased, 0.0f) : biased;
  }
}

// CUB's two-phase calls: ask the size, take the workspace, run.
template <typename Call>
void with_temporary_storage(Workspace& workspace, Call call) {
  std::size_t bytes = 0;
  CROSSCODER_CUDA_CHECK(call(nullptr, bytes));
  CROSSCODER_CUDA_CHECK(call(workspace.get(bytes), bytes));
}

void require_int_range(std::int64_t n, const char* what) {
  if (n > INT_MAX)
    throw Error(std::string("CUDA backend: ") + what + " of " + std::to_string(n) +
                " entries exceeds CUB's 32-bit limit; use a smaller batch");
}

}  // namespace

void* Workspace::get(std::size_t bytes) {
  if (bytes <= bytes_ && data_) return data_;
  release();
  const std::size_t grown = bytes + bytes / 2 + 256;
  if (cudaMallocAsync(&data_, grown, stream_) != cudaSuccess) {
    cudaGetLastError();
    data_ = nullptr;
    throw Error("CUDA backend: cannot allocate " + std::to_string(grown) +
                " bytes of temporary storage (scans and sorts); try a smaller batch");
  }
  bytes_ = grown;
  return data_;
}

void Workspace::release() noexcept {
  if (data_ && cudaFreeAsync(data_, stream_) != cudaSuccess) cudaGetLastError();
  data_ = nullptr;
  bytes_ = 0;
}

void counts_to_offsets(const std::int64_t* counts, std::int64_t n, std::int64_t* offsets,
                       Workspace& workspace, cudaStream_t stream) {
  CROSSCODER_CUDA_CHECK(cudaMemsetAsync(offsets, 0, sizeof(std::int64_t), stream));
  if (n == 0) return;
  with_temporary_storage(workspace, [&](void* storage, std::size_t& bytes) {
    return cub::DeviceScan::InclusiveSum(storage, bytes, counts, offsets + 1, n, stream);
  });
}

void stable_sort_by_key(const std::int32_t* keys_in, std::int32_t* keys_out,
                        const std::int64_t* values_in, std::int64_t* values_out, std::int64_t n,
                        int key_bits, Workspace& workspace, cudaStream_t stream) {
  if (n == 0) return;
  // CUB's radix sort is stable.
  with_temporary_storage(workspace, [&](void* storage, std::size_t& bytes) {
    return cub::DeviceRadixSort::SortPairs(storage, bytes, keys_in, keys_out, values_in, values_out,
                                           n, 0, key_bits, stream);
  });
}

std::int64_t run_lengths(const std::int32_t* sorted_keys, std::int64_t n, std::int32_t* run_key,
                         std::int64_t* run_length, Workspace& workspace, cudaStream_t stream) {
  if (n == 0) return 0;
  require_int_range(n, "run-length encoding");
  std::int64_t* device_runs = nullptr;
  CROSSCODER_CUDA_CHECK(
      cudaMallocAsync(reinterpret_cast<void**>(&device_runs), sizeof(std::int64_t), stream));
  try {
    with_temporary_storage(workspace, [&](void* storage, std::size_t& bytes) {
      return cub::DeviceRunLengthEncode::Encode(storage, bytes, sorted_keys, run_key, run_length,
                                                device_runs, static_cast<int>(n), stream);
    });
    std::int64_t runs = 0;
    CROSSCODER_CUDA_CHECK(
        cudaMemcpyAsync(&runs, device_runs, sizeof runs, cudaMemcpyDeviceToHost, stream));
    CROSSCODER_CUDA_CHECK(cudaStreamSynchronize(stream));
    CROSSCODER_CUDA_CHECK(cudaFreeAsync(device_runs, stream));
    return runs;
  } catch (...) {
    if (cudaFreeAsync(device_runs, stream) != cudaSuccess) cudaGetLastError();
    throw;
  }
}

void sort_segments_descending(const unsigned long long* keys_in, unsigned long long* keys_out,
                              const float* values_in, float* values_out, std::int64_t n,
                              std::int64_t segments, const std::int64_t* offsets,
                              Workspace& workspace, cudaStream_t stream) {
  if (n == 0) return;
  with_temporary_storage(workspace, [&](void* storage, std::size_t& bytes) {
    return cub::DeviceSegmentedSort::SortPairsDescending(storage, bytes, keys_in, keys_out,
                                                         values_in, values_out, n, segments,
                                                         offsets, offsets + 1, stream);
  });
}

// ---- The encoder GEMM ------------------------------------------------------------------

struct EncoderGemm::State {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* lt_workspace = nullptr;
  std::size_t lt_workspace_bytes = std::size_t{32} << 20;  // cuBLAS's advice for Hopper
  __nv_bfloat16* input16 = nullptr;                        // bfloat16 copies of the operands
  __nv_bfloat16* encoder16 = nullptr;
  std::size_t input16_size = 0, encoder16_size = 0;

  State() = default;
  State(const State&) = delete;
  State& operator=(const State&) = delete;
  // Frees what was created, also when the constructor failed half-way.
  ~State() {
    for (void* buffer :
         {static_cast<void*>(input16), static_cast<void*>(encoder16), lt_workspace}) {
      if (buffer && cudaFreeAsync(buffer, stream) != cudaSuccess) cudaGetLastError();
    }
    if (lt) cublasLtDestroy(lt);
    if (blas) cublasDestroy(blas);
  }

  __nv_bfloat16* grow(__nv_bfloat16*& buffer, std::size_t& size, std::size_t wanted,
                      const char* what) {
    if (wanted <= size && buffer) return buffer;
    if (buffer && cudaFreeAsync(buffer, stream) != cudaSuccess) cudaGetLastError();
    buffer = nullptr;
    size = 0;
    if (cudaMallocAsync(reinterpret_cast<void**>(&buffer), wanted * sizeof(__nv_bfloat16),
                        stream) != cudaSuccess) {
      cudaGetLastError();
      buffer = nullptr;
      throw Error(std::string("CUDA backend: cannot allocate the bfloat16 copy of the ") + what +
                  " (" + std::to_string(wanted * sizeof(__nv_bfloat16)) +
                  " bytes); try a smaller batch or float32");
    }
    size = wanted;
    return buffer;
  }
};

EncoderGemm::EncoderGemm(cudaStream_t stream) : state_(std::make_unique<State>()) {
  state_->stream = stream;
  CROSSCODER_CUBLAS_CHECK(cublasCreate(&state_->blas));
  CROSSCODER_CUBLAS_CHECK(cublasSetStream(state_->blas, stream));
  CROSSCODER_CUBLAS_CHECK(cublasLtCreate(&state_->lt));
  CROSSCODER_CUDA_CHECK(cudaMallocAsync(&state_->lt_workspace, state_->lt_workspace_bytes, stream));
}

EncoderGemm::~EncoderGemm() = default;

namespace {

// Owners of cuBLASLt descriptors.
struct MatmulDescription {
  cublasLtMatmulDesc_t handle = nullptr;
  ~MatmulDescription() {
    if (handle) cublasLtMatmulDescDestroy(handle);
  }
};
struct MatrixLayout {
  cublasLtMatrixLayout_t handle = nullptr;
  MatrixLayout(cudaDataType_t type, std::uint64_t rows, std::uint64_t columns, std::int64_t ld) {
    CROSSCODER_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&handle, type, rows, columns, ld));
  }
  ~MatrixLayout() {
    if (handle) cublasLtMatrixLayoutDestroy(handle);
  }
};
struct MatmulPreference {
  cublasLtMatmulPreference_t handle = nullptr;
  ~MatmulPreference() {
    if (handle) cublasLtMatmulPreferenceDestroy(handle);
  }
};

}  // namespace

void EncoderGemm::run(const float* xn, std::int64_t rows, std::int64_t input_width,
                      const float* encoder, const float* bias, std::int64_t latents, bool rectify,
                      float* pre, MatmulPrecision precision) {
  State& s = *state_;
  if (rows == 0 || latents == 0) return;
  // Row-major pre[rows, F] is column-major F × rows: pre = op(A)·B with A = encoder seen as a
  // column-major D × F matrix (transposed) and B = xn as a column-major D × rows matrix.
  const void* a = encoder;
  const void* b = xn;
  cudaDataType_t operand_type = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (precision == MatmulPrecision::tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  if (precision == MatmulPrecision::bfloat16) {
    operand_type = CUDA_R_16BF;
    const auto encoder_size = static_cast<std::size_t>(latents * input_width);
    const auto input_size = static_cast<std::size_t>(rows * input_width);
    __nv_bfloat16* encoder16 = s.grow(s.encoder16, s.encoder16_size, encoder_size, "encoder");
    __nv_bfloat16* input16 = s.grow(s.input16, s.input16_size, input_size, "input batch");
    to_bfloat16<<<elementwise_blocks(encoder_size), kElementwiseThreads, 0, s.stream>>>(
        encoder, static_cast<std::int64_t>(encoder_size), encoder16);
    CROSSCODER_CUDA_CHECK_LAUNCH();
    to_bfloat16<<<elementwise_blocks(input_size), kElementwiseThreads, 0, s.stream>>>(
        xn, static_cast<std::int64_t>(input_size), input16);
    CROSSCODER_CUDA_CHECK_LAUNCH();
    a = encoder16;
    b = input16;
  }
  const float one = 1.0f, zero = 0.0f;

  MatmulDescription operation;
  CROSSCODER_CUBLAS_CHECK(cublasLtMatmulDescCreate(&operation.handle, compute, CUDA_R_32F));
  const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
  CROSSCODER_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
      operation.handle, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose));
  CROSSCODER_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
      operation.handle, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof keep));
  const cublasLtEpilogue_t epilogue =
      rectify ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  CROSSCODER_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
      operation.handle, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
  CROSSCODER_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
      operation.handle, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  const cudaDataType_t bias_type = CUDA_R_32F;
  CROSSCODER_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
      operation.handle, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type));

  const auto F = static_cast<std::uint64_t>(latents), B = static_cast<std::uint64_t>(rows),
             D = static_cast<std::uint64_t>(input_width);
  const MatrixLayout a_layout(operand_type, D, F, input_width);
  const MatrixLayout b_layout(operand_type, D, B, input_width);
  const MatrixLayout c_layout(CUDA_R_32F, F, B, latents);

  MatmulPreference preference;
  CROSSCODER_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference.handle));
  CROSSCODER_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      preference.handle, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &s.lt_workspace_bytes,
      sizeof s.lt_workspace_bytes));
  // The heuristic otherwise assumes 256-byte aligned operands and may pick a kernel that needs
  // them; a row tile of the batch starts wherever first · D floats put it.
  const std::pair<cublasLtMatmulPreferenceAttributes_t, const void*> operands[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, pre},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, pre}};
  for (const auto& [attribute, pointer] : operands) {
    const std::uint32_t alignment = operand_alignment(pointer);
    CROSSCODER_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference.handle, attribute,
                                                                 &alignment, sizeof alignment));
  }
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  const cublasStatus_t searched = cublasLtMatmulAlgoGetHeuristic(
      s.lt, operation.handle, a_layout.handle, b_layout.handle, c_layout.handle, c_layout.handle,
      preference.handle, 1, &heuristic, &found);
  if (searched == CUBLAS_STATUS_SUCCESS && found > 0) {
    CROSSCODER_CUBLAS_CHECK(cublasLtMatmul(s.lt, operation.handle, &one, a, a_layout.handle, b,
                                           b_layout.handle, &zero, pre, c_layout.handle, pre,
                                           c_layout.handle, &heuristic.algo, s.lt_workspace,
                                           s.lt_workspace_bytes, s.stream));
    return;
  }
  // No cuBLASLt algorithm with a bias epilogue for this shape: a plain GEMM, then the bias.
  if (latents > INT_MAX || rows > INT_MAX || input_width > INT_MAX)
    throw Error("CUDA backend: no cuBLASLt algorithm for the encoder GEMM of " +
                std::to_string(rows) + " x " + std::to_string(input_width) + " x " +
                std::to_string(latents) + ", and the fallback takes 32-bit sizes");
  CROSSCODER_CUBLAS_CHECK(cublasGemmEx(s.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(F),
                                       static_cast<int>(B), static_cast<int>(D), &one, a,
                                       operand_type, static_cast<int>(D), b, operand_type,
                                       static_cast<int>(D), &zero, pre, CUDA_R_32F,
                                       static_cast<int>(F), compute, CUBLAS_GEMM_DEFAULT));
  const std::int64_t n = rows * latents;
  add_bias<<<elementwise_blocks(n), kElementwiseThreads, 0, s.stream>>>(pre, n, latents, bias,
                                                                        rectify);
  CROSSCODER_CUDA_CHECK_LAUNCH();
}

}  // namespace crosscoder::CROSSCODER_CUDA_NS
