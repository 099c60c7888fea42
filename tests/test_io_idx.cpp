// Tests for sae/io/idx.hpp: hand-built IDX files (plain and gzip), every kind of bad file,
// and the real Fashion-MNIST files when Debian's dataset-fashion-mnist is installed.
#include <catch2/catch.hpp>

#include "helpers.hpp"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <sae/io/idx.hpp>

#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
#include <zlib.h>
#endif

namespace fs = std::filesystem;
using sae::io::IdxType;
using sae::io::read_idx;

namespace {

void put_be(std::string& s, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
}

std::string idx_header(unsigned type, const std::vector<std::uint32_t>& dims) {
  std::string s(2, '\0');
  s += static_cast<char>(type);
  s += static_cast<char>(dims.size());
  for (auto v : dims) put_be(s, v, 4);
  return s;
}

#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
/// gzip bytes of @p raw, written by zlib (independently of the reader's inflate loop).
std::string gzip_bytes(const std::string& raw) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&z, static_cast<uLong>(raw.size())) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  z.avail_in = static_cast<uInt>(raw.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}
#endif

void require_idx_error(const fs::path& p, const std::string& fragment = "") {
  sae_test::require_io_error(
      p, [&] { (void)read_idx(p); }, fragment);
}

}  // namespace

TEST_CASE("idx: u8 images [N, h, w] read as a (h*w) x N matrix in [0, 1]", "[io][idx]") {
  sae_test::TempDir dir("idx");
  std::string f = idx_header(0x08, {3, 2, 2});
  for (int i = 0; i < 12; ++i) f += static_cast<char>(i * 20);
  sae_test::write_all(dir / "img.idx", f);
  const auto a = read_idx(dir / "img.idx");
  CHECK(a.type == IdxType::U8);
  CHECK(a.shape == std::vector<std::size_t>{3, 2, 2});
  CHECK(a.value(5) == 100.0);
  std::size_t h = 0, w = 0;
  const auto X = sae::io::read_idx_images(dir / "img.idx", &h, &w);
  CHECK(h == 2);
  CHECK(w == 2);
  REQUIRE(X.rows() == 4);
  REQUIRE(X.cols() == 3);
  for (int n = 0; n < 3; ++n)
    for (int i = 0; i < 4; ++i) CHECK(X(i, n) == static_cast<float>((n * 4 + i) * 20) * (1.0f / 255.0f));
  // Labels must be 1-D; images 3-D.
  sae_test::require_io_error(
      dir / "img.idx", [&] { (void)sae::io::read_idx_labels(dir / "img.idx"); }, "expected u8 labels");
  sae_test::write_all(dir / "lab.idx", idx_header(0x08, {4}) + std::string("\x01\x09\x00\x07", 4));
  CHECK(sae::io::read_idx_labels(dir / "lab.idx") == std::vector<std::uint8_t>{1, 9, 0, 7});
  sae_test::require_io_error(
      dir / "lab.idx", [&] { (void)sae::io::read_idx_images(dir / "lab.idx"); }, "expected u8 images");
}

TEST_CASE("idx: big-endian i8, i16, i32, f32 and f64 elements", "[io][idx]") {
  sae_test::TempDir dir("idx_types");
  {
    std::string f = idx_header(0x09, {2});
    f += '\xFF';
    f += '\x05';
    sae_test::write_all(dir / "i8", f);
    const auto a = read_idx(dir / "i8");
    CHECK(a.value(0) == -1.0);
    CHECK(a.value(1) == 5.0);
  }
  {
    std::string f = idx_header(0x0B, {2});
    put_be(f, 0xFFFE, 2);  // -2
    put_be(f, 0x0102, 2);  // 258
    sae_test::write_all(dir / "i16", f);
    const auto a = read_idx(dir / "i16");
    CHECK(a.value(0) == -2.0);
    CHECK(a.value(1) == 258.0);
  }
  {
    std::string f = idx_header(0x0C, {1, 1});
    put_be(f, 0x80000000u, 4);
    sae_test::write_all(dir / "i32", f);
    CHECK(read_idx(dir / "i32").value(0) == -2147483648.0);
  }
  {
    std::string f = idx_header(0x0D, {2});
    std::uint32_t b;
    const float v = -1.5f;
    std::memcpy(&b, &v, 4);
    put_be(f, b, 4);
    put_be(f, 0x3F800000u, 4);  // 1.0f
    sae_test::write_all(dir / "f32", f);
    const auto a = read_idx(dir / "f32");
    CHECK(a.value(0) == -1.5);
    CHECK(a.value(1) == 1.0);
    CHECK(sae::io::idx_matrix(a, 2.0)(0, 1) == 2.0f);
  }
  {
    std::string f = idx_header(0x0E, {1});
    std::uint64_t b;
    const double v = 3.25;
    std::memcpy(&b, &v, 8);
    put_be(f, b, 8);
    sae_test::write_all(dir / "f64", f);
    CHECK(read_idx(dir / "f64").value(0) == 3.25);
  }
}

