#pragma once
// Model folders are read from paths a user names: a FIFO, socket or device there would block a read
// forever (or yield endless bytes). Every file of a checkpoint is checked before it is opened.
#include <filesystem>

namespace uberlm {

// Throws Error "PATH: not a regular file (...)" when PATH exists and is anything but a regular file
// (symbolic links are followed). A missing file passes: the caller's open reports it in its own words.
void require_regular_file(const std::filesystem::path& path);

}  // namespace uberlm
