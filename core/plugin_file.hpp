// What a file must be before the loader hands it to dlopen: the dynamic
// loader maps a library's segments and touches pages of them, so a truncated
// file (a half-copied plugin, a download cut short) faults inside dlopen with
// SIGBUS and takes the whole process down, whatever command was running.
#pragma once

#include <filesystem>

#include "hostrun/status.hpp"

namespace hostrun::core {

// ok, or why the file cannot be a plugin for this process: not a regular
// file; not an ELF shared object of this machine's class, byte order and
// architecture; a program header table, a loadable segment or the section
// header table that reaches past the end of the file.
Status check_plugin_file(const std::filesystem::path& file) noexcept;

}  // namespace hostrun::core
