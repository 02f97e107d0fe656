#pragma once
// Bump allocation over one device allocation. A planning arena (base 0) only adds up sizes, so that the
// same layout code first measures and then places every buffer.
#include <algorithm>
#include <cstdint>

namespace uberlm::gpu {

inline constexpr int64_t kArenaAlignment = 256;

inline int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

class Arena {
 public:
  explicit Arena(uintptr_t base = 0) : base_(base) {}
  template <typename T>
  T* take(int64_t count) {
    const int64_t offset = used_;
    used_ += round_up(std::max<int64_t>(count, 1) * static_cast<int64_t>(sizeof(T)), kArenaAlignment);
    return reinterpret_cast<T*>(base_ + offset);
  }
  int64_t used() const { return used_; }
  uintptr_t base() const { return base_; }

 private:
  uintptr_t base_;
  int64_t used_ = 0;
};

}  // namespace uberlm::gpu
