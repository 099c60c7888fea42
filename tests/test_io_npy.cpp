// Tests for sae/io/npy.hpp and sae/io/atomic_file.hpp.
#include <catch2/catch.hpp>

#include "helpers.hpp"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <Eigen/Core>

#include "sae/detail/half.hpp"
#include "sae/detail/mapped_file.hpp"
#include "sae/io/atomic_file.hpp"
#include "sae/io/error.hpp"
#include "sae/io/npy.hpp"

namespace fs = std::filesystem;
using sae::io::IoError;
using sae::io::NpyDtype;
using sae::io::NpyReader;

namespace {

using sae_test::read_all;
using sae_test::TempDir;
using sae_test::write_all;

/// Raw .npy bytes: magic, version major.0, little-endian header length (u16 for 1.x, u32
/// otherwise), the header text exactly as given, then `data`.
std::string make_npy(int major, const std::string& header, const std::string& data) {
  std::string s = "\x93NUMPY";
  s += static_cast<char>(major);
  s += '\0';
  const std::size_t n = header.size();
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) s += static_cast<char>((n >> (8 * i)) & 0xFF);
  return s + header + data;
}

std::string float_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

/// Requires that opening `p` throws IoError whose message starts with the path and, if given,
/// contains `fragment`.
void require_npy_error(const fs::path& p, const std::string& fragment = "") {
  sae_test::require_io_error(
      p, [&] { (void)NpyReader::open(p); }, fragment);
}

}  // namespace

TEST_CASE("npy: random matrix round trip is bit-exact and maps as d x N", "[io][npy]") {
  TempDir tmp;
  const fs::path p = tmp / "acts.npy";
  const Eigen::Index d = 7, n = 13;
  Eigen::MatrixXf m = Eigen::MatrixXf::Random(d, n);
  m(0, 0) = -0.0f;
  m(1, 0) = std::numeric_limits<float>::denorm_min();
  sae::io::save_npy_matrix(p, m);

  NpyReader r = NpyReader::open(p);
  CHECK(r.dtype() == NpyDtype::F32);
  CHECK(r.shape() == std::vector<std::size_t>{13, 7});
  CHECK(r.rows() == 13);
  CHECK(r.cols() == 7);
  CHECK(r.numel() == 91);
  CHECK(r.data_offset() % 64 == 0);
  CHECK(r.path() == p);
  REQUIRE(std::memcmp(r.f32_data(), m.data(), sizeof(float) * 91) == 0);
  auto view = r.matrix();
  REQUIRE(view.rows() == d);
  REQUIRE(view.cols() == n);
  CHECK(view.data() == r.f32_data());  // zero-copy
  CHECK(view == m);
  // Token j is column j, i.e. row j of the C-order array.
  CHECK(r.f32_data()[5 * 7 + 3] == m(3, 5));

  std::vector<float> block(7 * 4);
  r.copy_rows_f32(2, 4, block.data());
  CHECK(std::memcmp(block.data(), m.col(2).data(), block.size() * sizeof(float)) == 0);
  CHECK_THROWS_AS(r.copy_rows_f32(10, 4, block.data()), IoError);
  CHECK_THROWS_AS(r.f16_data(), IoError);

  // The header is what NumPy writes: version 1.0, '<f4', C order, shape (13, 7).
  const std::string bytes = read_all(p);
  CHECK(bytes.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
  CHECK(bytes.find("{'descr': '<f4', 'fortran_order': False, 'shape': (13, 7), }") == 10);
  CHECK(bytes[r.data_offset() - 1] == '\n');
  CHECK(bytes.size() == r.data_offset() + 91 * 4);
}

TEST_CASE("npy: non-contiguous and non-float expressions are written as their values", "[io][npy]") {
  TempDir tmp;
  Eigen::MatrixXf m = Eigen::MatrixXf::Random(6, 9);
  const fs::path p1 = tmp / "block.npy", p2 = tmp / "rowmajor.npy", p3 = tmp / "double.npy", p4 = tmp / "expr.npy";
  sae::io::save_npy_matrix(p1, m.block(1, 2, 4, 5));
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm = m;
  sae::io::save_npy_matrix(p2, rm);
  Eigen::MatrixXd md = m.cast<double>();
  sae::io::save_npy_matrix(p3, md);
  sae::io::save_npy_matrix(p4, m.transpose() * 2.0f);

  NpyReader r1 = NpyReader::open(p1);
  CHECK(r1.shape() == std::vector<std::size_t>{5, 4});
  CHECK(r1.matrix() == m.block(1, 2, 4, 5));
  CHECK(NpyReader::open(p2).matrix() == m);
  CHECK(NpyReader::open(p3).matrix() == m);
  NpyReader r4 = NpyReader::open(p4);
  CHECK(r4.shape() == std::vector<std::size_t>{6, 9});
  CHECK(r4.matrix() == (m.transpose() * 2.0f).eval());
}

TEST_CASE("npy: 0-D, 1-D, 3-D and empty shapes", "[io][npy]") {
  TempDir tmp;
  const std::vector<float> v = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24};
  {
    const std::size_t shape[1] = {5};
    sae::io::save_npy(tmp / "a.npy", v.data(), shape);
    NpyReader r = NpyReader::open(tmp / "a.npy");
    CHECK(r.rows() == 5);
    CHECK(r.cols() == 1);
    CHECK(read_all(tmp / "a.npy").find("'shape': (5,)") != std::string::npos);
  }
  {
    sae::io::save_npy(tmp / "s.npy", v.data(), std::span<const std::size_t>());
    NpyReader r = NpyReader::open(tmp / "s.npy");
    CHECK(r.shape().empty());
    CHECK(r.rows() == 1);
    CHECK(r.cols() == 1);
    CHECK(r.f32_data()[0] == 1.0f);
  }
  {
    const std::size_t shape[3] = {2, 3, 4};
    sae::io::save_npy(tmp / "c.npy", v.data(), shape);
    NpyReader r = NpyReader::open(tmp / "c.npy");
    CHECK(r.rows() == 2);
    CHECK(r.cols() == 12);
    CHECK(r.matrix()(11, 1) == 24.0f);
  }
  {
    const std::size_t shape[2] = {0, 16};
    sae::io::save_npy(tmp / "e.npy", nullptr, shape);
    NpyReader r = NpyReader::open(tmp / "e.npy");
    CHECK(r.rows() == 0);
    CHECK(r.cols() == 16);
    CHECK(r.matrix().size() == 0);
    r.copy_rows_f32(0, 0, nullptr);
  }
}

