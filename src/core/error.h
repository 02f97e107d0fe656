#pragma once
// One exception type for every user-facing failure: bad files, bad configs, bad requests.
// The message always names the file, tensor, field or request at fault.
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace uberlm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace uberlm
