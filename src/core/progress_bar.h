#pragma once
// A progress bar on stderr for long work (loading, evals, tuning): redrawn in place on a terminal,
// one line every 10% otherwise, so CI logs stay short.
#include <chrono>
#include <cstdint>
#include <string>

namespace uberlm {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total);
  ~ProgressBar();
  void advance(int64_t steps = 1, const std::string& note = "");
  void finish();

 private:
  void draw(const std::string& note);
  std::string label_;
  int64_t total_, done_ = 0;
  int last_decile_ = -1;
  bool interactive_, finished_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace uberlm
