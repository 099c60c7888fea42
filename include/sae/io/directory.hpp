/// @file sae/io/directory.hpp
/// A directory of files that changes as a whole (an SAE directory: cfg.json, the weights, the
/// training log): readers see the old directory or the new one, never a mix.
///
/// Protocol (DirectoryWriter):
///   1. The files are written into a staging directory beside the target,
///      PARENT/.NAME + temp_suffix(), each one fsynced (AtomicFile).
///   2. commit(): if DIR does not exist, the staging directory is renamed to DIR. If it does,
///      the entries of DIR the new content does not replace are carried over (regular files and
///      symlinks as hard links before the swap, subdirectories such as checkpoint/ moved after
///      it), and the two directories are exchanged in one step (Linux renameat2
///      RENAME_EXCHANGE); the old content, now under the staging name, is removed.
///   3. Without RENAME_EXCHANGE (another kernel or file system) DIR is renamed aside and the
///      staging directory renamed into place: between the two renames DIR does not exist.
///   4. Where no staging directory can be made beside DIR (the parent is read-only while DIR is
///      writable, or DIR is a mount point) the files are replaced inside DIR, the *key file*
///      (cfg.json for an SAE) removed first and renamed into place last. A reader then sees the
///      old SAE, no SAE (no cfg.json), or the new one, never new weights with an old cfg.json.
/// A failure at any point before the swap removes the staging directory and every directory
/// the writer created, and leaves DIR as it was. A killed writer leaves a staging directory
/// that the next DirectoryWriter for the same DIR removes (recovering a carried-over
/// subdirectory if the kill fell between the swap and the move), once its process is gone.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic_file.hpp"
#include "error.hpp"

namespace sae::io {

namespace detail::dir {

inline void sync_dir(const std::filesystem::path& dir) noexcept {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

/// renameat2(a, b, RENAME_EXCHANGE): 0, or the errno (ENOSYS where it does not exist).
inline int exchange(const std::filesystem::path& a, const std::filesystem::path& b) noexcept {
#if defined(__linux__) && defined(RENAME_EXCHANGE)
  if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) return 0;
  return errno;
#else
  (void)a;
  (void)b;
  return ENOSYS;
#endif
}

/// Removes the stale temporaries (is_stale_temp) of files named in @p dir, and the stale
/// staging directories of @p target (PARENT/.NAME.tmp.*) after moving back any subdirectory a
/// writer killed between the swap and the move left in one. When @p target is missing, a stale
/// directory holding @p key_file (complete: the key file is committed last) becomes the target
/// instead: the old content a writer without RENAME_EXCHANGE had moved aside, or a new one
/// that was not yet renamed into place.
inline void remove_stale(const std::filesystem::path& parent, const std::filesystem::path& target,
                         const std::string& key_file) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string base = "." + target.filename().string();
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(parent.empty() ? fs::path(".") : parent, ec))
    if (is_stale_temp(e.path().filename().string(), base)) stale.push_back(e.path());
  for (const fs::path& s : stale) {
    if (!fs::exists(fs::symlink_status(target, ec)) && fs::is_regular_file(s / key_file, ec) &&
        ::rename(s.c_str(), target.c_str()) == 0)
      continue;
    if (fs::is_directory(target, ec))
      for (const auto& e : fs::directory_iterator(s, ec))
        if (e.is_directory(ec) && !e.is_symlink(ec) && !fs::exists(target / e.path().filename(), ec))
          fs::rename(e.path(), target / e.path().filename(), ec);
    fs::remove_all(s, ec);
  }
  if (fs::is_directory(target, ec)) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(target, ec)) {
      const std::string n = e.path().filename().string();
      const std::size_t t = n.find(".tmp.");
      if (t != std::string::npos && t > 0 && is_stale_temp(n, n.substr(0, t))) files.push_back(e.path());
    }
    for (const fs::path& f : files) fs::remove(f, ec);
  }
}

}  // namespace detail::dir

/// Checks, before any work, that a DirectoryWriter for @p dir can succeed as far as names and
/// permissions tell: @p dir is a directory or absent, and the directory the writer changes (the
/// nearest existing ancestor, or @p dir's parent, or @p dir itself) is writable. IoError
/// "DIR: problem" otherwise (disk space is only found while writing).
inline void check_directory_writable(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  auto writable = [](const fs::path& p) { return ::access(p.empty() ? "." : p.c_str(), W_OK | X_OK) == 0; };
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) throw IoError(dir, "exists and is not a directory");
    const fs::path parent = fs::absolute(dir, ec).lexically_normal().parent_path();
    if (writable(parent) || writable(dir)) return;
    throw IoError(dir, std::string("cannot write here: ") + std::strerror(errno));
  }
  fs::path a = fs::absolute(dir, ec).lexically_normal();
  while (!a.empty() && !fs::exists(a, ec) && a != a.parent_path()) a = a.parent_path();
  if (!fs::is_directory(a, ec)) throw IoError(dir, "cannot be created: '" + a.string() + "' is not a directory");
  if (!writable(a)) throw IoError(dir, "cannot be created in '" + a.string() + "': " + std::strerror(errno));
}

