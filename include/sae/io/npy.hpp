/// @file sae/io/npy.hpp
/// NumPy .npy reader (memory-mapped, zero-copy) and atomic writer for float32/float16 arrays.
///
/// Format (NumPy's NEP 1 / "format.py" specification):
///   bytes 0-5   magic "\x93NUMPY"
///   bytes 6-7   major, minor version: 1.0 (u16 little-endian header length), 2.0 or 3.0
///               (u32 little-endian header length; 3.0 allows UTF-8 in the header)
///   header      ASCII Python dict literal {'descr': '<f4', 'fortran_order': False,
///               'shape': (N, d), } padded with spaces and terminated by '\n'; writers make
///               the whole prefix a multiple of 64 bytes (old writers used 16; any alignment
///               is accepted when reading)
///   data        product(shape) * itemsize bytes, here C order (last index fastest).
/// detail::npy::preamble() writes and detail::npy::parse_preamble() reads this prefix for every
/// .npy image libsae handles (these files, .npz members, streamed code files).
///
/// Layout: a C-order [N, d] array is byte for byte a column-major d x N matrix with one
/// token per column; NpyReader::matrix() maps it without copying (see DESIGN.md section 3).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "sae/detail/checked.hpp"
#include "sae/detail/half.hpp"
#include "sae/detail/mapped_file.hpp"
#include "sae/io/atomic_file.hpp"
#include "sae/io/error.hpp"

namespace sae::io {

static_assert(std::endian::native == std::endian::little,
              "sae::io assumes a little-endian host (the .npy/.safetensors data is little-endian)");

/// Element type of a .npy array this library reads: little-endian float32 ('<f4') or
/// float16 ('<f2').
enum class NpyDtype { F32, F16 };

/// Bytes per element.
constexpr std::size_t npy_itemsize(NpyDtype t) noexcept { return t == NpyDtype::F32 ? 4 : 2; }
/// The 'descr' string this library writes for the dtype.
constexpr const char* npy_descr(NpyDtype t) noexcept { return t == NpyDtype::F32 ? "<f4" : "<f2"; }

namespace detail::npy {

using sae::detail::checked_mul;

/// The parsed header dict.
struct Header {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::size_t> shape;
};

/// Strict parser for exactly the header dict literal: keys 'descr', 'fortran_order', 'shape'
/// (each exactly once, any order, single or double quotes), values a string, True/False and a
/// tuple of non-negative integers; an optional trailing comma; whitespace around tokens; only
/// whitespace after the closing brace. Returns an error text, or "" on success.
class HeaderParser {
 public:
  explicit HeaderParser(std::string_view s) : s_(s) {}

  std::string parse(Header& h) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    if (!eat('{')) return "header is not a dict literal (expected '{')";
    skip_ws();
    while (!peek('}')) {
      std::string key;
      if (!parse_string(key)) return "malformed header dict: expected a quoted key";
      skip_ws();
      if (!eat(':')) return "malformed header dict: expected ':' after '" + key + "'";
      skip_ws();
      if (key == "descr") {
        if (have_descr) return "duplicate key 'descr' in header";
        have_descr = true;
        if (!parse_string(h.descr)) return "header 'descr' must be a quoted string";
      } else if (key == "fortran_order") {
        if (have_fortran) return "duplicate key 'fortran_order' in header";
        have_fortran = true;
        if (eat_word("True"))
          h.fortran_order = true;
        else if (eat_word("False"))
          h.fortran_order = false;
        else
          return "header 'fortran_order' must be True or False";
      } else if (key == "shape") {
        if (have_shape) return "duplicate key 'shape' in header";
        have_shape = true;
        std::string err = parse_shape(h.shape);
        if (!err.empty()) return err;
      } else {
        return "unexpected key '" + printable(key) + "' in header";
      }
      skip_ws();
      if (eat(',')) {
        skip_ws();
        continue;
      }
      if (!peek('}')) return "malformed header dict: expected ',' or '}'";
    }
    ++pos_;  // '}'
    skip_ws();
    if (pos_ != s_.size()) return "unexpected characters after the header dict";
    if (!have_descr) return "header has no 'descr' key";
    if (!have_fortran) return "header has no 'fortran_order' key";
    if (!have_shape) return "header has no 'shape' key";
    return {};
  }

