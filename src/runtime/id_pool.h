#pragma once
// Ids 0..count-1 handed out and given back (cache slots, prefix snapshots): the most recently given back
// is taken first, so a freed slot's host memory is reused while it is warm.
#include <optional>
#include <vector>

namespace uberlm {

class IdPool {
 public:
  explicit IdPool(int count) : count_(count) {
    for (int id = count - 1; id >= 0; --id) free_.push_back(id);
  }
  std::optional<int> take() {
    if (free_.empty()) return std::nullopt;
    const int id = free_.back();
    free_.pop_back();
    return id;
  }
  void give_back(int id) { free_.push_back(id); }
  int total() const { return count_; }
  int used() const { return count_ - static_cast<int>(free_.size()); }

 private:
  int count_;
  std::vector<int> free_;
};

}  // namespace uberlm
