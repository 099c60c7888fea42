// Tests for sae/io/safetensors.hpp.
#include <catch2/catch.hpp>

#include "helpers.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include "sae/detail/half.hpp"
#include "sae/io/error.hpp"
#include "sae/io/safetensors.hpp"

namespace fs = std::filesystem;
using sae::io::IoError;
using sae::io::SafetensorsReader;
using sae::io::SafetensorsWriter;
using sae::io::StDtype;

namespace {

using sae_test::read_all;
using sae_test::TempDir;
using sae_test::write_all;

std::string le64(std::uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s += static_cast<char>((n >> (8 * i)) & 0xFF);
  return s;
}

/// A file built byte by byte: little-endian header length, the header exactly as given, data.
std::string make_st(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 10.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

/// Requires that opening `p` throws a one-line IoError that starts with the path and, if
/// given, contains `fragment`.
void require_st_error(const fs::path& p, const std::string& fragment = "") {
  sae_test::require_io_error(
      p, [&] { (void)SafetensorsReader::open(p); }, fragment);
}

}  // namespace

TEST_CASE("safetensors: dtype names and sizes", "[io][safetensors]") {
  for (StDtype t : {StDtype::F64, StDtype::F32, StDtype::F16, StDtype::BF16, StDtype::I64, StDtype::I32, StDtype::I16,
                    StDtype::I8, StDtype::U8, StDtype::BOOL})
    CHECK(sae::io::st_dtype_from_name(sae::io::st_dtype_name(t)) == t);
  CHECK(sae::io::st_dtype_size(StDtype::BF16) == 2);
  CHECK(sae::io::st_dtype_size(StDtype::F64) == 8);
  CHECK(sae::io::st_dtype_size(StDtype::BOOL) == 1);
  CHECK_FALSE(sae::io::st_dtype_from_name("f32").has_value());
  CHECK_FALSE(sae::io::st_dtype_from_name("F8_E4M3").has_value());
}

TEST_CASE("safetensors: F32 round trip is bit-exact, metadata and padding", "[io][safetensors]") {
  TempDir tmp;
  const fs::path p = tmp / "w.safetensors";
  std::vector<float> w_dec = random_floats(5 * 3, 1);
  w_dec[0] = -0.0f;
  w_dec[1] = std::numeric_limits<float>::infinity();
  w_dec[2] = std::numeric_limits<float>::denorm_min();
  const std::vector<float> b_dec = random_floats(3, 2);
  const std::vector<float> scalar = {42.5f};
  const std::vector<float> empty;

  SafetensorsWriter w;
  w.add("W_dec", {5, 3}, w_dec);
  w.add("b_dec", {3}, b_dec);
  w.add("s", {}, scalar);
  w.add("empty", {0, 3}, empty);
  w.metadata()["format"] = "pt";
  w.metadata()["note"] = "quote \" backslash \\ unicode \xC3\xA9";
  CHECK(w.size() == 4);
  w.write(p);
  CHECK(tmp.entries() == 1);

  SafetensorsReader r = SafetensorsReader::open(p);
  CHECK(r.tensors().size() == 4);
  CHECK(r.contains("W_dec"));
  CHECK_FALSE(r.contains("W_enc"));
  const auto& info = r.info("W_dec");
  CHECK(info.dtype == StDtype::F32);
  CHECK(info.shape == std::vector<std::int64_t>{5, 3});
  CHECK(info.numel() == 15);
  CHECK(info.end - info.begin == 60);
  const std::vector<float> got = r.read_f32("W_dec");
  REQUIRE(got.size() == w_dec.size());
  CHECK(std::memcmp(got.data(), w_dec.data(), 60) == 0);
  CHECK(r.read_f32("b_dec") == b_dec);
  CHECK(r.info("s").shape.empty());
  CHECK(r.read_f32("s") == scalar);
  CHECK(r.read_f32("empty").empty());
  CHECK(r.info("empty").begin == r.info("empty").end);
  const auto raw = r.raw("b_dec");
  REQUIRE(raw.size() == 12);
  CHECK(std::memcmp(raw.data(), b_dec.data(), 12) == 0);
  std::vector<double> as_double(3);
  r.read_into<double>("b_dec", as_double.data(), 3);
  for (int i = 0; i < 3; ++i) CHECK(as_double[i] == static_cast<double>(b_dec[i]));
  std::vector<float> two(2);
  CHECK_THROWS_AS(r.read_into<float>("b_dec", two.data(), 2), IoError);  // count must equal numel

  CHECK(r.metadata().size() == 2);
  CHECK(r.metadata().at("format") == "pt");
  CHECK(r.metadata().at("note") == "quote \" backslash \\ unicode \xC3\xA9");

  // Layout: 8 + N is a multiple of 8, the header is padded with spaces, tensors appear in
  // insertion order with consecutive offsets.
  const std::string bytes = read_all(p);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  CHECK((8 + n) % 8 == 0);
  CHECK(r.data_offset() == 8 + n);
  const std::string header = bytes.substr(8, n);
  CHECK(header.front() == '{');
  const std::size_t close = header.rfind('}');
  CHECK(header.find_first_not_of(' ', close + 1) == std::string::npos);
  const auto pos = [&](const std::string& s) { return header.find("\"" + s + "\""); };
  CHECK(pos("__metadata__") < pos("W_dec"));
  CHECK(pos("W_dec") < pos("b_dec"));
  CHECK(pos("b_dec") < pos("s"));
  CHECK(pos("s") < pos("empty"));
  CHECK(r.info("W_dec").begin == 0);
  CHECK(r.info("b_dec").begin == 60);
  CHECK(r.info("s").begin == 72);
  CHECK(r.info("empty").begin == 76);
  CHECK(bytes.size() == 8 + n + 76);
}

TEST_CASE("safetensors: F16, BF16 and F64 storage round trips within the dtype's rounding", "[io][safetensors]") {
  TempDir tmp;
  const fs::path p = tmp / "h.safetensors";
  std::vector<float> v = random_floats(20000, 3);  // more than one conversion chunk
  v[0] = 0.0f;
  v[1] = -1.0f;
  v[2] = 1e-3f;
  SafetensorsWriter w;
  w.add("h", {100, 200}, v, StDtype::F16);
  w.add("b", {20000}, v, StDtype::BF16);
  w.add("d", {2, 10000}, v, StDtype::F64);
  w.write(p);

  SafetensorsReader r = SafetensorsReader::open(p);
  CHECK(r.info("h").dtype == StDtype::F16);
  CHECK(r.info("b").dtype == StDtype::BF16);
  CHECK(r.info("d").dtype == StDtype::F64);
  CHECK(r.info("h").end - r.info("h").begin == 40000);
  const auto h = r.read_f32("h");
  const auto b = r.read_f32("b");
  const auto d = r.read_f32("d");
  REQUIRE(h.size() == v.size());
  REQUIRE(b.size() == v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    // Exactly the round-to-nearest-even value, which is within half an ulp.
    REQUIRE(h[i] == sae::detail::half_bits_to_float(sae::detail::float_to_half_bits(v[i])));
    REQUIRE(std::abs(h[i] - v[i]) <= std::max(std::abs(v[i]) * std::ldexp(1.0f, -11), std::ldexp(1.0f, -25)));
    REQUIRE(b[i] == sae::detail::bf16_bits_to_float(sae::detail::float_to_bf16_bits(v[i])));
    REQUIRE(std::abs(b[i] - v[i]) <= std::abs(v[i]) * std::ldexp(1.0f, -8));
  }
  CHECK(d == v);
  std::vector<double> dd(v.size());
  r.read_into<double>("d", dd.data(), dd.size());
  CHECK(dd[5] == static_cast<double>(v[5]));
}

TEST_CASE("safetensors: a file built byte by byte is read", "[io][safetensors]") {
  TempDir tmp;
  const fs::path p = tmp / "manual.safetensors";
  // Unpadded header (length not a multiple of 8), tensors listed out of buffer order.
  const std::string header = R"({"b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},)"
                             R"( "a": {"dtype": "I32", "shape": [1, 2], "data_offsets": [0, 8]},)"
                             R"( "c": {"dtype": "BF16", "shape": [2], "data_offsets": [16, 20]},)"
                             R"( "__metadata__": {"k": "v"}})";
  const std::vector<std::int32_t> a = {-7, 300};
  const std::vector<float> b = {1.5f, -2.25f};
  const std::vector<std::uint16_t> c = {0x3F80, 0xC040};  // 1.0, -3.0
  write_all(p, make_st(header, bytes_of(a) + bytes_of(b) + bytes_of(c)));

  SafetensorsReader r = SafetensorsReader::open(p);
  CHECK(r.tensors().size() == 3);
  CHECK(r.metadata().at("k") == "v");
  CHECK(r.read_f32("b") == b);
  CHECK(r.read_f32("c") == std::vector<float>{1.0f, -3.0f});
  std::vector<std::int64_t> ai(2);
  r.read_into<std::int64_t>("a", ai.data(), 2);
  CHECK(ai == std::vector<std::int64_t>{-7, 300});
  std::vector<std::int8_t> small(2);
  CHECK_THROWS_AS(r.read_into<std::int8_t>("a", small.data(), 2), IoError);  // 300 doesn't fit
  CHECK_THROWS_AS(r.read_f32("a"), IoError);                                 // ints are not floats
  std::vector<int> bi(2);
  CHECK_THROWS_AS(r.read_into<int>("b", bi.data(), 2), IoError);  // floats are not ints
  try {
    (void)r.info("zz");
    FAIL("expected IoError");
  } catch (const IoError& e) {
    CHECK(std::string(e.what()) == p.string() + ": no tensor 'zz' (has: a, b, c)");
  }
  CHECK_THROWS_AS(r.raw("zz"), IoError);
}

