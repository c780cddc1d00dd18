// The world-of-one communicator: every collective is an identity. Used by unit tests and by
// resdist-worker when no MPI runtime started it.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "worker/comm/communicator.h"

namespace resdist {

void Communicator::allreduce_avg(float* data, size_t count) {
  allreduce_sum(data, count);
  const float inv = 1.0f / static_cast<float>(size());
  for (size_t i = 0; i < count; ++i) data[i] *= inv;
}

namespace {

class SingleCommunicator final : public Communicator {
 public:
  std::string name() const override { return "single"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  void allreduce_sum(float*, size_t) override {}
  void allreduce_sum(double*, size_t) override {}
  CommTicket allreduce_sum_async(float*, size_t) override { return ++issued_; }
  CommTicket allreduce_sum_async(double*, size_t) override { return ++issued_; }
  void wait(CommTicket) override {}
  void broadcast(void*, size_t, int) override {}
  void barrier() override {}
  std::vector<uint64_t> allgather(uint64_t value) override { return {value}; }
  [[noreturn]] void abort(const std::string& message, int code) override {
    std::fprintf(stderr, "rank 0: %s\n", message.c_str());
    std::fflush(stderr);
    std::_Exit(code);
  }

 private:
  CommTicket issued_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> MakeSingleCommunicator() {
  return std::make_unique<SingleCommunicator>();
}

bool LaunchedByMpiRuntime() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

}  // namespace resdist
