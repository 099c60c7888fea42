/// @file sae/io/atomic_file.hpp
/// Atomic file replacement: write a temporary file next to the target, fsync, rename over it.
#pragma once

#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sae/io/error.hpp"

namespace sae::io {

namespace detail::atomic {

/// Process-wide counter so that two AtomicFile objects in one process never share a temp name.
inline std::atomic<unsigned long long>& temp_counter() {
  static std::atomic<unsigned long long> counter{0};
  return counter;
}

inline std::string errno_text(int err) { return std::strerror(err); }

/// This machine's host name reduced to [A-Za-z0-9-] (temporary names carry it, so that a
/// process never judges another machine's temporary file on a shared file system).
inline const std::string& host_tag() {
  static const std::string tag = [] {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0) return std::string("host");
    std::string t;
    for (const char* c = buf; *c != 0; ++c)
      if (std::isalnum(static_cast<unsigned char>(*c)) || *c == '-') t += *c;
    return t.empty() ? std::string("host") : t;
  }();
  return tag;
}

}  // namespace detail::atomic

/// The suffix of every temporary name libsae creates: ".tmp.PID.N.HOST" (N counts within the
/// process). `NAME` + temp_suffix() is the temporary of NAME.
inline std::string temp_suffix() {
  return ".tmp." + std::to_string(static_cast<long long>(::getpid())) + "." +
         std::to_string(detail::atomic::temp_counter().fetch_add(1)) + "." + detail::atomic::host_tag();
}

/// True if @p name is a temporary of @p base (base + ".tmp.PID.N[.HOST]") that no live process
/// owns: its HOST is this machine's (or absent, as in names older libsae versions wrote) and
/// process PID no longer exists. Temporaries of live processes and of other machines are never
/// stale.
inline bool is_stale_temp(const std::string& name, const std::string& base) {
  const std::string prefix = base + ".tmp.";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string rest = name.substr(prefix.size());  // PID.N[.HOST]
  const std::size_t dot1 = rest.find('.');
  if (dot1 == 0 || dot1 == std::string::npos) return false;
  long long pid = 0;
  for (std::size_t i = 0; i < dot1; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(rest[i])) || pid > (1LL << 40)) return false;
    pid = pid * 10 + (rest[i] - '0');
  }
  const std::size_t dot2 = rest.find('.', dot1 + 1);
  const std::string host = dot2 == std::string::npos ? std::string() : rest.substr(dot2 + 1);
  if (!host.empty() && host != detail::atomic::host_tag()) return false;
  if (pid <= 0 || pid == static_cast<long long>(::getpid())) return false;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

