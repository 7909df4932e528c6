#pragma once
/// @file communicator.hpp
/// The collectives that multi-process training needs, behind one interface: a single process
/// (the default; every collective is a copy or nothing) and MPI (OpenMPI or any MPI-3 library,
/// compiled in when CMake finds one). Every rank must call the same collectives in the same
/// order with the same sizes; a rank that fails must call abort(), so that the others end
/// with an error instead of waiting in a collective for ever.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace crosscoder {

class Backend;

/// A group of cooperating processes (ranks 0 … size() − 1).
class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  /// This process's rank, 0 … size() − 1.
  virtual int rank() const noexcept = 0;
  /// The number of ranks.
  virtual int size() const noexcept = 0;
  /// "single process" or e.g. "MPI (Open MPI v4.1.4), 2 ranks".
  virtual std::string describe() const = 0;

  /// Element-wise sum over all ranks, in place; every rank receives the same numbers.
  virtual void all_reduce_sum(std::span<double> values) = 0;
  virtual void all_reduce_sum(std::span<float> values) = 0;
  virtual void all_reduce_sum(std::span<std::int64_t> values) = 0;
  /// Element-wise sum over all ranks of n floats in `backend`'s memory, in place. This default
  /// reduces the CPU backend's memory (the host's) directly and a device's through host copies;
  /// the NCCL communicator reduces CUDA memory between the GPUs.
  virtual void all_reduce_sum_in_backend(Backend& backend, float* data, std::size_t n);
  /// Element-wise minimum over all ranks, in place.
  virtual void all_reduce_min(std::span<float> values) = 0;
  /// Element-wise sum over all ranks of `values` (size() equal blocks), of which this rank
  /// receives its own block (block rank()) in `block`. values.size() must be block.size() ·
  /// size().
  virtual void reduce_scatter_sum(std::span<const float> values, std::span<float> block) = 0;
  /// Every rank's `value`, in rank order.
  virtual std::vector<std::int64_t> all_gather(std::int64_t value) = 0;
  /// Every rank's `values` (of any length per rank), concatenated in rank order; `counts`, if
  /// not null, receives each rank's length.
  virtual std::vector<float> all_gather(std::span<const float> values,
                                        std::vector<std::int64_t>* counts = nullptr) = 0;
  virtual std::vector<std::int64_t> all_gather(std::span<const std::int64_t> values,
                                               std::vector<std::int64_t>* counts = nullptr) = 0;
  /// Every rank's `values` (of any length per rank), concatenated in rank order on rank `root`
  /// and empty on the others: what all_gather gives, without a copy of the whole on every rank
  /// (e.g. latent shards joined for rank 0 to write). `counts`, if not null, receives each
  /// rank's length on every rank.
  virtual std::vector<float> gather(std::span<const float> values, int root,
                                    std::vector<std::int64_t>* counts = nullptr) = 0;
  /// Rank `root`'s bytes into every rank's `bytes` (equal sizes on every rank).
  virtual void broadcast(std::span<std::uint8_t> bytes, int root) = 0;
  /// Returns when every rank has called it.
  virtual void barrier() = 0;
  /// The ranks that pass the same `color` as a communicator of their own, ranked by `key` (ties
  /// by rank here): e.g. the rows of a grid of ranks. A collective: every rank calls it.
  /// Collectives on the result involve only its ranks; abort() still ends the whole job.
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;
  /// Ends every rank of the job (after this rank's message has been written to stderr).
  [[noreturn]] virtual void abort(const std::string& message) = 0;
};

/// The one-process communicator: rank 0 of 1.
std::shared_ptr<Communicator> single_process_communicator();

/// Whether this library was built with MPI (CROSSCODER_MPI).
bool mpi_built() noexcept;

/// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun with PMI/PMIx),
/// judged from the environment variables those launchers set.
bool launched_by_mpi_launcher() noexcept;

/// MPI_COMM_WORLD, initialising MPI on the first call (and finalising it when the last
/// communicator is gone). @throws Error when the library was built without MPI, or when MPI
/// cannot be initialised.
std::shared_ptr<Communicator> mpi_communicator();

/// Whether this library was built with NCCL (CUDA, MPI and NCCL found at configure time).
bool nccl_built() noexcept;

/// A communicator whose all_reduce_sum_in_backend reduces CUDA memory with NCCL between the
/// ranks' GPUs (each rank's current CUDA device: one GPU per rank, e.g. by CUDA_VISIBLE_DEVICES),
/// bootstrapped through `host` (an MPI communicator), which carries every other collective.
/// @throws Error when the library was built without NCCL or NCCL cannot connect the ranks.
std::shared_ptr<Communicator> nccl_communicator(std::shared_ptr<Communicator> host);

/// The MPI communicator when the process was started by an MPI launcher, else the single
/// process. @throws Error when an MPI launcher started a library built without MPI (each rank
/// would otherwise train alone, N copies of one run).
std::shared_ptr<Communicator> default_communicator();

/// The rows of a `rows`-row global batch that rank `rank` of `ranks` holds: [first, first +
/// count), contiguous and in rank order, sizes differing by at most one.
struct RowSlice {
  std::int64_t first = 0;
  std::int64_t count = 0;
};
/// @throws Error when rows < ranks (a rank would hold no rows).
RowSlice row_slice(std::int64_t rows, int rank, int ranks);

}  // namespace crosscoder
