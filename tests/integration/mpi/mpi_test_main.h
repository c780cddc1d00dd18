// Shared main for the GoogleTest suites that run under mpirun: one MPI communicator per process
// (MPI can be initialized once), handed to the tests through TestComm().
#pragma once

#include "worker/comm/communicator.h"

namespace resdist {

// The process's communicator (MPI under mpirun, a world of one otherwise).
Communicator& TestComm();

}  // namespace resdist
