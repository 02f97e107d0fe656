#include "core/progress_bar.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

namespace uberlm {

ProgressBar::ProgressBar(std::string label, int64_t total)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), interactive_(isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::advance(int64_t steps, const std::string& note) {
  done_ = std::min(total_, done_ + steps);
  draw(note);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (interactive_) std::fputc('\n', stderr);
}

void ProgressBar::draw(const std::string& note) {
  const int decile = static_cast<int>(done_ * 10 / total_);
  if (!interactive_ && decile == last_decile_) return;
  last_decile_ = decile;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(done_ * kWidth / total_);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = done_ > 0 ? elapsed * (total_ - done_) / done_ : 0.0;
  std::string line = fmt::format("{} [{}{}] {}/{} {:.0f}s elapsed, eta {:.0f}s {}", label_, std::string(filled, '#'),
                                 std::string(kWidth - filled, '.'), done_, total_, elapsed, eta, note);
  std::fputs(interactive_ ? ("\r" + line).c_str() : (line + "\n").c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace uberlm
