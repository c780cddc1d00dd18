// Error values for common/, the coordinator and the client: absl::Status / StatusOr, whose codes
// equal gRPC's. Not for the worker's hot path, which uses per-library check macros.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace resdist {

using absl::Status;
using absl::StatusOr;

}  // namespace resdist

#define RESDIST_CONCAT_INNER_(a, b) a##b
#define RESDIST_CONCAT_(a, b) RESDIST_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` yields a non-OK Status.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status resdist_status_ = (expr);       \
    if (!resdist_status_.ok()) return resdist_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` unwraps a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(RESDIST_CONCAT_(resdist_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                           \
  if (!tmp.ok()) return tmp.status();           \
  lhs = std::move(tmp).value()
