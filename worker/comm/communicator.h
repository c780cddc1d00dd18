// The communicator interface: rank/size, all-reduce of flat buffers (blocking and asynchronous),
// broadcast, barrier, all-gather of small values and a job-wide abort. Implementations: `single`
// (world of 1, unit tests and plain runs), `mpi` (mpirun); NCCL comes with the GPU backend and
// implements the same interface. Not the gradient reducer (worker/train/reducer.h), which
// decides what to reduce when.
//
// Ordering contract: every rank issues the same collectives in the same order (blocking and
// asynchronous ones share one queue per communicator), so no negotiation is needed.
// Thread contract: one thread (the training loop's) calls the communicator; the reduction itself
// may run on a communication thread, which is why asynchronous calls return a ticket.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace resdist {

// Identifies one asynchronous operation; tickets complete in issue order.
using CommTicket = uint64_t;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual int local_rank() const = 0;  // rank among the processes on this host
  virtual int local_size() const = 0;

  // data[i] = sum over ranks of data[i]; every rank gets bit-identical results.
  virtual void allreduce_sum(float* data, size_t count) = 0;
  virtual void allreduce_sum(double* data, size_t count) = 0;
  // Sum, then multiplied by 1/size().
  void allreduce_avg(float* data, size_t count);

  // Starts an all-reduce (sum) of `data`, which must stay untouched until wait() returns for
  // the returned ticket (or a later one).
  virtual CommTicket allreduce_sum_async(float* data, size_t count) = 0;
  virtual CommTicket allreduce_sum_async(double* data, size_t count) = 0;
  // Blocks until the operation `ticket` (and every earlier one) has completed.
  virtual void wait(CommTicket ticket) = 0;

  // Copies `bytes` bytes at `data` from rank `root` to every rank.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Returns every rank's `value`, indexed by rank.
  virtual std::vector<uint64_t> allgather(uint64_t value) = 0;

  // Prints "rank R: message" to stderr and ends every rank of the job with `code`. Safe to call
  // from any thread, including while other ranks wait in a collective.
  [[noreturn]] virtual void abort(const std::string& message, int code) = 0;
};

// A world of one process: reductions are identities, abort() exits.
std::unique_ptr<Communicator> MakeSingleCommunicator();

// True when this process was started by mpirun / srun with a PMI(x) environment.
bool LaunchedByMpiRuntime();

// Initializes MPI (once per process; finalized by the communicator's destructor) and starts the
// communication thread. Errors when MPI is unavailable in this build or fails to start.
StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator();

}  // namespace resdist
