// .npz archives: writer/reader round trip (stored and deflate), dtype conversion, Fortran
// order, and one clear IoError per kind of damaged or hostile archive.
#include "helpers.hpp"

#include <sae/io/npz.hpp>

#include <cstring>
#include <fstream>
#include <span>
#include <vector>

namespace fs = std::filesystem;
using sae::io::IoError;
using sae::io::NpzReader;
using sae::io::NpzWriter;

namespace {

using sae_test::slurp;
using sae_test::spit;
std::uint32_t get32(const std::vector<unsigned char>& b, std::size_t at) {
  return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (std::uint32_t(b[at + 3]) << 24);
}
void put16(std::vector<unsigned char>& b, std::size_t at, std::uint32_t v) {
  b[at] = v & 0xFF;
  b[at + 1] = (v >> 8) & 0xFF;
}
void put32(std::vector<unsigned char>& b, std::size_t at, std::uint32_t v) {
  put16(b, at, v & 0xFFFF);
  put16(b, at + 2, v >> 16);
}

/// A stored zip built by hand from (file name, bytes) members, for dtypes the writer does not
/// produce.
std::vector<unsigned char> stored_zip(const std::vector<std::pair<std::string, std::string>>& members) {
  std::vector<unsigned char> out, cd;
  auto p16 = [](std::vector<unsigned char>& v, std::uint32_t x) {
    v.push_back(x & 0xFF);
    v.push_back((x >> 8) & 0xFF);
  };
  auto p32 = [&](std::vector<unsigned char>& v, std::uint32_t x) {
    p16(v, x & 0xFFFF);
    p16(v, x >> 16);
  };
  for (const auto& [name, data] : members) {
    const std::uint32_t crc = sae::io::detail::npz::crc32_update(0, data.data(), data.size());
    const auto off = static_cast<std::uint32_t>(out.size());
    p32(out, 0x04034b50);
    p16(out, 20);
    p16(out, 0);
    p16(out, 0);
    p16(out, 0);
    p16(out, 0x21);
    p32(out, crc);
    p32(out, std::uint32_t(data.size()));
    p32(out, std::uint32_t(data.size()));
    p16(out, std::uint32_t(name.size()));
    p16(out, 0);
    out.insert(out.end(), name.begin(), name.end());
    out.insert(out.end(), data.begin(), data.end());
    p32(cd, 0x02014b50);
    p16(cd, 20);
    p16(cd, 20);
    p16(cd, 0);
    p16(cd, 0);
    p16(cd, 0);
    p16(cd, 0x21);
    p32(cd, crc);
    p32(cd, std::uint32_t(data.size()));
    p32(cd, std::uint32_t(data.size()));
    p16(cd, std::uint32_t(name.size()));
    p16(cd, 0);
    p16(cd, 0);
    p16(cd, 0);
    p16(cd, 0);
    p32(cd, 0);
    p32(cd, off);
    cd.insert(cd.end(), name.begin(), name.end());
  }
  const auto cd_off = static_cast<std::uint32_t>(out.size());
  out.insert(out.end(), cd.begin(), cd.end());
  p32(out, 0x06054b50);
  p16(out, 0);
  p16(out, 0);
  p16(out, std::uint32_t(members.size()));
  p16(out, std::uint32_t(members.size()));
  p32(out, std::uint32_t(cd.size()));
  p32(out, cd_off);
  p16(out, 0);
  return out;
}

/// A version 1.0 .npy image with the given header dict and raw data.
std::string npy_image(const std::string& dict, const std::string& data) {
  std::string h = dict;
  while ((10 + h.size() + 1) % 64) h += ' ';
  h += '\n';
  std::string out = "\x93NUMPY\x01";
  out += '\0';
  out += char(h.size() & 0xFF);
  out += char(h.size() >> 8);
  return out + h + data;
}

template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

/// The writer's standard test archive.
void write_sample(const fs::path& p, bool compress) {
  std::vector<float> W(12);
  for (int i = 0; i < 12; ++i) W[i] = 0.25f * float(i) - 1.0f;
  const std::vector<std::int64_t> idx{-3, 0, 1LL << 40};
  const std::vector<std::int32_t> k{7, -8};
  NpzWriter w;
  w.add("W", {3, 4}, W);
  w.add("idx", {3}, idx);
  w.add("k", {2, 1}, k);
  w.add("s", {}, std::span<const float>(W.data(), 1));
  w.add("empty", {0, 5}, std::span<const float>());
  w.write(p, compress);
}

std::size_t central_dir_offset(const std::vector<unsigned char>& b) { return get32(b, b.size() - 6); }

}  // namespace