/// Streaming atomic writer.
///
/// Protocol: the constructor creates "<path>" + temp_suffix() in the target's directory
/// (exclusively; mode 0666 minus umask, or the existing target's permission bits);
/// write() appends bytes (buffered); commit() flushes (fflush), fsyncs the file, closes it,
/// renames it over `path` (atomic on POSIX file systems) and fsyncs the directory so the
/// rename itself is durable. Readers of `path` therefore see either the old file or the
/// complete new one, never a partial write.
///
/// On any failure the temporary file is removed and IoError "PATH: problem" is thrown, with
/// PATH the target path. If the object is destroyed without a successful commit() (e.g. an
/// exception unwinds past it), the temporary file is removed and the target is untouched.
///
/// Not copyable; movable (the moved-from object owns nothing).
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
    tmp_ = path_;
    tmp_ += temp_suffix();
    mode_t mode = 0666;
    struct stat st {};
    const bool had_target = ::stat(path_.c_str(), &st) == 0 && S_ISREG(st.st_mode);
    if (had_target) mode = st.st_mode & 07777;
    int fd = -1;
    do {
      fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      const int err = errno;
      throw IoError(path_, "cannot create temporary file '" + tmp_.string() + "': " + detail::atomic::errno_text(err));
    }
    // open() applied the umask; keep an existing target's exact permissions.
    if (had_target) (void)::fchmod(fd, mode);
    file_ = ::fdopen(fd, "wb");
    if (file_ == nullptr) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp_.c_str());
      throw IoError(path_, "cannot open temporary file stream: " + detail::atomic::errno_text(err));
    }
    std::setvbuf(file_, nullptr, _IOFBF, std::size_t{1} << 20);
  }

  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  AtomicFile(AtomicFile&& other) noexcept
      : path_(std::move(other.path_)),
        tmp_(std::move(other.tmp_)),
        file_(std::exchange(other.file_, nullptr)),
        committed_(other.committed_) {}

  AtomicFile& operator=(AtomicFile&& other) noexcept {
    if (this != &other) {
      discard();
      path_ = std::move(other.path_);
      tmp_ = std::move(other.tmp_);
      file_ = std::exchange(other.file_, nullptr);
      committed_ = other.committed_;
    }
    return *this;
  }

  /// Removes the temporary file unless commit() succeeded.
  ~AtomicFile() { discard(); }

  /// Appends `size` bytes. Throws IoError (after removing the temp file) on failure or if
  /// the file was already committed or discarded.
  void write(const void* data, std::size_t size) {
    if (file_ == nullptr) throw IoError(path_, "write after commit or failure");
    if (size == 0) return;
    if (std::fwrite(data, 1, size, file_) != size) {
      const int err = errno;
      fail("write failed: " + detail::atomic::errno_text(err));
    }
  }

  /// Convenience overload for a byte span.
  void write(std::span<const std::byte> bytes) { write(bytes.data(), bytes.size()); }

  /// Flushes, fsyncs, renames over the target and fsyncs the directory.
  void commit() {
    if (file_ == nullptr) throw IoError(path_, "commit after commit or failure");
    if (std::fflush(file_) != 0) {
      const int err = errno;
      fail("flush failed: " + detail::atomic::errno_text(err));
    }
    if (::fsync(::fileno(file_)) != 0) {
      const int err = errno;
      fail("fsync failed: " + detail::atomic::errno_text(err));
    }
    FILE* f = std::exchange(file_, nullptr);
    if (std::fclose(f) != 0) {
      const int err = errno;
      ::unlink(tmp_.c_str());
      throw IoError(path_, "close failed: " + detail::atomic::errno_text(err));
    }
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp_.c_str());
      throw IoError(path_, "cannot rename temporary file into place: " + detail::atomic::errno_text(err));
    }
    committed_ = true;
    sync_directory();
  }

  /// The target path.
  const std::filesystem::path& path() const noexcept { return path_; }
  /// The temporary file's path (exists between construction and commit()).
  const std::filesystem::path& temp_path() const noexcept { return tmp_; }

 private:
  [[noreturn]] void fail(const std::string& problem) {
    discard();
    throw IoError(path_, problem);
  }

  void discard() noexcept {
    if (file_ != nullptr) {
      std::fclose(file_);
      file_ = nullptr;
      if (!committed_) ::unlink(tmp_.c_str());
    }
  }

  void sync_directory() const {
    std::filesystem::path dir = path_.parent_path();
    if (dir.empty()) dir = ".";
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return;  // cannot open the directory for syncing; the rename is done
    int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    // Some file systems do not support fsync on directories; that is not an error.
    if (rc != 0 && err != EINVAL && err != ENOTSUP && err != EROFS && err != EBADF)
      throw IoError(path_, "fsync of the directory failed: " + detail::atomic::errno_text(err));
  }

  std::filesystem::path path_;
  std::filesystem::path tmp_;
  FILE* file_ = nullptr;
  bool committed_ = false;
};

/// Atomically replaces (or creates) `path` with `bytes`. See AtomicFile for the protocol.
/// Throws IoError "PATH: problem" on failure; the previous content of `path` is then intact.
inline void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  AtomicFile file(path);
  file.write(bytes.data(), bytes.size());
  file.commit();
}

}  // namespace sae::io
