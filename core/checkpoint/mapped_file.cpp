#include "checkpoint/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "hostrun/status.hpp"

namespace hostrun::checkpoint {

namespace {

// Closes the descriptor on every path out of the constructor; the mapping
// stays valid after close.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

MappedFile::MappedFile(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw Error(err == ENOENT ? ErrorCode::not_found : ErrorCode::io_error,
                fmt::format("{}: cannot open: {}", path.string(), std::strerror(err)));
  }
  FdCloser closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    throw Error(ErrorCode::io_error, fmt::format("{}: cannot stat: {}", path.string(), std::strerror(errno)));
  if (!S_ISREG(st.st_mode))
    throw Error(ErrorCode::invalid_argument, fmt::format("{}: expected a regular file", path.string()));
  if (st.st_size == 0) return;
  // MAP_PRIVATE + PROT_READ: views handed to plugins cannot write through to
  // the checkpoint, and a write attempt faults instead of corrupting it.
  void* base = ::mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  if (base == MAP_FAILED)
    throw Error(errno == ENOMEM ? ErrorCode::out_of_memory : ErrorCode::io_error,
                fmt::format("{}: cannot memory-map {} bytes: {}", path.string(), st.st_size,
                            std::strerror(errno)));
  base_ = static_cast<const std::byte*>(base);
  size_ = size_t(st.st_size);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() { release(); }

void MappedFile::release() noexcept {
  if (base_ != nullptr) ::munmap(const_cast<std::byte*>(base_), size_);
  base_ = nullptr;
  size_ = 0;
}

}  // namespace hostrun::checkpoint
