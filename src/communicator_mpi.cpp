// The MPI communicator (compiled with CROSSCODER_WITH_MPI), or its absence.
#include <fmt/format.h>

#include <cstdio>
#include <mutex>

#include "crosscoder/communicator.hpp"
#include "crosscoder/error.hpp"

#ifdef CROSSCODER_WITH_MPI
#include <mpi.h>

#include <algorithm>
#include <climits>
#endif

namespace crosscoder {

#ifdef CROSSCODER_WITH_MPI
namespace {

// MPI counts are int: one collective moves at most INT_MAX elements, so longer arrays go in
// pieces.
constexpr std::size_t kMaximumCount = static_cast<std::size_t>(INT_MAX) / 2;

void check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw Error(fmt::format("MPI {} failed: {}", what, std::string(text, length)));
}

// Initialises MPI unless the program did, and finalises it when the last communicator that
// uses it is gone (only then, and only if it initialised it).
class MpiSession {
 public:
  MpiSession() {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        throw Error("MPI_Init_thread failed: no MPI communicator can be made");
      owns_mpi_ = true;
    }
  }
  ~MpiSession() {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (owns_mpi_ && !finalised) MPI_Finalize();
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  bool owns_mpi_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  // `comm` is MPI_COMM_WORLD or a communicator split from it, which this one then frees.
  MpiCommunicator(std::shared_ptr<MpiSession> session, MPI_Comm comm)
      : session_(std::move(session)), comm_(comm) {
    // Errors come back as codes that check() turns into crosscoder::Error.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (comm_ != MPI_COMM_WORLD && !finalised) MPI_Comm_free(&comm_);
  }
  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  std::string describe() const override {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    std::string library(version, static_cast<std::size_t>(length));
    library = library.substr(0, library.find_first_of(",\n"));
    return fmt::format("MPI ({}), {} ranks", library, size_);
  }
  void all_reduce_sum(std::span<double> values) override {
    all_reduce(values, MPI_DOUBLE, MPI_SUM, "all-reduce (sum of doubles)");
  }
  void all_reduce_sum(std::span<float> values) override {
    all_reduce(values, MPI_FLOAT, MPI_SUM, "all-reduce (sum of floats)");
  }
  void all_reduce_sum(std::span<std::int64_t> values) override {
    all_reduce(values, MPI_INT64_T, MPI_SUM, "all-reduce (sum of int64)");
  }
  void all_reduce_min(std::span<float> values) override {
    all_reduce(values, MPI_FLOAT, MPI_MIN, "all-reduce (minimum)");
  }
  void reduce_scatter_sum(std::span<const float> values, std::span<float> block) override {
    if (values.size() != block.size() * static_cast<std::size_t>(size_) ||
        block.size() > kMaximumCount) {
      throw Error(fmt::format("reduce_scatter_sum: {} values for blocks of {} on {} ranks",
                              values.size(), block.size(), size_));
    }
    check(MPI_Reduce_scatter_block(values.data(), block.data(), static_cast<int>(block.size()),
                                   MPI_FLOAT, MPI_SUM, comm_),
          "reduce-scatter");
  }
  std::vector<std::int64_t> all_gather(std::int64_t value) override {
    std::vector<std::int64_t> values(static_cast<std::size_t>(size_));
    check(MPI_Allgather(&value, 1, MPI_INT64_T, values.data(), 1, MPI_INT64_T, comm_),
          "all-gather");
    return values;
  }
  std::vector<float> all_gather(std::span<const float> values,
                                std::vector<std::int64_t>* counts) override {
    return gather_variable(values, MPI_FLOAT, -1, counts);
  }
  std::vector<std::int64_t> all_gather(std::span<const std::int64_t> values,
                                       std::vector<std::int64_t>* counts) override {
    return gather_variable(values, MPI_INT64_T, -1, counts);
  }
  std::vector<float> gather(std::span<const float> values, int root,
                            std::vector<std::int64_t>* counts) override {
    if (root < 0 || root >= size_)
      throw Error(fmt::format("gather: root {} of {} ranks", root, size_));
    return gather_variable(values, MPI_FLOAT, root, counts);
  }
  void broadcast(std::span<std::uint8_t> bytes, int root) override {
    for (std::size_t first = 0; first < bytes.size(); first += kMaximumCount) {
      const std::size_t n = std::min(kMaximumCount, bytes.size() - first);
      check(MPI_Bcast(bytes.data() + first, static_cast<int>(n), MPI_BYTE, root, comm_),
            "broadcast");
    }
  }
  void barrier() override { check(MPI_Barrier(comm_), "barrier"); }
  std::shared_ptr<Communicator> split(int color, int key) override {
    if (color < 0) throw Error(fmt::format("split: color {} (must not be negative)", color));
    MPI_Comm part = MPI_COMM_NULL;
    check(MPI_Comm_split(comm_, color, key, &part), "communicator split");
    return std::make_shared<MpiCommunicator>(session_, part);
  }
  [[noreturn]] void abort(const std::string& message) override {
    std::fprintf(stderr, "%s\n", message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);  // the whole job, whichever part this communicator is
    std::_Exit(1);                 // MPI_Abort does not return; should it, this rank still ends
  }

 private:
  template <typename T>
  void all_reduce(std::span<T> values, MPI_Datatype type, MPI_Op op, const char* what) {
    for (std::size_t first = 0; first < values.size(); first += kMaximumCount) {
      const std::size_t n = std::min(kMaximumCount, values.size() - first);
      check(
          MPI_Allreduce(MPI_IN_PLACE, values.data() + first, static_cast<int>(n), type, op, comm_),
          what);
    }
  }

  // Every rank's values, of any length per rank, concatenated in rank order: on every rank
  // (root −1) or on `root` alone.
  template <typename T>
  std::vector<T> gather_variable(std::span<const T> values, MPI_Datatype type, int root,
                                 std::vector<std::int64_t>* counts) {
    const std::vector<std::int64_t> lengths = all_gather(static_cast<std::int64_t>(values.size()));
    std::vector<int> sizes(lengths.size()), offsets(lengths.size());
    std::int64_t total = 0;
    for (std::size_t r = 0; r < lengths.size(); ++r) {
      offsets[r] = static_cast<int>(total);
      sizes[r] = static_cast<int>(lengths[r]);
      total += lengths[r];
    }
    if (total > static_cast<std::int64_t>(kMaximumCount))
      throw Error(fmt::format("gather of {} values: more than one MPI call can move", total));
    if (counts) *counts = lengths;
    if (root < 0) {
      std::vector<T> gathered(static_cast<std::size_t>(total));
      check(MPI_Allgatherv(values.data(), static_cast<int>(values.size()), type, gathered.data(),
                           sizes.data(), offsets.data(), type, comm_),
            "all-gather (variable lengths)");
      return gathered;
    }
    std::vector<T> gathered(rank_ == root ? static_cast<std::size_t>(total) : 0);
    check(MPI_Gatherv(values.data(), static_cast<int>(values.size()), type, gathered.data(),
                      sizes.data(), offsets.data(), type, root, comm_),
          "gather (variable lengths)");
    return gathered;
  }

  std::shared_ptr<MpiSession> session_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

bool mpi_built() noexcept { return true; }

std::shared_ptr<Communicator> mpi_communicator() {
  // One communicator per process: MPI can be initialised only once.
  static std::mutex mutex;
  static std::weak_ptr<Communicator> existing;
  const std::lock_guard<std::mutex> lock(mutex);
  if (auto alive = existing.lock()) return alive;
  int finalised = 0;
  MPI_Finalized(&finalised);
  if (finalised) throw Error("MPI was finalised already: no new MPI communicator can be made");
  auto made = std::make_shared<MpiCommunicator>(std::make_shared<MpiSession>(), MPI_COMM_WORLD);
  existing = made;
  return made;
}

#else

bool mpi_built() noexcept { return false; }

std::shared_ptr<Communicator> mpi_communicator() {
  throw Error(
      "crosscoder was built without MPI: install an MPI library (Debian: libopenmpi-dev) and "
      "configure with -DCROSSCODER_MPI=ON");
}

#endif

}  // namespace crosscoder