TEST_CASE("npz: writer and reader round trip, stored and deflate", "[io][npz]") {
  sae_test::TempDir tmp("npz_rt");
  for (bool compress : {false, true}) {
    const fs::path p = tmp / (compress ? "c.npz" : "s.npz");
    write_sample(p, compress);
    const NpzReader r = NpzReader::open(p);
    REQUIRE(r.members() == std::vector<std::string>{"W", "idx", "k", "s", "empty"});
    REQUIRE(r.contains("W"));
    REQUIRE(r.contains("W.npy"));
    REQUIRE_FALSE(r.contains("w"));
    for (const auto& e : r.entries()) REQUIRE(e.method == ((compress && sae::io::npz_has_deflate) ? 8 : 0));
    const auto W = r.read_f32("W");
    REQUIRE(W.shape == std::vector<std::size_t>{3, 4});
    for (int i = 0; i < 12; ++i) REQUIRE(W.data[std::size_t(i)] == 0.25f * float(i) - 1.0f);
    const auto idx = r.read_i64("idx");
    REQUIRE(idx.data == std::vector<std::int64_t>{-3, 0, 1LL << 40});
    const auto k = r.read_i64("k");
    REQUIRE(k.shape == std::vector<std::size_t>{2, 1});
    REQUIRE(k.data == std::vector<std::int64_t>{7, -8});
    const auto s = r.read_f32("s");
    REQUIRE(s.shape.empty());
    REQUIRE(s.data == std::vector<float>{-1.0f});
    const auto e = r.read_f32("empty");
    REQUIRE(e.shape == std::vector<std::size_t>{0, 5});
    REQUIRE(e.data.empty());
    REQUIRE(r.read_f64("W").data[5] == 0.25);
  }
  // Atomic: nothing but the two archives is left in the directory.
  REQUIRE(tmp.entries() == 2);
}

TEST_CASE("npz: a float32 member's .npy image is byte for byte the file save_npy writes", "[io][npz]") {
  sae_test::TempDir tmp("npz_image");
  const std::vector<float> v = {0.5f, -1.0f, 2.0f, 3.0f, 4.0f, -0.0f};
  for (const std::vector<std::size_t>& shape : std::vector<std::vector<std::size_t>>{{3, 2}, {6}, {1, 2, 3}, {0, 4}}) {
    std::size_t numel = 1;
    for (std::size_t d : shape) numel *= d;
    NpzWriter w;
    w.add("a", shape, std::span<const float>(v.data(), numel));
    w.write(tmp / "a.npz", true);
    sae::io::save_npy(tmp / "a.npy", v.data(), shape);
    const std::vector<std::byte> img = NpzReader::open(tmp / "a.npz").read_raw("a");
    const std::string file = sae_test::read_all(tmp / "a.npy");
    REQUIRE(img.size() == file.size());
    CHECK(std::memcmp(img.data(), file.data(), file.size()) == 0);
  }
}