  /// Makes a header fragment safe to put in a one-line message.
  static std::string printable(std::string_view v) {
    std::string out;
    for (unsigned char c : v.substr(0, 64)) {
      if (c >= 0x20 && c < 0x7F) {
        out += static_cast<char>(c);
      } else {
        static constexpr char hex[] = "0123456789abcdef";
        out += "\\x";
        out += hex[c >> 4];
        out += hex[c & 15];
      }
    }
    if (v.size() > 64) out += "...";
    return out;
  }

 private:
  bool peek(char c) const { return pos_ < s_.size() && s_[pos_] == c; }
  bool eat(char c) {
    if (!peek(c)) return false;
    ++pos_;
    return true;
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  bool eat_word(std::string_view w) {
    if (s_.substr(pos_, w.size()) != w) return false;
    const std::size_t after = pos_ + w.size();
    if (after < s_.size()) {
      const char c = s_[after];
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') return false;
    }
    pos_ = after;
    return true;
  }
  /// A quoted string without escapes (the dict never needs them).
  bool parse_string(std::string& out) {
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) return false;
    const char q = s_[pos_++];
    const std::size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] != q) {
      if (s_[pos_] == '\\' || s_[pos_] == '\n') return false;
      ++pos_;
    }
    if (pos_ >= s_.size()) return false;
    out.assign(s_.substr(start, pos_ - start));
    ++pos_;
    return true;
  }
  std::string parse_shape(std::vector<std::size_t>& shape) {
    shape.clear();
    if (!eat('(')) return "header 'shape' must be a tuple like (N, d)";
    skip_ws();
    while (!peek(')')) {
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9')
        return "header 'shape' must contain non-negative integers";
      std::size_t v = 0;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        const auto digit = static_cast<std::size_t>(s_[pos_] - '0');
        if (v > (std::numeric_limits<std::size_t>::max() - digit) / 10) return "header 'shape' dimension is too large";
        v = v * 10 + digit;
        ++pos_;
      }
      eat('L');  // Python 2 long suffix, as very old NumPy wrote it
      shape.push_back(v);
      skip_ws();
      const bool comma = eat(',');
      skip_ws();
      if (!comma && !peek(')')) return "header 'shape' tuple is malformed";
    }
    ++pos_;  // ')'
    return {};
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

inline std::string format_shape(std::span<const std::size_t> shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  s += ")";
  return s;
}

/// The .npy writer's preamble (everything before the data) of a C-order array: magic, version
/// 1.0 (2.0 if the header needs more than 65535 bytes), the little-endian header length, then
/// the dict {'descr': DESCR, 'fortran_order': False, 'shape': SHAPE, } padded with spaces and
/// ended by '\n' so that the data starts at a multiple of 64 bytes. The bytes NumPy's np.save
/// writes for the same array.
inline std::string preamble(std::string_view descr, std::span<const std::size_t> shape) {
  std::string dict =
      "{'descr': '" + std::string(descr) + "', 'fortran_order': False, 'shape': " + format_shape(shape) + ", }";
  // Version 1.0 stores the header length in a u16; fall back to 2.0 (u32) if it is larger.
  const std::size_t unpadded = dict.size() + 1;  // + '\n'
  std::size_t prefix = 10;                       // magic + version + u16 length
  unsigned char major = 1;
  if ((prefix + unpadded + 63) / 64 * 64 - prefix > 0xFFFF) {
    prefix = 12;
    major = 2;
  }
  const std::size_t padded = (prefix + unpadded + 63) / 64 * 64;
  dict.append(padded - prefix - unpadded, ' ');
  dict += '\n';
  const std::size_t hlen = dict.size();
  std::string pre = "\x93NUMPY";
  pre += static_cast<char>(major);
  pre += '\0';
  for (std::size_t i = 0; i < prefix - 8; ++i) pre += static_cast<char>((hlen >> (8 * i)) & 0xFF);
  return pre + dict;
}

/// What holds a .npy image, the word its error messages use: a file of its own (NpyReader) or
/// a member of an .npz archive (NpzReader).
enum class Holder { File, Member };

/// A validated .npy preamble.
struct Preamble {
  Header header;
  std::size_t data_offset = 0;  ///< where the data starts: magic, version, length and header
};

