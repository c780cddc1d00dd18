// Built instead of mpi_communicator.cc when CMake finds no MPI: the factory reports it.
#include "worker/comm/communicator.h"

namespace resdist {

StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator() {
  return absl::UnimplementedError(
      "this resdist-worker was built without MPI; install libopenmpi-dev and rebuild");
}

}  // namespace resdist