TEST_CASE("npy: the writer's preamble is np.save's: version 1.0, data at a multiple of 64, 2.0 past 65535 bytes",
          "[io][npy]") {
  TempDir tmp;
  const std::vector<float> v(6, 1.0f);
  auto numpy_preamble = [](const std::string& dict) {  // the bytes np.save writes (NumPy 1.24)
    return std::string("\x93NUMPY\x01\x00\x76\x00", 10) + dict + std::string(127 - 10 - dict.size(), ' ') + "\n";
  };
  const std::size_t shape2[2] = {3, 2}, shape1[1] = {5};
  sae::io::save_npy(tmp / "m.npy", v.data(), shape2);
  CHECK(read_all(tmp / "m.npy").substr(0, 128) ==
        numpy_preamble("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }"));
  const std::vector<std::uint16_t> h(5, 0x3C00);
  sae::io::save_npy_f16(tmp / "h.npy", h.data(), shape1);
  CHECK(read_all(tmp / "h.npy").substr(0, 128) ==
        numpy_preamble("{'descr': '<f2', 'fortran_order': False, 'shape': (5,), }"));
  sae::io::save_npy(tmp / "s.npy", v.data(), std::span<const std::size_t>());
  CHECK(read_all(tmp / "s.npy") ==
        numpy_preamble("{'descr': '<f4', 'fortran_order': False, 'shape': (), }") + float_bytes({1.0f}));

  // Headers of every length up to several multiples of 64: padded, '\n'-terminated, readable.
  for (std::size_t big = 1; big < 1000000000000000000ull; big *= 10) {
    const std::size_t shape[8] = {0, big, 0, big, 0, big, 0, big};  // empty: no data to write
    sae::io::save_npy(tmp / "e.npy", nullptr, shape);
    const std::string bytes = read_all(tmp / "e.npy");
    INFO("dimensions of " << big);
    CHECK(bytes.size() % 64 == 0);
    CHECK(bytes.back() == '\n');
    CHECK(NpyReader::open(tmp / "e.npy").shape() == std::vector<std::size_t>(shape, shape + 8));
  }
  // A header longer than 65535 bytes needs version 2.0 (u32 length), as NumPy does it.
  const std::vector<std::size_t> many(30000, 1);
  sae::io::save_npy(tmp / "v2.npy", v.data(), many);
  const std::string bytes = read_all(tmp / "v2.npy");
  REQUIRE(bytes.size() > 12);
  CHECK(bytes.substr(0, 8) == std::string("\x93NUMPY\x02\x00", 8));
  std::size_t hlen = 0;  // u32 little-endian
  for (int i = 11; i >= 8; --i) hlen = (hlen << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  CHECK((12 + hlen) % 64 == 0);
  CHECK(bytes.size() == 12 + hlen + 4);
  const NpyReader r = NpyReader::open(tmp / "v2.npy");
  CHECK(r.shape() == many);
  CHECK(r.f32_data()[0] == 1.0f);
}

TEST_CASE("npy: hand-built headers (version 2.0, reordered keys, odd alignment) are read", "[io][npy]") {
  TempDir tmp;
  const std::vector<float> v = {0.5f, -1.0f, 2.0f, 3.5f, -4.25f, 1e-3f};
  SECTION("version 2.0, keys in another order, double quotes, no trailing comma") {
    std::string header = "{\"shape\": (3, 2), 'fortran_order': False, 'descr': '<f4'}";
    header.append((64 - (12 + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    const fs::path p = tmp / "v2.npy";
    write_all(p, make_npy(2, header, float_bytes(v)));
    NpyReader r = NpyReader::open(p);
    CHECK(r.shape() == std::vector<std::size_t>{3, 2});
    CHECK(r.data_offset() == 128);
    CHECK(r.matrix()(1, 0) == -1.0f);
    CHECK(r.matrix()(0, 2) == -4.25f);
    CHECK(r.f32_data() == reinterpret_cast<const float*>(r.mapped_file().data() + 128));
  }
  SECTION("version 1.0 with a 16-byte-aligned prefix and extra whitespace") {
    std::string header = "{ 'descr' : '<f4' , 'fortran_order' : False , 'shape' : ( 3 , 2 , ) , }";
    header.append((16 - (10 + header.size() + 1) % 16) % 16, ' ');
    header += '\n';
    REQUIRE((10 + header.size()) % 16 == 0);
    const fs::path p = tmp / "v1.npy";
    write_all(p, make_npy(1, header, float_bytes(v)));
    NpyReader r = NpyReader::open(p);
    CHECK(r.rows() == 3);
    CHECK(r.cols() == 2);
    CHECK(std::memcmp(r.f32_data(), v.data(), 24) == 0);
  }
  SECTION("version 3.0 whose data offset is not a multiple of 4 (copied into aligned memory)") {
    const std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2)}\n";
    REQUIRE((12 + header.size()) % 4 != 0);
    const fs::path p = tmp / "odd.npy";
    write_all(p, make_npy(3, header, float_bytes(v)));
    NpyReader r = NpyReader::open(p);
    CHECK(reinterpret_cast<std::uintptr_t>(r.f32_data()) % alignof(float) == 0);
    CHECK(std::memcmp(r.f32_data(), v.data(), 24) == 0);
    CHECK(r.matrix()(1, 2) == 1e-3f);
  }
}

TEST_CASE("npy: float16 files are converted by copy_rows_f32", "[io][npy]") {
  TempDir tmp;
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  const std::size_t n = 11, d = 5;
  std::vector<std::uint16_t> h(n * d);
  for (auto& x : h) x = sae::detail::float_to_half_bits(dist(rng));
  const std::size_t shape[2] = {n, d};
  const fs::path p = tmp / "h.npy";
  sae::io::save_npy_f16(p, h.data(), shape);

  NpyReader r = NpyReader::open(p);
  CHECK(r.dtype() == NpyDtype::F16);
  CHECK(r.rows() == n);
  CHECK(r.cols() == d);
  CHECK(std::memcmp(r.f16_data(), h.data(), h.size() * 2) == 0);
  CHECK_THROWS_AS(r.f32_data(), IoError);
  CHECK_THROWS_AS(r.matrix(), IoError);

  std::vector<float> out(d * 4, -99.0f);
  r.copy_rows_f32(3, 4, out.data());
  for (std::size_t t = 0; t < 4; ++t)
    for (std::size_t j = 0; j < d; ++j) REQUIRE(out[t * d + j] == sae::detail::half_bits_to_float(h[(3 + t) * d + j]));
  CHECK(read_all(p).find("'descr': '<f2'") != std::string::npos);
  CHECK_THROWS_AS(r.copy_rows_f32(8, 4, out.data()), IoError);
}

TEST_CASE("npy: every truncation of a valid file is rejected with IoError", "[io][npy]") {
  TempDir tmp;
  const std::vector<float> v = {1, 2, 3, 4, 5, 6};
  const std::size_t shape[2] = {3, 2};
  const fs::path good = tmp / "good.npy";
  sae::io::save_npy(good, v.data(), shape);
  const std::string bytes = read_all(good);
  REQUIRE(bytes.size() == 128 + 24);  // 10 + 60-char dict + '\n' padded to 128
  const fs::path p = tmp / "cut.npy";
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    INFO("length " << len);
    write_all(p, bytes.substr(0, len));
    require_npy_error(p);
  }
  write_all(p, bytes.substr(0, 128 + 20));
  require_npy_error(p, "truncated: expected 24 bytes of data, found 20");
  write_all(p, bytes + "x");
  require_npy_error(p, "expected 24 bytes of data, found 25");
}

TEST_CASE("npy: malformed files are rejected with a one-line IoError naming the path", "[io][npy]") {
  TempDir tmp;
  const fs::path p = tmp / "bad.npy";
  const std::string data24(24, '\0');
  auto hdr = [](const std::string& dict) { return dict + "\n"; };

  write_all(p, "\x93NUMPZ\x01\x00\x10\x00" + std::string(16, ' '));
  require_npy_error(p, "bad magic");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }"), data24));
  require_npy_error(p, "fortran_order");
  write_all(p, make_npy(1, hdr("{'descr': '>f4', 'fortran_order': False, 'shape': (3, 2), }"), data24));
  require_npy_error(p, "big-endian");
  write_all(p, make_npy(1, hdr("{'descr': '<i4', 'fortran_order': False, 'shape': (3, 2), }"), data24));
  require_npy_error(p, "unsupported dtype '<i4'");
  write_all(p, make_npy(1, hdr("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 1), }"), data24));
  require_npy_error(p, "unsupported dtype '<f8'");
  write_all(p,
            make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }"), data24));
  require_npy_error(p, "overflows");
  write_all(p,
            make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2305843009213693952, 2), }"), data24));
  require_npy_error(p, "overflows");
  write_all(
      p, make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, 2), }"), data24));
  require_npy_error(p, "too large");
  write_all(p, make_npy(4, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }"), data24));
  require_npy_error(p, "unsupported .npy format version 4.0");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'shape': (3, 2), }"), data24));
  require_npy_error(p, "no 'fortran_order'");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, }"), data24));
  require_npy_error(p, "no 'shape'");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), 'x': 1}"), data24));
  require_npy_error(p, "unexpected key 'x'");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3, 2)}"), data24));
  require_npy_error(p, "duplicate key");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': [3, 2]}"), data24));
  require_npy_error(p, "tuple");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (3, -2)}"), data24));
  require_npy_error(p, "non-negative");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'fortran_order': 0, 'shape': (3, 2)}"), data24));
  require_npy_error(p, "True or False");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (3 2)}"), data24));
  require_npy_error(p, "malformed");
  write_all(p, make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2)} junk"), data24));
  require_npy_error(p, "after the header dict");
  write_all(p, make_npy(1, hdr("[1, 2]"), data24));
  require_npy_error(p, "not a dict");
  write_all(p, make_npy(1, hdr("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,)}"), data24));
  require_npy_error(p, "'descr' must be a quoted string");
  // Header length field pointing past the end of the file.
  std::string s = make_npy(1, hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }"), data24);
  s[8] = '\xFF';
  s[9] = '\x7F';
  write_all(p, s);
  require_npy_error(p, "beyond the end of the file");
  // Missing file and a directory.
  require_npy_error(tmp / "missing.npy", "cannot open (No such file or directory)");
  require_npy_error(tmp.path(), "not a regular file");
}