TEST_CASE("safetensors: every truncation of a small file is rejected with IoError", "[io][safetensors]") {
  TempDir tmp;
  const fs::path good = tmp / "good.safetensors";
  const std::vector<float> v = {1, 2, 3, 4};
  SafetensorsWriter w;
  w.add("x", {2, 2}, v);
  w.metadata()["a"] = "b";
  w.write(good);
  const std::string bytes = read_all(good);
  const fs::path p = tmp / "cut.safetensors";
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    INFO("length " << len);
    write_all(p, bytes.substr(0, len));
    require_st_error(p);
  }
  write_all(p, bytes + std::string(1, '\0'));
  require_st_error(p, "hole");
}

TEST_CASE("safetensors: malformed files are rejected with one-line IoErrors naming the path", "[io][safetensors]") {
  TempDir tmp;
  const fs::path p = tmp / "bad.safetensors";
  const std::string data8(8, '\0');
  const std::string data16(16, '\0');
  auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offs) {
    return "\"" + name + "\": {\"dtype\": \"" + dtype + "\", \"shape\": " + shape + ", \"data_offsets\": " + offs + "}";
  };

  write_all(p, make_st("{" + entry("a", "F32", "[2]", "[0, 16]") + "}", data8));
  require_st_error(p, "beyond the data buffer");
  write_all(
      p, make_st("{" + entry("a", "F32", "[2]", "[0, 8]") + ", " + entry("b", "F32", "[2]", "[4, 12]") + "}", data16));
  require_st_error(p, "overlaps");
  write_all(
      p, make_st("{" + entry("a", "F32", "[2]", "[0, 8]") + ", " + entry("b", "F32", "[1]", "[12, 16]") + "}", data16));
  require_st_error(p, "hole in the data buffer: bytes [8, 12)");
  write_all(p, make_st("{" + entry("a", "F32", "[2]", "[0, 8]") + "}", data16));
  require_st_error(p, "after the last tensor");
  write_all(p, make_st("{" + entry("a", "F32", "[3]", "[0, 8]") + "}", data8));
  require_st_error(p, "need 12");
  write_all(p, make_st("{" + entry("a", "F33", "[2]", "[0, 8]") + "}", data8));
  require_st_error(p, "unknown dtype 'F33'");
  write_all(p, make_st("{" + entry("a", "F32", "[2]", "[8, 0]") + "}", data8));
  require_st_error(p, "before begin");
  write_all(p, make_st("{" + entry("a", "F32", "[-2]", "[0, 8]") + "}", data8));
  require_st_error(p, "negative dimension");
  write_all(p, make_st("{" + entry("a", "F32", "[4611686018427387904, 8]", "[0, 8]") + "}", data8));
  require_st_error(p, "overflows");
  write_all(p, make_st("{" + entry("a", "F32", "[2305843009213693952, 2]", "[0, 8]") + "}", data8));
  require_st_error(p, "overflows");
  write_all(p, make_st("{" + entry("a", "F32", "[2.0]", "[0, 8]") + "}", data8));
  require_st_error(p, "non-integer");
  write_all(p, make_st("{" + entry("a", "F32", "2", "[0, 8]") + "}", data8));
  require_st_error(p, "\"shape\" is not an array");
  write_all(p, make_st("{" + entry("a", "F32", "[2]", "[0, 8, 9]") + "}", data8));
  require_st_error(p, "data_offsets");
  write_all(p, make_st("{" + entry("a", "F32", "[2]", "[-1, 8]") + "}", data8));
  require_st_error(p, "data_offsets");
  write_all(p, make_st(R"({"a": {"shape": [2], "data_offsets": [0, 8]}})", data8));
  require_st_error(p, "missing \"dtype\"");
  write_all(p, make_st(R"({"a": {"dtype": "F32", "data_offsets": [0, 8]}})", data8));
  require_st_error(p, "missing \"shape\"");
  write_all(p, make_st(R"({"a": {"dtype": "F32", "shape": [2]}})", data8));
  require_st_error(p, "missing \"data_offsets\"");
  write_all(p, make_st(R"({"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}})", data8));
  require_st_error(p, "\"dtype\" is not a string");
  write_all(p, make_st(R"({"a": [1, 2]})", ""));
  require_st_error(p, "entry is not an object");
  write_all(p, make_st(R"({"__metadata__": {"k": 1}})", ""));
  require_st_error(p, "is not a string");
  write_all(p, make_st(R"({"__metadata__": ["k"]})", ""));
  require_st_error(p, "\"__metadata__\" is not an object");
  write_all(p,
            make_st("{" + entry("a", "F32", "[2]", "[0, 8]") + ", " + entry("a", "F32", "[2]", "[0, 8]") + "}", data8));
  require_st_error(p, "duplicate key 'a'");
  // Header length beyond the file, above the limit, and a file shorter than 8 bytes.
  write_all(p, le64(1000) + "{}");
  require_st_error(p, "beyond the end of the file");
  write_all(p, le64(100'000'001) + "{}");
  require_st_error(p, "exceeds the limit");
  write_all(p, le64(~0ull) + "{}");
  require_st_error(p, "exceeds the limit");
  write_all(p, "\x02\x00\x00");
  require_st_error(p, "too short");
  // Not JSON / not starting with '{' / not UTF-8.
  write_all(p, make_st("{\"a\": ", ""));
  require_st_error(p, "header: invalid JSON");
  write_all(p, make_st(" {}", ""));
  require_st_error(p, "does not start with '{'");
  write_all(p, make_st("", ""));
  require_st_error(p, "does not start with '{'");
  write_all(p, make_st("{} x", ""));
  require_st_error(p, "header: invalid JSON");
  write_all(p, make_st("{" + entry("a\xFF\xFE", "F32", "[2]", "[0, 8]") + "}", data8));
  require_st_error(p, "header: invalid JSON");
  write_all(p, make_st("{\"__metadata__\": {\"k\": \"\xC3\"}}", ""));
  require_st_error(p, "header: invalid JSON");
  // Pathological nesting must be rejected before the recursive parser sees it.
  write_all(p, make_st("{\"a\": " + std::string(10000, '[') + std::string(10000, ']') + "}", ""));
  require_st_error(p, "nested more than 64");
  write_all(p, make_st("{\"a\": " + std::string(10000, '[') + "}", ""));
  require_st_error(p, "nested more than 64");
  // Brackets inside strings do not count as nesting.
  write_all(p, make_st("{\"__metadata__\": {\"k\": \"" + std::string(200, '[') + "\\\"{\"}}", ""));
  CHECK(SafetensorsReader::open(p).metadata().at("k") == std::string(200, '[') + "\"{");
  // Missing file.
  require_st_error(tmp / "missing.safetensors", "cannot open");
}