/// The one .npy preamble parser: checks the magic, the version (1.0, 2.0 or 3.0) and the header
/// length of the image @p b, and parses the header dict (HeaderParser). Returns "" or the
/// problem, e.g. "not a .npy file: bad magic" (File) / "not a .npy member: bad magic" (Member).
inline std::string parse_preamble(std::span<const std::byte> b, Holder holder, Preamble& out) {
  const std::string what = holder == Holder::File ? "file" : "member";
  const std::size_t size = b.size();
  const auto too_short = [&] { return "not a .npy " + what + ": too short (" + std::to_string(size) + " bytes)"; };
  if (size < 10) return too_short();
  static constexpr unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (std::memcmp(b.data(), magic, 6) != 0) return "not a .npy " + what + ": bad magic";
  const auto major = static_cast<unsigned>(b[6]);
  const auto minor = static_cast<unsigned>(b[7]);
  std::size_t prefix = 0;
  if (major == 1 && minor == 0) {
    prefix = 10;
  } else if ((major == 2 || major == 3) && minor == 0) {
    if (size < 12) return too_short();
    prefix = 12;
  } else {
    return "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor);
  }
  std::size_t hlen = 0;  // u16 (1.0) or u32 (2.0, 3.0), little-endian
  for (std::size_t i = prefix; i-- > 8;) hlen = (hlen << 8) | static_cast<std::size_t>(b[i]);
  if (hlen > size - prefix)
    return std::string(holder == Holder::File ? "" : ".npy ") + "header length " + std::to_string(hlen) +
           " is beyond the end of the " + what + " (" + std::to_string(size) + " bytes)";
  const std::string_view text(reinterpret_cast<const char*>(b.data() + prefix), hlen);
  out.data_offset = prefix + hlen;
  return HeaderParser(text).parse(out.header);
}

/// Checks that the @p have bytes after the preamble are exactly the data of @p shape with
/// @p itemsize bytes per element; sets @p numel. Returns "" or the problem (overflow, truncated,
/// trailing bytes), worded for the holder.
inline std::string check_data_size(std::span<const std::size_t> shape, std::size_t itemsize, std::size_t have,
                                   Holder holder, std::size_t& numel) {
  numel = 1;
  for (std::size_t dim : shape)
    if (!checked_mul(numel, dim, numel)) return "shape " + format_shape(shape) + " overflows the element count";
  std::size_t nbytes = 0;
  if (!checked_mul(numel, itemsize, nbytes)) return "shape " + format_shape(shape) + " overflows the byte count";
  const std::string expected = std::to_string(nbytes), found = std::to_string(have);
  if (holder == Holder::File) {
    if (have < nbytes) return "truncated: expected " + expected + " bytes of data, found " + found;
    if (have > nbytes)
      return "size mismatch: expected " + expected + " bytes of data, found " + found +
             " (trailing bytes after the array)";
  } else {
    if (have < nbytes) return "truncated .npy data: expected " + expected + " bytes, found " + found;
    if (have > nbytes) return ".npy size mismatch: expected " + expected + " bytes of data, found " + found;
  }
  return {};
}

/// Writes a complete .npy file atomically: preamble() then the data.
inline void write_npy(const std::filesystem::path& path, NpyDtype dtype, const void* data,
                      std::span<const std::size_t> shape) {
  std::size_t numel = 1;
  for (std::size_t dim : shape)
    if (!checked_mul(numel, dim, numel)) throw IoError(path, "shape product overflows");
  std::size_t nbytes = 0;
  if (!checked_mul(numel, npy_itemsize(dtype), nbytes)) throw IoError(path, "array size overflows");
  if (data == nullptr && nbytes != 0) throw IoError(path, "null data pointer");
  const std::string pre = preamble(npy_descr(dtype), shape);
  AtomicFile file(path);
  file.write(pre.data(), pre.size());
  file.write(data, nbytes);
  file.commit();
}

}  // namespace detail::npy

