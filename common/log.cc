// Logger implementation: writes to stderr, one fflush'd line per call so ranks do not interleave.
#include "common/log.h"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace resdist {
namespace {
const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "D";
    case LogLevel::kInfo: return "I";
    case LogLevel::kWarning: return "W";
    case LogLevel::kError: return "E";
  }
  return "?";
}
}  // namespace

void Logger::log(LogLevel level, std::string_view message) const {
  if (level < min_level_) return;
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::string prefix = std::string(stamp) + " " + LevelName(level) + " " + component_;
  if (!job_id_.empty()) prefix += " job=" + job_id_;
  if (rank_ >= 0) prefix += " rank=" + std::to_string(rank_);
  std::fprintf(stderr, "%s: %.*s\n", prefix.c_str(), static_cast<int>(message.size()),
               message.data());
  std::fflush(stderr);
}

}  // namespace resdist