/// Writes a directory that changes as a whole (see the file comment).
///
///     DirectoryWriter w(dir, "cfg.json");
///     safetensors.write_to(w.file("sae_weights.safetensors"));
///     w.file("cfg.json").write(text.data(), text.size());
///     w.commit();
///
/// Throws IoError "DIR: problem" (or naming the file) on failure; DIR is then unchanged. Not
/// copyable or movable; destroyed without commit(), it removes what it wrote.
class DirectoryWriter {
 public:
  /// @p key_file: the file without which the directory holds nothing a reader would load
  /// (written last in the in-place mode). @p owned: names that belong to the content and go
  /// with the old content even when the new one lacks them (an old training log beside a
  /// converted SAE would describe another model); every other entry is carried over.
  explicit DirectoryWriter(std::filesystem::path dir, std::string key_file, std::vector<std::string> owned = {})
      : key_(std::move(key_file)), owned_(std::move(owned)) {
    owned_.push_back(key_);
    namespace fs = std::filesystem;
    std::error_code ec;
    if (dir.empty()) throw IoError(dir, "empty directory name");
    // A symlink to a directory: write where it points, keep the link.
    if (fs::is_symlink(dir, ec) && fs::is_directory(dir, ec)) dir = fs::canonical(dir, ec);
    if (dir.filename().empty() || dir.filename() == "." || dir.filename() == "..")
      dir = fs::weakly_canonical(fs::absolute(dir, ec), ec);
    dir_ = dir;
    const fs::file_status st = fs::status(dir_, ec);
    if (fs::exists(st) && !fs::is_directory(st)) throw IoError(dir_, "exists and is not a directory");
    parent_ = dir_.parent_path();
    // Create the missing ancestors, remembering them so that a failure removes them again.
    {
      std::vector<fs::path> missing;
      for (fs::path a = parent_; !a.empty() && !fs::exists(a, ec); a = a.parent_path()) {
        missing.push_back(a);
        if (a == a.parent_path()) break;
      }
      for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
        if (::mkdir(it->c_str(), 0777) != 0 && errno != EEXIST) {
          const int err = errno;
          cleanup_created();
          throw IoError(dir_, "cannot create directory '" + it->string() + "': " + std::strerror(err));
        }
        created_.push_back(*it);
      }
    }
    detail::dir::remove_stale(parent_, dir_, key_);  // may put DIR back
    existed_ = fs::is_directory(dir_, ec);
    // A mount point cannot be renamed: its files are replaced in place.
    struct stat ds {
    }, ps{};
    if (existed_ && ::stat(dir_.c_str(), &ds) == 0 && ::stat(parent_.empty() ? "." : parent_.c_str(), &ps) == 0 &&
        ds.st_dev != ps.st_dev)
      in_place_ = true;
    if (in_place_) return;
    staging_ = (parent_.empty() ? fs::path(".") : parent_) / ("." + dir_.filename().string() + temp_suffix());
    if (::mkdir(staging_.c_str(), 0777) != 0) {
      const int err = errno;
      if (existed_ && (err == EACCES || err == EPERM || err == EROFS) && ::access(dir_.c_str(), W_OK | X_OK) == 0) {
        in_place_ = true;  // the parent is closed to us, DIR is not
        staging_.clear();
      } else {
        cleanup_created();
        throw IoError(dir_,
                      "cannot create a staging directory beside it (" + staging_.string() + "): " + std::strerror(err));
      }
    }
  }

  DirectoryWriter(const DirectoryWriter&) = delete;
  DirectoryWriter& operator=(const DirectoryWriter&) = delete;

  ~DirectoryWriter() {
    if (committed_) return;
    files_.clear();  // AtomicFile removes its temporary
    std::error_code ec;
    if (!staging_.empty()) std::filesystem::remove_all(staging_, ec);
    cleanup_created();
  }

  /// The target directory.
  const std::filesystem::path& path() const noexcept { return dir_; }

  /// A new file NAME of the directory (a plain name, no '/'), to be written before commit().
  /// The reference stays valid until the writer is destroyed.
  AtomicFile& file(const std::string& name) {
    if (committed_) throw IoError(dir_, "file after commit");
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      throw std::invalid_argument("DirectoryWriter::file: '" + name + "' is not a plain file name");
    for (const auto& [n, f] : files_)
      if (n == name) throw std::invalid_argument("DirectoryWriter::file: '" + name + "' written twice");
    files_.emplace_back(name, std::make_unique<AtomicFile>((in_place_ ? dir_ : staging_) / name));
    return *files_.back().second;
  }

  /// Writes @p bytes as file NAME.
  void write_file(const std::string& name, std::span<const std::byte> bytes) { file(name).write(bytes); }

  /// Makes the new content the directory's (see the file comment). Throws IoError; before the
  /// swap DIR is then unchanged.
  void commit() {
    namespace fs = std::filesystem;
    if (committed_) throw IoError(dir_, "commit after commit");
    if (in_place_) return commit_in_place();
    for (auto& [n, f] : files_) f->commit();  // each fsynced, renamed inside staging
    std::error_code ec;
    if (!existed_ || !fs::exists(dir_, ec)) {
      if (::rename(staging_.c_str(), dir_.c_str()) != 0) fail("cannot rename the staging directory into place");
      finish();
      return;
    }
    // Carry over the entries the new content does not replace: files as hard links now,
    // subdirectories after the swap.
    std::vector<fs::path> subdirs;
    fs::directory_iterator it(dir_, ec);
    for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
      const fs::path name = it->path().filename();
      if (std::find(owned_.begin(), owned_.end(), name.string()) != owned_.end()) continue;
      struct stat st {};
      if (::lstat((staging_ / name).c_str(), &st) == 0) continue;  // replaced by the new content
      if (::lstat(it->path().c_str(), &st) != 0) continue;         // gone meanwhile
      if (S_ISDIR(st.st_mode)) {
        subdirs.push_back(name);
      } else if (::linkat(AT_FDCWD, it->path().c_str(), AT_FDCWD, (staging_ / name).c_str(), 0) != 0) {
        std::error_code cec;
        fs::copy(it->path(), staging_ / name, fs::copy_options::copy_symlinks, cec);
        if (cec)
          throw IoError(dir_, "cannot carry '" + name.string() + "' over into the new directory: " + cec.message());
      }
    }
    if (ec) throw IoError(dir_, "cannot list the directory: " + ec.message());
    struct stat dst {};
    if (::stat(dir_.c_str(), &dst) == 0) (void)::chmod(staging_.c_str(), dst.st_mode & 07777);
    detail::dir::sync_dir(staging_);
    const int err = detail::dir::exchange(staging_, dir_);
    if (err == 0) {
      committed_ = true;  // the new content is DIR's; the old one is at staging_
      for (const fs::path& s : subdirs)
        if (::rename((staging_ / s).c_str(), (dir_ / s).c_str()) != 0)
          throw IoError(dir_, "the new content is in place, but moving '" + s.string() + "' back failed (it is in " +
                                  staging_.string() + "): " + std::strerror(errno));
      finish();
      return;
    }
    if (err != ENOSYS && err != EINVAL && err != ENOTSUP) {
      errno = err;
      fail("cannot swap the new directory in");
    }
    // No RENAME_EXCHANGE here: DIR aside, the new one in, the old one removed.
    const fs::path aside = parent_ / ("." + dir_.filename().string() + temp_suffix());
    if (::rename(dir_.c_str(), aside.c_str()) != 0) fail("cannot move the old directory aside");
    if (::rename(staging_.c_str(), dir_.c_str()) != 0) {
      const int e2 = errno;
      (void)::rename(aside.c_str(), dir_.c_str());
      errno = e2;
      fail("cannot rename the staging directory into place");
    }
    for (const fs::path& s : subdirs) (void)::rename((aside / s).c_str(), (dir_ / s).c_str());
    staging_ = aside;
    finish();
  }

 private:
  void commit_in_place() {
    // The key file goes first (DIR then holds no loadable content) and comes back last; owned
    // files the new content lacks go too.
    if (::unlink((dir_ / key_).c_str()) != 0 && errno != ENOENT) fail("cannot remove the old " + key_);
    detail::dir::sync_dir(dir_);
    for (const std::string& o : owned_) {
      const bool rewritten = std::any_of(files_.begin(), files_.end(), [&](const auto& f) { return f.first == o; });
      if (!rewritten) (void)::unlink((dir_ / o).c_str());
    }
    for (auto& [n, f] : files_)
      if (n != key_) f->commit();
    for (auto& [n, f] : files_)
      if (n == key_) f->commit();
    committed_ = true;
  }

  void finish() {
    std::error_code ec;
    if (!staging_.empty()) std::filesystem::remove_all(staging_, ec);
    detail::dir::sync_dir(parent_);
    committed_ = true;
  }

  [[noreturn]] void fail(const std::string& what) {
    const int err = errno;
    throw IoError(dir_, err != 0 ? what + ": " + std::strerror(err) : what);
  }

  void cleanup_created() noexcept {
    for (auto it = created_.rbegin(); it != created_.rend(); ++it) ::rmdir(it->c_str());  // only if empty
    created_.clear();
  }

  std::filesystem::path dir_, parent_, staging_;
  std::string key_;
  std::vector<std::string> owned_;
  std::vector<std::pair<std::string, std::unique_ptr<AtomicFile>>> files_;
  std::vector<std::filesystem::path> created_;
  bool existed_ = false;
  bool in_place_ = false;
  bool committed_ = false;
};

}  // namespace sae::io
