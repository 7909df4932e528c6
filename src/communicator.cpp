#include "crosscoder/communicator.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "crosscoder/backend.hpp"
#include "crosscoder/error.hpp"

namespace crosscoder {
namespace {

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const noexcept override { return 0; }
  int size() const noexcept override { return 1; }
  std::string describe() const override { return "single process"; }
  void all_reduce_sum(std::span<double>) override {}
  void all_reduce_sum(std::span<float>) override {}
  void all_reduce_sum(std::span<std::int64_t>) override {}
  void all_reduce_min(std::span<float>) override {}
  void reduce_scatter_sum(std::span<const float> values, std::span<float> block) override {
    if (values.size() != block.size()) {
      throw Error(fmt::format("reduce_scatter_sum: {} values for a block of {} on 1 rank",
                              values.size(), block.size()));
    }
    std::copy(values.begin(), values.end(), block.begin());
  }
  std::vector<std::int64_t> all_gather(std::int64_t value) override { return {value}; }
  std::vector<float> all_gather(std::span<const float> values,
                                std::vector<std::int64_t>* counts) override {
    if (counts) *counts = {static_cast<std::int64_t>(values.size())};
    return {values.begin(), values.end()};
  }
  std::vector<std::int64_t> all_gather(std::span<const std::int64_t> values,
                                       std::vector<std::int64_t>* counts) override {
    if (counts) *counts = {static_cast<std::int64_t>(values.size())};
    return {values.begin(), values.end()};
  }
  std::vector<float> gather(std::span<const float> values, int root,
                            std::vector<std::int64_t>* counts) override {
    if (root != 0) throw Error(fmt::format("gather: root {} of 1 rank", root));
    return all_gather(values, counts);
  }
  std::shared_ptr<Communicator> split(int, int) override {
    return std::make_shared<SingleProcessCommunicator>();
  }
  void broadcast(std::span<std::uint8_t>, int root) override {
    if (root != 0) throw Error(fmt::format("broadcast: root {} of 1 rank", root));
  }
  void barrier() override {}
  [[noreturn]] void abort(const std::string& message) override {
    std::fprintf(stderr, "%s\n", message.c_str());
    std::exit(1);
  }
};

}  // namespace

void Communicator::all_reduce_sum_in_backend(Backend& backend, float* data, std::size_t n) {
  if (backend.kind() == BackendKind::cpu) {  // the CPU backend's memory is the host's
    all_reduce_sum(std::span<float>(data, n));
    return;
  }
  std::vector<float> host(n);
  backend.copy_to_host(host.data(), data, n * sizeof(float));
  all_reduce_sum(std::span<float>(host));
  backend.copy_to_device(data, host.data(), n * sizeof(float));
}

std::shared_ptr<Communicator> single_process_communicator() {
  return std::make_shared<SingleProcessCommunicator>();
}

bool launched_by_mpi_launcher() noexcept {
  // Open MPI's mpirun, MPICH/Hydra and Intel MPI (PMI), PMIx launchers (Slurm's srun --mpi=pmix).
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

std::shared_ptr<Communicator> default_communicator() {
  if (!launched_by_mpi_launcher()) return single_process_communicator();
  if (!mpi_built()) {
    throw Error(
        "this process was started by an MPI launcher (mpirun, mpiexec or srun), but crosscoder "
        "was built without MPI: each rank would train alone. Install an MPI library (Debian: "
        "libopenmpi-dev) and configure with -DCROSSCODER_MPI=ON, or run one process");
  }
  return mpi_communicator();
}

RowSlice row_slice(std::int64_t rows, int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks)
    throw Error(fmt::format("row slice: rank {} of {} ranks", rank, ranks));
  if (rows < ranks) {
    throw Error(fmt::format(
        "a batch of {} rows cannot be split over {} ranks: every rank needs at least one row "
        "(use a larger batch or fewer ranks)",
        rows, ranks));
  }
  const auto first = [&](int r) { return rows * r / ranks; };
  return {first(rank), first(rank + 1) - first(rank)};
}

}  // namespace crosscoder