TEST_CASE("npy: writer errors are IoErrors naming the path", "[io][npy]") {
  TempDir tmp;
  const float x = 1.0f;
  const std::size_t shape[1] = {1};
  const fs::path p = tmp / "no" / "such" / "dir" / "x.npy";
  try {
    sae::io::save_npy(p, &x, shape);
    FAIL("expected IoError");
  } catch (const IoError& e) {
    CHECK(std::string(e.what()).rfind(p.string() + ": ", 0) == 0);
  }
  const std::size_t huge[2] = {4611686018427387904ull, 8};
  CHECK_THROWS_AS(sae::io::save_npy(tmp / "huge.npy", &x, huge), IoError);
  CHECK(tmp.entries() == 0);
}

TEST_CASE("atomic write: replaces the content and leaves no temp files", "[io][atomic]") {
  TempDir tmp;
  const fs::path p = tmp / "f.bin";
  write_all(p, "old content that is longer than the new one");
  const std::string fresh = "new";
  sae::io::write_file_atomic(p, std::as_bytes(std::span(fresh)));
  CHECK(read_all(p) == "new");
  CHECK(tmp.entries() == 1);
  // Creating a new file works too, and writing an empty file.
  sae::io::write_file_atomic(tmp / "g.bin", {});
  CHECK(fs::file_size(tmp / "g.bin") == 0);
  CHECK(tmp.entries() == 2);
}