TEST_CASE("npz: float16/float64 members convert, Fortran order is reordered", "[io][npz]") {
  sae_test::TempDir tmp("npz_dtypes");
  const std::vector<std::uint16_t> h{0x3C00, 0xC000, 0x3800};  // 1, -2, 0.5
  const std::vector<double> d{1.5, -2.25, 1e-3};
  // Fortran-order (2, 3): storage is column by column: a[0,0], a[1,0], a[0,1], ...
  const std::vector<float> f{0, 3, 1, 4, 2, 5};
  const std::vector<std::uint8_t> u{0, 255};
  const auto bytes = stored_zip({
      {"h.npy", npy_image("{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }", raw(h))},
      {"d.npy", npy_image("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", raw(d))},
      {"f.npy", npy_image("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", raw(f))},
      {"u.npy", npy_image("{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }", raw(u))},
      {"notes.txt", "hello, this is not an array"},
  });
  const fs::path p = tmp / "x.npz";
  spit(p, bytes);
  const NpzReader r = NpzReader::open(p);
  REQUIRE(r.read_f32("h").data == std::vector<float>{1.0f, -2.0f, 0.5f});
  REQUIRE(r.read_f32("d").data == std::vector<float>{1.5f, -2.25f, 1e-3f});
  const auto F = r.read_f32("f");
  REQUIRE(F.shape == std::vector<std::size_t>{2, 3});
  REQUIRE(F.data == std::vector<float>{0, 1, 2, 3, 4, 5});
  REQUIRE(r.read_i64("u").data == std::vector<std::int64_t>{0, 255});
  REQUIRE(r.contains("notes.txt"));
  REQUIRE_THROWS_WITH(r.read_f32("notes.txt"), Catch::Contains("notes.txt") && Catch::Contains("bad magic"));
  REQUIRE_THROWS_WITH(r.read_i64("h"), Catch::Contains("h.npy") && Catch::Contains("floating-point dtype"));
  REQUIRE_THROWS_WITH(r.read_f32("u"), Catch::Contains("u.npy") && Catch::Contains("integer dtype"));
  REQUIRE_THROWS_WITH(r.read_f32("W_enc"), Catch::Contains("x.npz") && Catch::Contains("no array 'W_enc'") &&
                                               Catch::Contains("has: h, d, f, u, notes.txt"));
}

TEST_CASE("npz: writer rejects bad names and sizes", "[io][npz]") {
  NpzWriter w;
  const std::vector<float> v(6);
  REQUIRE_THROWS_AS(w.add("", {6}, v), std::invalid_argument);
  REQUIRE_THROWS_AS(w.add("a/b", {6}, v), std::invalid_argument);
  REQUIRE_THROWS_AS(w.add("a", {5}, v), std::invalid_argument);
  w.add("a", {2, 3}, v);
  REQUIRE_THROWS_AS(w.add("a", {6}, v), std::invalid_argument);
  REQUIRE_THROWS_AS(w.add("b", {std::size_t(1) << 40, std::size_t(1) << 40}, v), std::invalid_argument);
  REQUIRE(w.size() == 1);
}

