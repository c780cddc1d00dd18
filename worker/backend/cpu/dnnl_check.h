// DNNL_TRY: turns a oneDNN error into a message with file:line and the library's status, then
// aborts the process (under MPI the runtime ends every rank). Used only in backend/cpu.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "oneapi/dnnl/dnnl.hpp"

#define DNNL_TRY(...)                                                                   \
  do {                                                                                  \
    try {                                                                               \
      __VA_ARGS__;                                                                      \
    } catch (const dnnl::error& e) {                                                    \
      std::fprintf(stderr, "%s:%d: oneDNN error: %s (status %d)\n", __FILE__, __LINE__, \
                   e.what(), static_cast<int>(e.status));                               \
      std::fflush(stderr);                                                              \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)
