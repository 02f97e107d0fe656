#include "core/regular_file.h"

#include "core/error.h"

namespace uberlm {

namespace {

const char* kind_name(std::filesystem::file_type type) {
  switch (type) {
    case std::filesystem::file_type::directory:
      return "a folder";
    case std::filesystem::file_type::fifo:
      return "a FIFO";
    case std::filesystem::file_type::socket:
      return "a socket";
    case std::filesystem::file_type::block:
    case std::filesystem::file_type::character:
      return "a device";
    default:
      return "not a file";
  }
}

}  // namespace

void require_regular_file(const std::filesystem::path& path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (status.type() == std::filesystem::file_type::not_found || std::filesystem::is_regular_file(status)) return;
  if (error) fail("{}: cannot stat: {}", path.string(), error.message());
  fail("{}: not a regular file ({})", path.string(), kind_name(status.type()));
}

}  // namespace uberlm
