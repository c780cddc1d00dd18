// The MPI communicator (Open MPI, shared memory or TCP). All MPI calls after MPI_Init_thread are
// made by one communication thread that executes a FIFO of operations; the training thread
// enqueues and, for blocking calls, waits on its ticket.
//
// Rationale. The reducer must all-reduce a bucket while backward keeps running, so collectives
// run off the compute thread. One FIFO keeps the global order of collectives identical on every
// rank without negotiation. Waiting is the subtle part: a blocking MPI_Allreduce busy-polls until
// the slowest rank arrives, and on machines where ranks x threads fill every core that spinning
// thread steals a core from backward. So the thread starts a non-blocking MPI_Iallreduce and
// polls MPI_Test, spinning only briefly and then sleeping between polls; Open MPI's shared-memory
// transport progresses inside MPI_Test.
#include <mpi.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/comm/communicator.h"
#include "worker/comm/mpi_check.h"

namespace resdist {

void MpiCheckFailed(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  MPI_Error_string(code, text, &len);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "rank %d: %s:%d: %s failed: %s\n", rank, file, line, call, text);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 3);
  std::_Exit(3);
}

namespace {

using Clock = std::chrono::steady_clock;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int size, int local_rank, int local_size)
      : comm_(comm),
        rank_(rank),
        size_(size),
        local_rank_(local_rank),
        local_size_(local_size),
        ring_(kRingSize) {
    thread_ = std::thread([this] { loop(); });
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_one();
    thread_.join();
    MPI_Comm_free(&comm_);
    MPI_Finalize();
  }

  std::string name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }

  void allreduce_sum(float* data, size_t count) override {
    wait(allreduce_sum_async(data, count));
  }
  void allreduce_sum(double* data, size_t count) override {
    wait(allreduce_sum_async(data, count));
  }
  CommTicket allreduce_sum_async(float* data, size_t count) override {
    return enqueue({Kind::kAllreduce, data, count, MPI_FLOAT, 0});
  }
  CommTicket allreduce_sum_async(double* data, size_t count) override {
    return enqueue({Kind::kAllreduce, data, count, MPI_DOUBLE, 0});
  }

  void wait(CommTicket ticket) override {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return completed_ >= ticket; });
  }

  void broadcast(void* data, size_t bytes, int root) override {
    wait(enqueue({Kind::kBroadcast, data, bytes, MPI_BYTE, root}));
  }
  void barrier() override { wait(enqueue({Kind::kBarrier, nullptr, 0, MPI_BYTE, 0})); }
  std::vector<uint64_t> allgather(uint64_t value) override {
    std::vector<uint64_t> out(size_);
    out[rank_] = value;
    wait(enqueue({Kind::kAllgather, out.data(), 1, MPI_UINT64_T, 0}));
    return out;
  }

  [[noreturn]] void abort(const std::string& message, int code) override {
    std::fprintf(stderr, "rank %d: %s\n", rank_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  enum class Kind { kAllreduce, kBroadcast, kBarrier, kAllgather };
  struct Op {
    Kind kind;
    void* data;
    size_t count;  // elements of `type`
    MPI_Datatype type;
    int root;
  };
  static constexpr size_t kRingSize = 4096;  // operations in flight; enqueue waits when full

  CommTicket enqueue(const Op& op) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return issued_ - completed_ < kRingSize; });
    ring_[issued_ % kRingSize] = op;
    const CommTicket t = ++issued_;
    lock.unlock();
    work_cv_.notify_one();
    return t;
  }

  void loop() {
    for (;;) {
      Op op;
      CommTicket ticket;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return stop_ || started_ < issued_; });
        if (started_ == issued_) return;  // stop_ with nothing left
        op = ring_[started_ % kRingSize];
        ticket = ++started_;
      }
      execute(op);
      {
        std::lock_guard<std::mutex> lock(mu_);
        completed_ = ticket;
      }
      done_cv_.notify_all();
    }
  }

  // Waits for `req` without holding a core: MPI_Test in a tight loop for a few microseconds
  // (the partner is usually there already for small messages), then with sleeps in between.
  static void Poll(MPI_Request* req) {
    int flag = 0;
    const auto t0 = Clock::now();
    for (;;) {
      MPI_CHECK(MPI_Test(req, &flag, MPI_STATUS_IGNORE));
      if (flag) return;
      if (Clock::now() - t0 > std::chrono::microseconds(30)) {
        const timespec ts{0, 20000};  // 20 us
        nanosleep(&ts, nullptr);
      }
    }
  }

  void execute(const Op& op) {
    int type_size = 0;
    MPI_CHECK(MPI_Type_size(op.type, &type_size));
    char* base = static_cast<char*>(op.data);
    constexpr size_t kMaxPiece = size_t{1} << 28;  // elements per call, below INT_MAX
    MPI_Request req;
    switch (op.kind) {
      case Kind::kAllreduce:
        for (size_t off = 0; off < op.count; off += kMaxPiece) {
          const int n = static_cast<int>(std::min(kMaxPiece, op.count - off));
          MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, base + off * type_size, n, op.type, MPI_SUM,
                                   comm_, &req));
          Poll(&req);
        }
        break;
      case Kind::kBroadcast:
        for (size_t off = 0; off < op.count; off += kMaxPiece) {
          const int n = static_cast<int>(std::min(kMaxPiece, op.count - off));
          MPI_CHECK(MPI_Ibcast(base + off * type_size, n, op.type, op.root, comm_, &req));
          Poll(&req);
        }
        break;
      case Kind::kBarrier:
        MPI_CHECK(MPI_Ibarrier(comm_, &req));
        Poll(&req);
        break;
      case Kind::kAllgather:
        MPI_CHECK(MPI_Iallgather(MPI_IN_PLACE, 0, op.type, op.data, 1, op.type, comm_, &req));
        Poll(&req);
        break;
    }
  }

  MPI_Comm comm_;
  const int rank_, size_, local_rank_, local_size_;

  std::mutex mu_;
  std::condition_variable work_cv_;  // the communication thread waits for work
  std::condition_variable done_cv_;  // callers wait for completions (and ring space)
  std::vector<Op> ring_;             // GUARDED_BY(mu_)
  CommTicket issued_ = 0;            // GUARDED_BY(mu_)
  CommTicket started_ = 0;           // GUARDED_BY(mu_)
  CommTicket completed_ = 0;         // GUARDED_BY(mu_)
  bool stop_ = false;                // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace

StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized)
    return absl::FailedPreconditionError("MPI is already initialized in this process");
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
    return absl::UnavailableError("MPI_Init_thread failed (is this process started by mpirun?)");
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    return absl::UnavailableError(absl::StrCat(
        "MPI provides thread level ", provided,
        "; resdist needs MPI_THREAD_SERIALIZED or better for its communication thread"));
  }
  // Errors come back as codes so MPI_CHECK can print them before aborting the job.
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPI_Comm comm;
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  MPI_CHECK(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
  int rank = 0, size = 1, local_rank = 0, local_size = 1;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  MPI_CHECK(MPI_Comm_size(comm, &size));
  MPI_Comm local;
  MPI_CHECK(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local));
  MPI_CHECK(MPI_Comm_rank(local, &local_rank));
  MPI_CHECK(MPI_Comm_size(local, &local_size));
  MPI_CHECK(MPI_Comm_free(&local));
  return std::unique_ptr<Communicator>(
      new MpiCommunicator(comm, rank, size, local_rank, local_size));
}

}  // namespace resdist
