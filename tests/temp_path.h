#pragma once

#include <unistd.h>

#include <filesystem>
#include <string_view>

#include <fmt/format.h>

// ctest runs each test in its own process, many at once, and another checkout's suite may run beside
// it: a fixed name or a time-based seed collides, the process id does not.
inline std::filesystem::path process_temp_path(std::string_view stem) {
  return std::filesystem::temp_directory_path() / fmt::format("{}_{}", stem, ::getpid());
}