TEST_CASE("safetensors: writer rejects bad input", "[io][safetensors]") {
  TempDir tmp;
  const std::vector<float> v = {1, 2, 3, 4};
  SafetensorsWriter w;
  w.add("x", {2, 2}, v);
  CHECK_THROWS_AS(w.add("x", {4}, v), std::invalid_argument);
  CHECK_THROWS_AS(w.add("y", {3}, v), std::invalid_argument);
  CHECK_THROWS_AS(w.add("y", {-1, -4}, v), std::invalid_argument);
  CHECK_THROWS_AS(w.add("y", {4}, v, StDtype::I32), std::invalid_argument);
  CHECK_THROWS_AS(w.add("__metadata__", {4}, v), std::invalid_argument);
  const std::vector<std::int32_t> ints = {1, 2, 3};
  CHECK_THROWS_AS(w.add_raw("i", StDtype::I32, {2}, std::as_bytes(std::span(ints))), std::invalid_argument);
  w.add_raw("i", StDtype::I32, {3}, std::as_bytes(std::span(ints)));
  CHECK(w.size() == 2);

  const fs::path bad_dir = tmp / "nope" / "x.safetensors";
  try {
    w.write(bad_dir);
    FAIL("expected IoError");
  } catch (const IoError& e) {
    CHECK(std::string(e.what()).rfind(bad_dir.string() + ": ", 0) == 0);
  }
  SafetensorsWriter bad_utf8;
  bad_utf8.metadata()["k"] = "\xFF";
  CHECK_THROWS_AS(bad_utf8.write(tmp / "u.safetensors"), IoError);
  CHECK(tmp.entries() == 0);

  w.write(tmp / "ok.safetensors");
  SafetensorsReader r = SafetensorsReader::open(tmp / "ok.safetensors");
  std::vector<std::int32_t> back(3);
  r.read_into<std::int32_t>("i", back.data(), 3);
  CHECK(back == ints);
  // Overwriting an existing file is atomic and leaves no temp file behind.
  SafetensorsWriter w2;
  w2.add("z", {1}, std::span<const float>(v.data(), 1));
  w2.write(tmp / "ok.safetensors");
  CHECK(SafetensorsReader::open(tmp / "ok.safetensors").tensors().size() == 1);
  CHECK(tmp.entries() == 1);
  // An empty writer produces a valid file with no tensors.
  SafetensorsWriter empty;
  empty.write(tmp / "empty.safetensors");
  CHECK(SafetensorsReader::open(tmp / "empty.safetensors").tensors().empty());
}
