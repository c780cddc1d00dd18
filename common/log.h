// One-line-per-event logging with a component tag and optional job id / rank. Not a metrics sink.
#pragma once

#include <string>
#include <string_view>

namespace resdist {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// A logger is a value passed explicitly (no global state); it carries the fields that every
// line of one process shares.
class Logger {
 public:
  Logger() = default;
  Logger(std::string component, int rank = -1, std::string job_id = "")
      : component_(std::move(component)), rank_(rank), job_id_(std::move(job_id)) {}

  void set_min_level(LogLevel level) { min_level_ = level; }
  void log(LogLevel level, std::string_view message) const;
  void info(std::string_view m) const { log(LogLevel::kInfo, m); }
  void warn(std::string_view m) const { log(LogLevel::kWarning, m); }
  void error(std::string_view m) const { log(LogLevel::kError, m); }

 private:
  std::string component_ = "resdist";
  int rank_ = -1;
  std::string job_id_;
  LogLevel min_level_ = LogLevel::kInfo;
};

}  // namespace resdist