/// Memory-mapped, zero-copy reader of a float32 or float16 .npy file.
///
/// Shape conventions: rows() = shape[0] (N tokens), cols() = product of the remaining dims
/// (d); a 1-D array [N] has cols() == 1, a 0-D array is treated as 1 x 1. The whole file is
/// validated in open(); afterwards every accessor is bounds-safe.
///
/// Movable, not copyable; pointers returned by the accessors are valid while the reader lives.
class NpyReader {
 public:
  /// Maps and validates `path`. Throws IoError "PATH: problem" (one line) for: a file too
  /// short for the magic/header, bad magic, unsupported version, header length beyond the
  /// file, a malformed header dict, missing/unknown/duplicate keys, unsupported dtype
  /// (only '<f4' and '<f2'; '=' accepted on this little-endian host; '>' rejected),
  /// fortran_order True, shape product overflow, and a data size different from
  /// product(shape) * itemsize (shorter: "truncated: ...", longer: trailing bytes).
  static NpyReader open(const std::filesystem::path& path) {
    NpyReader r;
    r.file_ = sae::detail::MappedFile(path);
    r.parse();
    return r;
  }

  NpyDtype dtype() const noexcept { return dtype_; }
  /// Full shape as stored in the file.
  const std::vector<std::size_t>& shape() const noexcept { return shape_; }
  /// shape[0] (1 for a 0-D array).
  std::size_t rows() const noexcept { return rows_; }
  /// Product of shape[1..] (1 for 0-D and 1-D arrays).
  std::size_t cols() const noexcept { return cols_; }
  /// Total number of elements, rows() * cols().
  std::size_t numel() const noexcept { return numel_; }
  /// Byte offset of the data in the file.
  std::size_t data_offset() const noexcept { return offset_; }
  const std::filesystem::path& path() const noexcept { return file_.path(); }
  /// The underlying map (e.g. for madvise hints).
  const sae::detail::MappedFile& mapped_file() const noexcept { return file_; }

  /// The float32 data, C order. Zero-copy unless the data offset in the file is not a
  /// multiple of 4 (a non-standard writer), in which case it was copied once into an aligned
  /// buffer. Throws IoError if the dtype is not F32. nullptr for an empty array.
  const float* f32_data() const {
    if (dtype_ != NpyDtype::F32) throw IoError(path(), "array is float16, not float32");
    return f32_;
  }
  /// The float16 data as raw bit patterns, C order (see sae/detail/half.hpp).
  /// Throws IoError if the dtype is not F16.
  const std::uint16_t* f16_data() const {
    if (dtype_ != NpyDtype::F16) throw IoError(path(), "array is float32, not float16");
    return f16_;
  }

  /// The C-order [N, d] array viewed, without copying, as a column-major d x N matrix
  /// (cols() x rows(), one token per column). F32 only (IoError otherwise).
  Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>> matrix() const {
    const float* p = f32_data();
    return Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>>(p, static_cast<Eigen::Index>(cols_),
                                                                                  static_cast<Eigen::Index>(rows_));
  }

  /// Copies rows [first_row, first_row + count) (tokens) into `out` as float, converting
  /// float16. `out` receives cols() * count floats: a column-major cols() x count block.
  /// Throws IoError if the range exceeds rows().
  void copy_rows_f32(std::size_t first_row, std::size_t count, float* out) const {
    if (first_row > rows_ || count > rows_ - first_row)
      throw IoError(path(), "rows [" + std::to_string(first_row) + ", " + std::to_string(first_row) + "+" +
                                std::to_string(count) + ") are out of range (array has " + std::to_string(rows_) +
                                " rows)");
    const std::size_t n = count * cols_;
    if (n == 0) return;
    const std::size_t start = first_row * cols_;
    if (dtype_ == NpyDtype::F32) {
      std::memcpy(out, f32_ + start, n * sizeof(float));
    } else {
      sae::detail::half_to_float(f16_ + start, out, n);
    }
  }

 private:
  NpyReader() = default;

  [[noreturn]] void fail(const std::string& problem) const { throw IoError(path(), problem); }