TEST_CASE("atomic write: AtomicFile without commit leaves the original untouched", "[io][atomic]") {
  TempDir tmp;
  const fs::path p = tmp / "f.bin";
  write_all(p, "original");
  {
    sae::io::AtomicFile f(p);
    CHECK(fs::exists(f.temp_path()));
    CHECK(f.temp_path().parent_path() == p.parent_path());
    CHECK(f.temp_path().filename().string().rfind("f.bin.tmp." + std::to_string(::getpid()) + ".", 0) == 0);
    f.write("partial", 7);
    CHECK(read_all(p) == "original");
  }
  CHECK(read_all(p) == "original");
  CHECK(tmp.entries() == 1);
  {
    // Two writers at once use different temp names; the last commit wins.
    sae::io::AtomicFile a(p), b(p);
    CHECK(a.temp_path() != b.temp_path());
    a.write("aaa", 3);
    b.write("bb", 2);
    a.commit();
    CHECK(read_all(p) == "aaa");
    b.commit();
    CHECK_THROWS_AS(b.write("x", 1), IoError);
    CHECK_THROWS_AS(b.commit(), IoError);
  }
  CHECK(read_all(p) == "bb");
  CHECK(tmp.entries() == 1);
  {
    // Moving keeps exactly one owner of the temp file.
    sae::io::AtomicFile a(p);
    a.write("moved", 5);
    sae::io::AtomicFile b(std::move(a));
    b.commit();
  }
  CHECK(read_all(p) == "moved");
  CHECK(tmp.entries() == 1);
}

