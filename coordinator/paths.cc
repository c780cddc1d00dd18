// Path confinement: weakly_canonical resolves symlinks of the existing prefix, and the
// not-yet-existing tail is normalised lexically, so neither `..` nor a symlink can step out.
#include "coordinator/paths.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace resdist::coordinator {
namespace fs = std::filesystem;

namespace {
constexpr size_t kMaxPathLength = 4096;

bool IsUnder(const fs::path& root, const fs::path& p) {
  auto r = root.begin(), q = p.begin();
  for (; r != root.end(); ++r, ++q) {
    if (r->empty()) continue;  // trailing separator of the root
    if (q == p.end() || *r != *q) return false;
  }
  return true;
}
}  // namespace

StatusOr<std::string> CanonicalRoot(const std::string& root) {
  std::error_code ec;
  fs::path canonical = fs::canonical(root, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--data-root '", root, "': ", ec.message()));
  if (!fs::is_directory(canonical, ec))
    return absl::InvalidArgumentError(absl::StrCat("--data-root '", root, "' is not a directory"));
  return canonical.string();
}

StatusOr<std::string> ResolveUnderRoot(const std::string& root, absl::string_view path,
                                       absl::string_view field) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty path"));
  if (path.size() > kMaxPathLength)
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": path is ", path.size(), " bytes, at most ", kMaxPathLength));
  if (path.find('\0') != absl::string_view::npos)
    return absl::InvalidArgumentError(absl::StrCat(field, ": path contains a NUL byte"));
  fs::path p{std::string(path)};
  if (p.is_relative()) p = fs::path(root) / p;
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(p, ec);
  if (ec)
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": cannot resolve '", path, "': ", ec.message()));
  resolved = resolved.lexically_normal();
  if (!IsUnder(fs::path(root), resolved))
    return absl::PermissionDeniedError(absl::StrCat(field, ": '", path, "' resolves to '",
                                                    resolved.string(), "', outside --data-root '",
                                                    root, "'"));
  return resolved.string();
}

}  // namespace resdist::coordinator
