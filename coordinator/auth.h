// Bearer-token checks for the control plane: the admin token (JobService) and per-job worker
// tokens (WorkerService). Tokens are compared in constant time. Not an identity system.
#pragma once

#include <string>
#include "absl/strings/string_view.h"

#include "common/status.h"

namespace resdist::coordinator {

// The token from an `authorization` metadata value "Bearer <token>"; UNAUTHENTICATED when the
// header is missing or malformed.
StatusOr<std::string> ParseBearer(const std::string* header_value);

// Equality that takes the same time wherever the strings differ.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// 32 random bytes (from the kernel) as 64 hex characters.
StatusOr<std::string> NewToken();

// Reads a token file: the first line, surrounding whitespace removed; error if empty.
StatusOr<std::string> ReadTokenFile(const std::string& path);

}  // namespace resdist::coordinator
