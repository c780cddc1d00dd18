// Path confinement for the coordinator: every dataset, checkpoint and output path a job names
// must resolve (after `..` and symlinks) under --data-root. Not a sandbox for the workers.
#pragma once

#include <string>
#include "absl/strings/string_view.h"

#include "common/status.h"

namespace resdist::coordinator {

// Resolves `path` (relative paths are taken relative to `root`) to an absolute, normalised path
// with every existing prefix's symlinks resolved, and checks that it lies under `root` (itself
// canonical). `field` names the job-spec field in errors, e.g.
//   data.train: '../etc/passwd' resolves to '/etc/passwd', outside --data-root '/srv/data'.
// Escapes are PERMISSION_DENIED; empty or malformed paths INVALID_ARGUMENT.
StatusOr<std::string> ResolveUnderRoot(const std::string& root, absl::string_view path,
                                       absl::string_view field);

// Canonical form of the root itself (must exist and be a directory).
StatusOr<std::string> CanonicalRoot(const std::string& root);

}  // namespace resdist::coordinator
