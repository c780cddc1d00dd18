// A one-line progress bar for long client operations, drawn on stderr only when it is a
// terminal (logs and pipes stay clean). Not a logger.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace resdist::client {

class ProgressBar {
 public:
  // `force` draws even when stderr is not a terminal (tests).
  explicit ProgressBar(std::string label, bool force = false);
  ~ProgressBar();  // ends the line if something was drawn

  // Redraws at most ~10 times a second, and always on completion.
  void update(int64_t done, int64_t total);

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace resdist::client
