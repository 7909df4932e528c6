// The NCCL communicator (compiled with CROSSCODER_WITH_NCCL: CUDA, MPI and NCCL found), or its
// absence. It reduces the CUDA backend's gradients between GPUs and leaves every host
// collective to the MPI communicator that bootstrapped it.
#include <fmt/format.h>

#include "crosscoder/backend.hpp"
#include "crosscoder/communicator.hpp"
#include "crosscoder/error.hpp"

#ifdef CROSSCODER_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#endif

namespace crosscoder {

#ifdef CROSSCODER_WITH_NCCL
namespace {

void check(ncclResult_t result, const char* what) {
  if (result == ncclSuccess) return;
  throw Error(fmt::format("NCCL {} failed: {} ({})", what, ncclGetErrorString(result),
                          static_cast<int>(result)));
}

void check(cudaError_t result, const char* what) {
  if (result == cudaSuccess) return;
  throw Error(fmt::format("CUDA {} failed: {}", what, cudaGetErrorString(result)));
}

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(std::shared_ptr<Communicator> host) : host_(std::move(host)) {
    if (!host_) throw Error("nccl_communicator: no host communicator to bootstrap from");
    check(cudaGetDevice(&device_), "cudaGetDevice");
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (host_->rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host_->broadcast(std::span<std::uint8_t>(reinterpret_cast<std::uint8_t*>(&id), sizeof id), 0);
    check(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()),
          "ncclCommInitRank (one GPU per rank: set CUDA_VISIBLE_DEVICES per rank, or srun "
          "--gpus-per-task=1)");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~NcclCommunicator() override {
    if (stream_) cudaStreamDestroy(stream_);
    if (comm_) ncclCommDestroy(comm_);
  }
  int rank() const noexcept override { return host_->rank(); }
  int size() const noexcept override { return host_->size(); }
  std::string describe() const override {
    int version = 0;
    ncclGetVersion(&version);
    return fmt::format("{} + NCCL {} (GPU {})", host_->describe(), version, device_);
  }
  void all_reduce_sum(std::span<double> values) override { host_->all_reduce_sum(values); }
  void all_reduce_sum(std::span<float> values) override { host_->all_reduce_sum(values); }
  void all_reduce_sum(std::span<std::int64_t> values) override { host_->all_reduce_sum(values); }
  void all_reduce_sum_in_backend(Backend& backend, float* data, std::size_t n) override {
    if (backend.kind() != BackendKind::cuda) {
      Communicator::all_reduce_sum_in_backend(backend, data, n);
      return;
    }
    backend.synchronize();  // the gradients are complete on the backend's stream
    check(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm_, stream_), "all-reduce");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize after the all-reduce");
  }
  void all_reduce_min(std::span<float> values) override { host_->all_reduce_min(values); }
  void reduce_scatter_sum(std::span<const float> values, std::span<float> block) override {
    host_->reduce_scatter_sum(values, block);
  }
  std::vector<std::int64_t> all_gather(std::int64_t value) override {
    return host_->all_gather(value);
  }
  std::vector<float> all_gather(std::span<const float> values,
                                std::vector<std::int64_t>* counts) override {
    return host_->all_gather(values, counts);
  }
  std::vector<std::int64_t> all_gather(std::span<const std::int64_t> values,
                                       std::vector<std::int64_t>* counts) override {
    return host_->all_gather(values, counts);
  }
  std::vector<float> gather(std::span<const float> values, int root,
                            std::vector<std::int64_t>* counts) override {
    return host_->gather(values, root, counts);
  }
  void broadcast(std::span<std::uint8_t> bytes, int root) override {
    host_->broadcast(bytes, root);
  }
  void barrier() override { host_->barrier(); }
  // A NCCL communicator of its own over the split host communicator's ranks.
  std::shared_ptr<Communicator> split(int color, int key) override {
    return std::make_shared<NcclCommunicator>(host_->split(color, key));
  }
  [[noreturn]] void abort(const std::string& message) override {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    host_->abort(message);
    std::abort();  // not reached: the host communicator's abort ends the job
  }

 private:
  std::shared_ptr<Communicator> host_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
};

}  // namespace

bool nccl_built() noexcept { return true; }

std::shared_ptr<Communicator> nccl_communicator(std::shared_ptr<Communicator> host) {
  return std::make_shared<NcclCommunicator>(std::move(host));
}

#else

bool nccl_built() noexcept { return false; }

std::shared_ptr<Communicator> nccl_communicator(std::shared_ptr<Communicator>) {
  throw Error(
      "crosscoder was built without NCCL (it needs the CUDA backend, MPI and NCCL's nccl.h and "
      "libnccl, e.g. from the CUDA toolkit or the nvidia-nccl wheel, at configure time)");
}

#endif

}  // namespace crosscoder
