// MPI_CHECK: the worker's one check macro for MPI calls. On failure it prints file:line, the call
// and MPI's error string, then aborts every rank of the job (MPI_Abort), never just this process.
#pragma once

#include <mpi.h>

namespace resdist {

[[noreturn]] void MpiCheckFailed(int code, const char* call, const char* file, int line);

}  // namespace resdist

#define MPI_CHECK(call)                                                            \
  do {                                                                             \
    const int resdist_mpi_rc_ = (call);                                            \
    if (resdist_mpi_rc_ != MPI_SUCCESS)                                            \
      ::resdist::MpiCheckFailed(resdist_mpi_rc_, #call, __FILE__, __LINE__);      \
  } while (0)
