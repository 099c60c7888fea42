/// @file sae/detail/mapped_file.hpp
/// A read-only, private memory map of a whole file (POSIX mmap), movable and non-copyable.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sae/io/error.hpp"

namespace sae::detail {

/// Read-only memory map of an entire regular file (PROT_READ, MAP_PRIVATE).
///
/// An empty file is not mapped: data() is nullptr and size() is 0. The file descriptor is
/// closed once the map exists. The data is only valid while this object lives; if another
/// process truncates the file while it is mapped, touching the lost pages raises SIGBUS
/// (inherent to mmap), so writers of files that may be mapped must use atomic replacement
/// (sae/io/atomic_file.hpp), which leaves the mapped inode untouched.
class MappedFile {
 public:
  /// An empty object (no file).
  MappedFile() = default;

  /// Maps `path`. Throws sae::io::IoError "PATH: cannot open (strerror)" if the file cannot be
  /// opened, "PATH: not a regular file" for directories and the like, or
  /// "PATH: cannot map (strerror)".
  explicit MappedFile(std::filesystem::path path) : path_(std::move(path)) {
    int fd = -1;
    do {
      fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO must not block: refused below
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      const int err = errno;
      throw io::IoError(path_, std::string("cannot open (") + std::strerror(err) + ")");
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      throw io::IoError(path_, std::string("cannot stat (") + std::strerror(err) + ")");
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw io::IoError(path_, "not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        size_ = 0;
        throw io::IoError(path_, std::string("cannot map (") + std::strerror(err) + ")");
      }
      data_ = static_cast<const std::byte*>(p);
    }
    ::close(fd);
  }

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  MappedFile(MappedFile&& other) noexcept
      : path_(std::move(other.path_)),
        data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}

  MappedFile& operator=(MappedFile&& other) noexcept {
    if (this != &other) {
      unmap();
      path_ = std::move(other.path_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  ~MappedFile() { unmap(); }

  /// First byte of the file (page-aligned), or nullptr for an empty file.
  const std::byte* data() const noexcept { return data_; }
  /// File size in bytes at the time it was mapped.
  std::size_t size() const noexcept { return size_; }
  /// The path the file was opened with.
  const std::filesystem::path& path() const noexcept { return path_; }

  /// Hints the kernel that [offset, offset+length) will be read sequentially (madvise);
  /// a no-op on failure or for an empty map.
  void advise_sequential(std::size_t offset = 0, std::size_t length = static_cast<std::size_t>(-1)) const noexcept {
    advise(offset, length, MADV_SEQUENTIAL);
  }
  /// Hints that [offset, offset+length) will be needed soon (MADV_WILLNEED).
  void advise_willneed(std::size_t offset = 0, std::size_t length = static_cast<std::size_t>(-1)) const noexcept {
    advise(offset, length, MADV_WILLNEED);
  }

 private:
  void advise(std::size_t offset, std::size_t length, int how) const noexcept {
    if (data_ == nullptr || offset >= size_) return;
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t start = offset - offset % page;  // madvise wants a page-aligned start
    const std::size_t end = (length > size_ - offset) ? size_ : offset + length;
    ::madvise(const_cast<std::byte*>(data_) + start, end - start, how);
  }

  void unmap() noexcept {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace sae::detail
