/// @file sae/io/error.hpp
/// The exception every file reader and writer throws: one line, "PATH: problem".
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>

namespace sae::io {

/// A file could not be read, parsed, validated or written.
///
/// `what()` is a single line of the form "PATH: problem" (the path as given by the caller),
/// suitable for printing as-is on stderr. `path()` and `problem()` return the two parts.
class IoError : public std::runtime_error {
 public:
  IoError(const std::filesystem::path& path, std::string_view problem)
      : std::runtime_error(make_message(path, problem)), path_(path), problem_(problem) {}

  /// The file the error is about.
  const std::filesystem::path& path() const noexcept { return path_; }
  /// The problem alone, without the path prefix.
  const std::string& problem() const noexcept { return problem_; }

  /// Builds "PATH: problem", with any newline in `problem` replaced by a space so the
  /// message stays on one line.
  static std::string make_message(const std::filesystem::path& path, std::string_view problem) {
    std::string msg = path.string();
    msg += ": ";
    for (char c : problem) msg += (c == '\n' || c == '\r') ? ' ' : c;
    return msg;
  }

 private:
  std::filesystem::path path_;
  std::string problem_;
};

/// Throws IoError(path, problem). Convenience for `return fail(...)`-style code paths.
[[noreturn]] inline void throw_io_error(const std::filesystem::path& path, std::string_view problem) {
  throw IoError(path, problem);
}

}  // namespace sae::io
