#include "plugin_file.hpp"

#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace hostrun::core {

namespace fs = std::filesystem;

namespace {

// This process's own ELF identity: what a library must match to be mapped into it.
struct Identity {
  unsigned char elf_class = 0;
  unsigned char byte_order = 0;
  uint16_t machine = 0;
};

Identity own_identity() {
  Identity id;
  id.elf_class = sizeof(void*) == 8 ? ELFCLASS64 : ELFCLASS32;
  const uint16_t probe = 1;
  id.byte_order = *reinterpret_cast<const unsigned char*>(&probe) == 1 ? ELFDATA2LSB : ELFDATA2MSB;
#if defined(__x86_64__)
  id.machine = EM_X86_64;
#elif defined(__aarch64__)
  id.machine = EM_AARCH64;
#elif defined(__i386__)
  id.machine = EM_386;
#elif defined(__powerpc64__)
  id.machine = EM_PPC64;
#else
#error "add this architecture's ELF machine number"
#endif
  return id;
}

// Reads exactly `size` bytes at `offset`; false when the file is shorter or a read fails.
bool read_at(int fd, uint64_t offset, void* into, size_t size) {
  auto* bytes = static_cast<unsigned char*>(into);
  while (size > 0) {
    const ssize_t got = ::pread(fd, bytes, size, off_t(offset));
    if (got <= 0) return false;
    bytes += got;
    offset += uint64_t(got);
    size -= size_t(got);
  }
  return true;
}

class Fd {
 public:
  explicit Fd(const fs::path& file) : fd_(::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

template <typename Ehdr, typename Phdr>
Status check_segments(int fd, uint64_t file_size, const Ehdr& header) {
  if (header.e_type != ET_DYN) return Status(ErrorCode::invalid_argument, "not a shared object (ELF type is not ET_DYN)");
  if (header.e_phnum == 0 || header.e_phentsize != sizeof(Phdr))
    return Status(ErrorCode::corrupt_data, fmt::format("its program header table is malformed ({} entries of {} bytes)",
                                                       header.e_phnum, header.e_phentsize));
  const uint64_t table_bytes = uint64_t(header.e_phnum) * sizeof(Phdr);
  if (header.e_phoff > file_size || table_bytes > file_size - header.e_phoff)
    return Status(ErrorCode::corrupt_data,
                  fmt::format("truncated: its program headers end at byte {}, the file has {}",
                              uint64_t(header.e_phoff) + table_bytes, file_size));
  std::vector<Phdr> segments(header.e_phnum);
  if (!read_at(fd, header.e_phoff, segments.data(), table_bytes))
    return Status(ErrorCode::io_error, "its program headers cannot be read");
  for (const Phdr& segment : segments) {
    if (segment.p_type != PT_LOAD) continue;
    if (segment.p_offset > file_size || segment.p_filesz > file_size - segment.p_offset)
      return Status(ErrorCode::corrupt_data,
                    fmt::format("truncated: a loadable segment ends at byte {}, the file has {}",
                                uint64_t(segment.p_offset) + uint64_t(segment.p_filesz), file_size));
  }
  // A linker writes the section header table last; a file cut short loses
  // it first, even while every segment dlopen maps is still whole.
  const uint64_t sections_bytes = uint64_t(header.e_shnum) * uint64_t(header.e_shentsize);
  if (header.e_shoff != 0 && (header.e_shoff > file_size || sections_bytes > file_size - header.e_shoff))
    return Status(ErrorCode::corrupt_data,
                  fmt::format("truncated: its section headers end at byte {}, the file has {}",
                              uint64_t(header.e_shoff) + sections_bytes, file_size));
  return Status();
}

}  // namespace

Status check_plugin_file(const fs::path& file) noexcept {
  return guard([&]() -> Status {
    std::error_code ec;
    const fs::file_status status = fs::status(file, ec);
    if (!fs::is_regular_file(status)) return Status(ErrorCode::invalid_argument, "not a regular file");
    const uint64_t file_size = fs::file_size(file, ec);
    if (ec) return Status(ErrorCode::io_error, fmt::format("its size cannot be read: {}", ec.message()));
    Fd fd(file);
    if (fd.get() < 0) return Status(ErrorCode::io_error, fmt::format("cannot be opened: {}", std::strerror(errno)));
    unsigned char ident[EI_NIDENT] = {};
    if (file_size < EI_NIDENT || !read_at(fd.get(), 0, ident, EI_NIDENT) || std::memcmp(ident, ELFMAG, SELFMAG) != 0)
      return Status(ErrorCode::invalid_argument, "not an ELF file");
    const Identity own = own_identity();
    if (ident[EI_CLASS] != own.elf_class)
      return Status(ErrorCode::invalid_argument, fmt::format("an ELF{} library; this hostrun is ELF{}",
                                                             ident[EI_CLASS] == ELFCLASS64 ? 64 : 32,
                                                             own.elf_class == ELFCLASS64 ? 64 : 32));
    if (ident[EI_DATA] != own.byte_order)
      return Status(ErrorCode::invalid_argument, "an ELF library of the other byte order");
    auto check = [&]<typename Ehdr, typename Phdr>() -> Status {
      Ehdr header;
      if (file_size < sizeof(Ehdr) || !read_at(fd.get(), 0, &header, sizeof(Ehdr)))
        return Status(ErrorCode::corrupt_data, fmt::format("truncated: {} bytes, less than an ELF header", file_size));
      if (header.e_machine != own.machine)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("built for ELF machine {}, this hostrun runs on machine {}", header.e_machine, own.machine));
      return check_segments<Ehdr, Phdr>(fd.get(), file_size, header);
    };
    return own.elf_class == ELFCLASS64 ? check.template operator()<Elf64_Ehdr, Elf64_Phdr>()
                                       : check.template operator()<Elf32_Ehdr, Elf32_Phdr>();
  });
}

}  // namespace hostrun::core
