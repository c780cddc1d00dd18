// main() for the MPI suites: creates the communicator before the tests and destroys it (MPI
// finalize) after them; only rank 0 prints GoogleTest's per-test lines.
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>

#include "tests/integration/mpi/mpi_test_main.h"

namespace resdist {
namespace {
std::unique_ptr<Communicator>* CommSlot() {
  static std::unique_ptr<Communicator> comm;
  return &comm;
}
}  // namespace

Communicator& TestComm() { return **CommSlot(); }

}  // namespace resdist

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto& comm = *resdist::CommSlot();
  if (resdist::LaunchedByMpiRuntime()) {
    auto c = resdist::MakeMpiCommunicator();
    if (!c.ok()) {
      std::fprintf(stderr, "%s\n", std::string(c.status().message()).c_str());
      return 2;
    }
    comm = std::move(*c);
  } else {
    comm = resdist::MakeSingleCommunicator();
  }
  if (comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  // Every rank reports; a failure on any rank fails the job (non-zero exit of that rank).
  comm.reset();
  return rc;
}
