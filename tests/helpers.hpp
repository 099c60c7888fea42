// Shared helpers for libsae's Catch2 tests.
#pragma once

#include <sae/sae.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace sae_test {

/// Per-precision tolerances (ensmallen's Tolerances<MatType> idea).
template <class Scalar>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double rel = 1e-4;
  static constexpr double abs = 1e-5;
};
template <>
struct Tol<double> {
  static constexpr double rel = 1e-10;
  static constexpr double abs = 1e-12;
};

/// Gaussian matrix with a fixed seed.
template <class Scalar>
sae::Mat<Scalar> random_matrix(sae::Index rows, sae::Index cols, std::uint64_t seed, double scale = 1.0) {
  sae::detail::Rng rng(seed);
  sae::Mat<Scalar> m(rows, cols);
  for (sae::Index j = 0; j < cols; ++j)
    for (sae::Index i = 0; i < rows; ++i) m(i, j) = static_cast<Scalar>(scale * rng.normal());
  return m;
}

/// An SaeConfig of the given shape (k for the TopK family; other fields at their defaults).
inline sae::SaeConfig config(sae::Index d, sae::Index m, sae::Index k = 0) {
  sae::SaeConfig c;
  c.d_in = d;
  c.d_sae = m;
  c.k = k;
  return c;
}

/// Random parameters (not the training initialisation: every tensor independent and nonzero).
template <class Scalar>
sae::Parameters<Scalar> random_params(sae::Index d, sae::Index m, std::uint64_t seed) {
  sae::Parameters<Scalar> p;
  p.W_enc = random_matrix<Scalar>(d, m, seed, 0.5);
  p.W_dec = random_matrix<Scalar>(d, m, seed + 1, 0.5);
  p.b_enc = random_matrix<Scalar>(m, 1, seed + 2, 0.1);
  p.b_dec = random_matrix<Scalar>(d, 1, seed + 3, 0.3);
  return p;
}

/// A fresh empty directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "tmp") {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("libsae_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
  /// Number of directory entries (e.g. to check no temporary files were left behind).
  std::size_t entries() const {
    return static_cast<std::size_t>(
        std::distance(std::filesystem::directory_iterator(path_), std::filesystem::directory_iterator()));
  }

 private:
  std::filesystem::path path_;
};

/// Whole file as bytes.
inline std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// The pid of a process that has exited (a child forked and reaped here): no live process owns
/// it, unless the kernel has reused it since, which takes a full cycle of pids.
inline pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

/// Replaces a file's content with @p bytes.
inline void write_all(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Requires that open() throws a one-line sae::io::IoError whose message starts with
/// "PATH: " and, if given, contains @p fragment.
template <class Open>
void require_io_error(const std::filesystem::path& p, Open&& open, const std::string& fragment = "") {
  try {
    open();
    FAIL("expected IoError for " << p);
  } catch (const sae::io::IoError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.rfind(p.string() + ": ", 0) == 0);
    CHECK(msg.find('\n') == std::string::npos);
    if (!fragment.empty()) CHECK(msg.find(fragment) != std::string::npos);
  }
}

/// The bytes of file @p p, and writing @p b as the whole file @p p.
inline std::vector<unsigned char> slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
inline void spit(const std::filesystem::path& p, const std::vector<unsigned char>& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace sae_test