TEST_CASE("npz: damaged and hostile archives give one-line errors naming the file", "[io][npz]") {
  sae_test::TempDir tmp("npz_bad");
  const fs::path good = tmp / "good.npz", p = tmp / "bad.npz";
  write_sample(good, false);
  const auto base = slurp(good);
  const std::size_t cd = central_dir_offset(base);
  auto expect_error = [&](const std::vector<unsigned char>& bytes, const std::string& what, const char* member = "W") {
    spit(p, bytes);
    try {
      const NpzReader r = NpzReader::open(p);
      (void)r.read_f32(member);
      FAIL("no error; expected: " << what);
    } catch (const IoError& e) {
      const std::string msg = e.what();
      INFO(msg);
      REQUIRE(msg.find(p.string() + ": ") == 0);
      REQUIRE(msg.find(what) != std::string::npos);
      REQUIRE(msg.find('\n') == std::string::npos);
    }
  };

  SECTION("empty and short files") {
    expect_error({}, "too short");
    expect_error(std::vector<unsigned char>(base.begin(), base.begin() + 40), "truncated zip");
    expect_error(std::vector<unsigned char>(100, 'x'), "no end-of-central-directory record");
  }
  SECTION("central directory outside the archive") {
    auto b = base;
    put32(b, b.size() - 6, std::uint32_t(b.size()));
    expect_error(b, "central directory");
  }
  SECTION("entry count larger than the directory") {
    auto b = base;
    put16(b, b.size() - 12, 999);
    put16(b, b.size() - 14, 999);
    expect_error(b, "cannot hold 999 entries");
  }
  SECTION("ZIP64 escape values are rejected clearly") {
    auto b = base;
    put32(b, cd + 20, 0xFFFFFFFFu);
    expect_error(b, "ZIP64");
    auto c = base;
    put16(c, c.size() - 12, 0xFFFF);
    put16(c, c.size() - 14, 0xFFFF);
    expect_error(c, "ZIP64");
  }
  SECTION("encrypted, unknown method, multi-disk") {
    auto b = base;
    put16(b, cd + 8, 1);
    expect_error(b, "encrypted");
    auto c = base;
    put16(c, cd + 10, 12);  // bzip2
    expect_error(c, "unsupported compression method 12");
    auto d = base;
    put16(d, d.size() - 18, 1);
    expect_error(d, "multi-disk");
  }
  SECTION("local header offset out of range or pointing elsewhere") {
    auto b = base;
    put32(b, cd + 42, std::uint32_t(cd + 100));
    expect_error(b, "local header offset");
    auto c = base;
    put32(c, cd + 42, 7);
    expect_error(c, "bad local header signature");
  }
  SECTION("member sizes beyond the central directory") {
    auto b = base;
    put32(b, cd + 20, 0x7FFFFFFF);
    put32(b, cd + 24, 0x7FFFFFFF);
    expect_error(b, "runs into the central directory");
  }
  SECTION("stored member whose sizes disagree") {
    auto b = base;
    put32(b, cd + 24, get32(b, cd + 24) + 1);
    expect_error(b, "stored member with compressed size");
  }
  SECTION("CRC mismatch") {
    auto b = base;
    b[30 + 5 + 100] ^= 0x40;  // a data byte of W.npy
    expect_error(b, "CRC-32 mismatch");
  }
  SECTION("a central entry pointing at another member's local header") {
    auto b = base;
    // Make the second central entry point at the first member's local header.
    const std::size_t second = cd + 46 + 5;
    put32(b, second + 42, 0);
    expect_error(b, "local header file name differs", "idx");
  }
  SECTION("duplicate names") {
    const std::string img =
        npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", std::string(4, '\0'));
    expect_error(stored_zip({{"W.npy", img}, {"W.npy", img}}), "duplicate member name");
  }
  SECTION("npy header problems inside a member") {
    expect_error(stored_zip({{"W.npy", npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
                                                 std::string(8, '\0'))}}),
                 "truncated .npy data");
    expect_error(stored_zip({{"W.npy", npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': "
                                                 "(4294967296, 4294967296), }",
                                                 "")}}),
                 "overflows");
    expect_error(stored_zip({{"W.npy", npy_image("{'descr': '>f4', 'fortran_order': False, 'shape': (0,), }", "")}}),
                 "big-endian");
    expect_error(stored_zip({{"W.npy", npy_image("{'descr': '<c8', 'fortran_order': False, 'shape': (0,), }", "")}}),
                 "unsupported dtype '<c8'");
    std::string img = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", std::string(4, '\0'));
    img[8] = '\xFF';
    img[9] = '\xFF';  // header length beyond the member
    expect_error(stored_zip({{"W.npy", img}}), "beyond the end of the member");
  }
  if (sae::io::npz_has_deflate) {
    const fs::path cgood = tmp / "c.npz";
    write_sample(cgood, true);
    const auto cbase = slurp(cgood);
    const std::size_t ccd = central_dir_offset(cbase);
    SECTION("deflate: corrupt stream") {
      auto b = cbase;
      for (std::size_t i = 40; i < 60; ++i) b[i] = 0xFF;
      expect_error(b, "member 'W.npy'");
    }
    SECTION("deflate: declared size larger than the data") {
      auto b = cbase;
      put32(b, ccd + 24, get32(b, ccd + 24) + 10);
      expect_error(b, "expands to");
    }
    SECTION("deflate: declared size smaller than the data") {
      auto b = cbase;
      put32(b, ccd + 24, get32(b, ccd + 24) - 10);
      expect_error(b, "beyond the declared size");
    }
    SECTION("deflate: impossible expansion ratio (bounds the allocation)") {
      auto b = cbase;
      put32(b, ccd + 24, 0xFFFFFFF0u);
      expect_error(b, "impossible");
    }
  }
}