TEST_CASE("idx: bad files give one-line errors naming the file", "[io][idx]") {
  sae_test::TempDir dir("idx_bad");
  const fs::path p = dir / "bad.idx";
  const std::string good = idx_header(0x08, {2, 3}) + std::string(6, '\x07');
  sae_test::write_all(p, "");
  require_idx_error(p, "empty file");
  sae_test::write_all(p, std::string("\0\0", 2));
  require_idx_error(p, "too short");
  sae_test::write_all(p, "P5\n28 28\n");
  require_idx_error(p, "first two bytes must be zero");
  sae_test::write_all(p, idx_header(0x0A, {2}) + "xx");
  require_idx_error(p, "unknown element type 0x0A");
  sae_test::write_all(p, idx_header(0x08, {}));
  require_idx_error(p, "0 dimensions");
  sae_test::write_all(p, good + "z");
  require_idx_error(p, "trailing bytes");
  sae_test::write_all(p, idx_header(0x0E, {0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}));
  require_idx_error(p, "overflows");
  sae_test::write_all(p, idx_header(0x08, {60000, 28, 28}) + "abc");
  require_idx_error(p, "truncated");
  // Every truncation of a valid file is rejected.
  for (std::size_t n = 1; n < good.size(); ++n) {
    sae_test::write_all(p, good.substr(0, n));
    INFO("prefix of " << n << " bytes");
    require_idx_error(p);
  }
  sae_test::write_all(p, good);
  CHECK(read_idx(p).numel() == 6);
  require_idx_error(dir / "missing.idx");
}

#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
TEST_CASE("idx: gzip-compressed files are inflated; bad gzip data is rejected", "[io][idx]") {
  sae_test::TempDir dir("idx_gz");
  std::string raw = idx_header(0x08, {50, 7, 3});
  for (int i = 0; i < 50 * 21; ++i) raw += static_cast<char>((i * 37) % 256);
  const std::string gz = gzip_bytes(raw);
  sae_test::write_all(dir / "a.gz", gz);
  sae_test::write_all(dir / "a.raw", raw);
  const auto a = read_idx(dir / "a.gz"), b = read_idx(dir / "a.raw");
  CHECK(a.shape == b.shape);
  CHECK(a.data == b.data);
  CHECK(a.value(49 * 21 + 20) == static_cast<double>(((49 * 21 + 20) * 37) % 256));

  // Two gzip members (as `cat a.gz b.gz` makes) read as one stream.
  const std::string head = raw.substr(0, 100), tail = raw.substr(100);
  sae_test::write_all(dir / "two.gz", gzip_bytes(head) + gzip_bytes(tail));
  CHECK(read_idx(dir / "two.gz").data == b.data);

  const fs::path p = dir / "bad.gz";
  for (std::size_t n = 2; n < gz.size(); n += 1) {  // every truncation
    sae_test::write_all(p, gz.substr(0, n));
    INFO("gzip prefix of " << n << " of " << gz.size() << " bytes");
    require_idx_error(p);
  }
  std::string corrupt = gz;
  for (std::size_t i = 12; i < corrupt.size() - 8; i += 3) corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5A);
  sae_test::write_all(p, corrupt);
  require_idx_error(p);
  sae_test::write_all(p, gz + "junk");
  require_idx_error(p, "trailing bytes after the gzip stream");
  sae_test::write_all(p, gzip_bytes(raw + "x"));
  require_idx_error(p, "trailing bytes");
  sae_test::write_all(p, gzip_bytes(idx_header(0x08, {60000, 28, 28})));
  require_idx_error(p, "truncated");
}
#endif

TEST_CASE("idx: Debian's Fashion-MNIST files (when installed)", "[io][idx]") {
  const fs::path root = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(root / "train-images-idx3-ubyte.gz")) {
    WARN("dataset-fashion-mnist is not installed: skipped");
    return;
  }
#if !(defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB)
  require_idx_error(root / "t10k-labels-idx1-ubyte.gz", "without zlib");
#else
  std::size_t h = 0, w = 0;
  const auto X = sae::io::read_idx_images(root / "t10k-images-idx3-ubyte.gz", &h, &w);
  CHECK(h == 28);
  CHECK(w == 28);
  CHECK(X.rows() == 784);
  CHECK(X.cols() == 10000);
  CHECK(X.minCoeff() == 0.0f);
  CHECK(X.maxCoeff() == 1.0f);
  for (const char* f : {"train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}) {
    const auto y = sae::io::read_idx_labels(root / f);
    std::vector<int> per_class(10, 0);
    for (auto v : y) {
      REQUIRE(v < 10);
      ++per_class[v];
    }
    // Fashion-MNIST is balanced: 6000 per class in train, 1000 in test.
    const int want = y.size() == 60000 ? 6000 : 1000;
    CHECK(per_class == std::vector<int>(10, want));
  }
#endif
}