  void parse() {
    using detail::npy::Holder;
    const std::span<const std::byte> bytes(file_.data(), file_.size());
    detail::npy::Preamble pre;
    if (std::string err = detail::npy::parse_preamble(bytes, Holder::File, pre); !err.empty()) fail(err);
    detail::npy::Header& h = pre.header;

    const std::string& d = h.descr;
    if (d == "<f4" || d == "=f4")
      dtype_ = NpyDtype::F32;
    else if (d == "<f2" || d == "=f2")
      dtype_ = NpyDtype::F16;
    else if (d == ">f4" || d == ">f2")
      fail("big-endian data ('" + d + "') is not supported; re-save it as '<" + d.substr(1) + "'");
    else
      fail("unsupported dtype '" + detail::npy::HeaderParser::printable(d) +
           "' (expected '<f4' float32 or '<f2' float16)");
    if (h.fortran_order) fail("fortran_order True is not supported (save a C-order array, e.g. np.ascontiguousarray)");

    offset_ = pre.data_offset;
    std::size_t numel = 0;
    if (std::string err =
            detail::npy::check_data_size(h.shape, npy_itemsize(dtype_), bytes.size() - offset_, Holder::File, numel);
        !err.empty())
      fail(err);
    const std::size_t nbytes = numel * npy_itemsize(dtype_);

    shape_ = std::move(h.shape);
    numel_ = numel;
    rows_ = shape_.empty() ? 1 : shape_[0];
    cols_ = 1;
    for (std::size_t i = 1; i < shape_.size(); ++i) cols_ *= shape_[i];
    if (rows_ > static_cast<std::size_t>(std::numeric_limits<Eigen::Index>::max()) ||
        cols_ > static_cast<std::size_t>(std::numeric_limits<Eigen::Index>::max()))
      fail("shape " + detail::npy::format_shape(shape_) + " is too large");

    if (numel_ == 0) return;  // f32_/f16_ stay nullptr
    const std::byte* p = bytes.data() + offset_;
    const std::size_t align = npy_itemsize(dtype_);
    if (reinterpret_cast<std::uintptr_t>(p) % align != 0) {
      // Non-standard header length: copy once into aligned storage.
      if (dtype_ == NpyDtype::F32) {
        aligned_f32_.resize(numel_);
        std::memcpy(aligned_f32_.data(), p, nbytes);
      } else {
        aligned_f16_.resize(numel_);
        std::memcpy(aligned_f16_.data(), p, nbytes);
      }
    }
    if (dtype_ == NpyDtype::F32)
      f32_ = aligned_f32_.empty() ? reinterpret_cast<const float*>(p) : aligned_f32_.data();
    else
      f16_ = aligned_f16_.empty() ? reinterpret_cast<const std::uint16_t*>(p) : aligned_f16_.data();
  }

  sae::detail::MappedFile file_;
  NpyDtype dtype_ = NpyDtype::F32;
  std::vector<std::size_t> shape_;
  std::size_t rows_ = 0, cols_ = 0, numel_ = 0, offset_ = 0;
  const float* f32_ = nullptr;
  const std::uint16_t* f16_ = nullptr;
  std::vector<float> aligned_f32_;
  std::vector<std::uint16_t> aligned_f16_;
};

/// Writes `data` (C order, product(shape) floats) as a '<f4' .npy file, version 1.0, header
/// padded so the data starts at a multiple of 64. Atomic (temp file + rename).
/// Throws IoError "PATH: problem".
inline void save_npy(const std::filesystem::path& path, const float* data, std::span<const std::size_t> shape) {
  detail::npy::write_npy(path, NpyDtype::F32, data, shape);
}

/// Same for float16 bit patterns ('<f2').
inline void save_npy_f16(const std::filesystem::path& path, const std::uint16_t* data,
                         std::span<const std::size_t> shape) {
  detail::npy::write_npy(path, NpyDtype::F16, data, shape);
}

/// Writes a column-major d x N matrix (d = m.rows(), N = m.cols(), one token per column) as a
/// C-order [N, d] '<f4' array, the inverse of NpyReader::matrix(). The matrix is written
/// directly when it already is contiguous column-major float storage; any other expression
/// (row-major, strided, a non-float scalar, a lazy expression) is first evaluated into a
/// temporary column-major float matrix.
template <class Derived>
void save_npy_matrix(const std::filesystem::path& path, const Eigen::MatrixBase<Derived>& m) {
  const std::size_t shape[2] = {static_cast<std::size_t>(m.cols()), static_cast<std::size_t>(m.rows())};
  using Scalar = typename Derived::Scalar;
  if constexpr (std::is_same_v<Scalar, float> && (Derived::Flags & Eigen::DirectAccessBit) != 0 &&
                (Derived::Flags & Eigen::RowMajorBit) == 0) {
    const Derived& d = m.derived();
    if (d.innerStride() == 1 && (d.outerStride() == d.rows() || d.cols() <= 1)) {
      save_npy(path, d.data(), shape);
      return;
    }
  }
  const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic> tmp = m.template cast<float>();
  save_npy(path, tmp.data(), shape);
}

}  // namespace sae::io
