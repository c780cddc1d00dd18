// Token helpers. Randomness comes from getrandom(2); no process-wide RNG state.
#include "coordinator/auth.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace resdist::coordinator {

StatusOr<std::string> ParseBearer(const std::string* header_value) {
  if (header_value == nullptr)
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  absl::string_view v = absl::StripAsciiWhitespace(*header_value);
  constexpr absl::string_view kPrefix = "Bearer ";
  if (v.size() <= kPrefix.size() || !absl::StartsWithIgnoreCase(v, kPrefix))
    return absl::UnauthenticatedError("authorization metadata is not 'Bearer <token>'");
  std::string token(absl::StripAsciiWhitespace(v.substr(kPrefix.size())));
  if (token.empty()) return absl::UnauthenticatedError("empty bearer token");
  return token;
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Length is not secret (tokens have a fixed format); contents are.
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

StatusOr<std::string> NewToken() {
  unsigned char bytes[32];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("getrandom: ", std::strerror(errno)));
    }
    got += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("token file '", path, "': cannot open"));
  std::string line;
  std::getline(in, line);
  std::string token(absl::StripAsciiWhitespace(line));
  if (token.empty())
    return absl::InvalidArgumentError(absl::StrCat("token file '", path, "' is empty"));
  return token;
}

}  // namespace resdist::coordinator