TEST_CASE("atomic write: a non-existent directory throws IoError naming the path", "[io][atomic]") {
  TempDir tmp;
  const fs::path p = tmp / "missing" / "f.bin";
  const std::string s = "x";
  try {
    sae::io::write_file_atomic(p, std::as_bytes(std::span(s)));
    FAIL("expected IoError");
  } catch (const IoError& e) {
    const std::string msg = e.what();
    CHECK(msg.rfind(p.string() + ": ", 0) == 0);
    CHECK(msg.find("No such file or directory") != std::string::npos);
    CHECK(e.path() == p);
  }
  CHECK_FALSE(fs::exists(p));
  CHECK(tmp.entries() == 0);
}

TEST_CASE("npy: MappedFile maps files, handles empty files and moves", "[io][npy]") {
  TempDir tmp;
  write_all(tmp / "e", "");
  sae::detail::MappedFile e(tmp / "e");
  CHECK(e.size() == 0);
  CHECK(e.data() == nullptr);
  write_all(tmp / "f", "hello");
  sae::detail::MappedFile f(tmp / "f");
  REQUIRE(f.size() == 5);
  CHECK(std::memcmp(f.data(), "hello", 5) == 0);
  f.advise_sequential();
  sae::detail::MappedFile g(std::move(f));
  CHECK(g.size() == 5);
  CHECK(f.data() == nullptr);
  CHECK(g.path() == tmp / "f");
  CHECK_THROWS_WITH(sae::detail::MappedFile(tmp / "nope"),
                    (tmp / "nope").string() + ": cannot open (No such file or directory)");
}
