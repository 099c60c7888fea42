/// @file sae/io/idx.hpp
/// Reader for IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.
///
/// Format (LeCun et al., "THE MNIST DATABASE of handwritten digits", file format section):
///
///     bytes 0-1   zero
///     byte  2     element type: 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64
///     byte  3     number of dimensions n (>= 1)
///     4n bytes    the n dimension sizes, big-endian u32
///     data        product(sizes) elements, big-endian, C order (last index fastest)
///
/// Debian's `dataset-fashion-mnist` ships them gzip-compressed
/// (/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz is [60000, 28, 28] u8).
/// A file that starts with the gzip magic 1f 8b is inflated on the fly with zlib (needs
/// SAE_HAVE_ZLIB, which the sae::sae target defines when zlib is found); concatenated gzip
/// members are read as one stream.
///
/// Layout: an IDX image file [N, h, w] is, like a C-order .npy, a column-major (h*w) x N
/// matrix with one image per column (pixel (r, c) at row r*w + c); idx_matrix() returns it so.
///
/// Every problem is an IoError "PATH: problem" (one line): empty or short file, nonzero magic
/// bytes, unknown type code, zero dimensions, size overflow, truncated data, trailing bytes,
/// corrupt or truncated gzip data, and a gzip file when zlib is unavailable.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>

#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
#include <zlib.h>
#endif

#include "sae/detail/checked.hpp"
#include "sae/detail/mapped_file.hpp"
#include "sae/io/error.hpp"

namespace sae::io {

/// Element type of an IDX array (the value is the type byte of the file).
enum class IdxType : std::uint8_t { U8 = 0x08, I8 = 0x09, I16 = 0x0B, I32 = 0x0C, F32 = 0x0D, F64 = 0x0E };

/// Bytes per element of @p t.
constexpr std::size_t idx_itemsize(IdxType t) noexcept {
  switch (t) {
    case IdxType::U8:
    case IdxType::I8:
      return 1;
    case IdxType::I16:
      return 2;
    case IdxType::I32:
    case IdxType::F32:
      return 4;
    case IdxType::F64:
      return 8;
  }
  return 0;
}

/// Name of @p t for messages ("u8", "i16", ...).
constexpr const char* idx_type_name(IdxType t) noexcept {
  switch (t) {
    case IdxType::U8:
      return "u8";
    case IdxType::I8:
      return "i8";
    case IdxType::I16:
      return "i16";
    case IdxType::I32:
      return "i32";
    case IdxType::F32:
      return "f32";
    case IdxType::F64:
      return "f64";
  }
  return "?";
}

/// A whole IDX array in memory: the shape, and the elements in host byte order (C order).
struct IdxArray {
  std::filesystem::path path;  ///< the file it was read from
  IdxType type = IdxType::U8;
  std::vector<std::size_t> shape;  ///< n dimension sizes
  std::vector<std::byte> data;     ///< numel() * idx_itemsize(type) bytes, host byte order

  /// Product of the dimensions.
  std::size_t numel() const noexcept {
    std::size_t n = 1;
    for (std::size_t s : shape) n *= s;
    return n;
  }
  /// Element @p i (C order) as a double, whatever the element type.
  double value(std::size_t i) const noexcept {
    const std::byte* p = data.data() + i * idx_itemsize(type);
    switch (type) {
      case IdxType::U8:
        return static_cast<double>(std::to_integer<std::uint8_t>(*p));
      case IdxType::I8:
        return static_cast<double>(static_cast<std::int8_t>(std::to_integer<std::uint8_t>(*p)));
      case IdxType::I16:
        return static_cast<double>(load<std::int16_t>(p));
      case IdxType::I32:
        return static_cast<double>(load<std::int32_t>(p));
      case IdxType::F32:
        return static_cast<double>(load<float>(p));
      case IdxType::F64:
        return load<double>(p);
    }
    return 0;
  }

 private:
  template <class T>
  static T load(const std::byte* p) noexcept {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
};

namespace detail::idx {

/// Sequential reader of the file's bytes: straight from the map, or through zlib's inflate.
class ByteStream {
 public:
  explicit ByteStream(const sae::detail::MappedFile& file) : file_(file) {
    const std::byte* b = file.data();
    gzip_ = file.size() >= 2 && std::to_integer<unsigned>(b[0]) == 0x1f && std::to_integer<unsigned>(b[1]) == 0x8b;
    if (gzip_) {
#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
      std::memset(&z_, 0, sizeof z_);
      if (inflateInit2(&z_, 15 + 16) != Z_OK) fail("cannot initialise zlib");
      z_open_ = true;
#else
      fail("file is gzip-compressed and libsae was built without zlib: decompress it first (gunzip -k)");
#endif
    }
  }
  ~ByteStream() {
#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
    if (z_open_) inflateEnd(&z_);
#endif
  }
  ByteStream(const ByteStream&) = delete;
  ByteStream& operator=(const ByteStream&) = delete;

  bool gzip() const noexcept { return gzip_; }

  /// Reads up to @p n bytes into @p out; returns the count (less than n only at the end).
  std::size_t read(std::byte* out, std::size_t n) {
    if (!gzip_) {
      const std::size_t got = std::min(n, file_.size() - pos_);
      if (got > 0) std::memcpy(out, file_.data() + pos_, got);
      pos_ += got;
      return got;
    }
#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
    std::size_t got = 0;
    while (got < n) {
      if (ended_) {
        // A finished member: continue only if another gzip member follows.
        const std::size_t left = file_.size() - pos_;
        if (left == 0) break;
        const std::byte* b = file_.data() + pos_;
        if (left < 2 || std::to_integer<unsigned>(b[0]) != 0x1f || std::to_integer<unsigned>(b[1]) != 0x8b)
          fail("trailing bytes after the gzip stream (" + std::to_string(left) + " bytes)");
        if (inflateReset(&z_) != Z_OK) fail("cannot reset zlib");
        ended_ = false;
      }
      const std::size_t in_left = file_.size() - pos_;
      const std::size_t chunk_in = std::min<std::size_t>(in_left, std::size_t{1} << 30);
      const std::size_t chunk_out = std::min<std::size_t>(n - got, std::size_t{1} << 30);
      z_.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(file_.data() + pos_));
      z_.avail_in = static_cast<uInt>(chunk_in);
      z_.next_out = reinterpret_cast<Bytef*>(out + got);
      z_.avail_out = static_cast<uInt>(chunk_out);
      const int rc = inflate(&z_, Z_NO_FLUSH);
      const std::size_t used = chunk_in - z_.avail_in, produced = chunk_out - z_.avail_out;
      pos_ += used;
      got += produced;
      if (rc == Z_STREAM_END) {
        ended_ = true;
        continue;
      }
      if (rc == Z_BUF_ERROR && used == 0 && produced == 0) {
        if (in_left == 0) fail("truncated gzip stream (the compressed data ends early)");
        fail("corrupt gzip data (zlib made no progress)");
      }
      if (rc != Z_OK) fail(std::string("corrupt gzip data: ") + (z_.msg ? z_.msg : "zlib error " + std::to_string(rc)));
    }
    return got;
#else
    (void)out;
    (void)n;
    return 0;
#endif
  }

  /// True when no byte is left (for a gzip file: also after the stream's end marker).
  bool at_end() {
    std::byte b{};
    return read(&b, 1) == 0;
  }

  /// Whether a complete gzip stream was read (false: the compressed data ended early).
  bool complete() const noexcept { return !gzip_ || ended_; }

  [[noreturn]] void fail(const std::string& problem) const { throw IoError(file_.path(), problem); }

 private:
  const sae::detail::MappedFile& file_;
  std::size_t pos_ = 0;
  bool gzip_ = false;
  bool ended_ = false;
#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
  z_stream z_{};
  bool z_open_ = false;
#endif
};

inline std::string shape_text(const std::vector<std::size_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// Reverses the bytes of every element (big-endian file -> little-endian host).
inline void swap_elements(std::vector<std::byte>& data, std::size_t itemsize) {
  if (itemsize == 1) return;
  for (std::size_t i = 0; i + itemsize <= data.size(); i += itemsize)
    std::reverse(data.begin() + static_cast<std::ptrdiff_t>(i),
                 data.begin() + static_cast<std::ptrdiff_t>(i + itemsize));
}

}  // namespace detail::idx

/// Reads a whole IDX file (plain, or gzip-compressed when it starts with 1f 8b).
/// Throws IoError "PATH: problem" for every malformed or truncated file (see the file comment).
inline IdxArray read_idx(const std::filesystem::path& path) {
  static_assert(std::endian::native == std::endian::little, "read_idx assumes a little-endian host");
  sae::detail::MappedFile file(path);
  detail::idx::ByteStream in(file);
  const std::string what = in.gzip() ? "decompressed data" : "file";
  if (file.size() == 0) in.fail("empty file (expected an IDX header)");

  std::byte magic[4];
  const std::size_t got = in.read(magic, 4);
  if (got < 4)
    in.fail("not an IDX file: " + what + " too short for the 4-byte magic (" + std::to_string(got) + " bytes)");
  if (std::to_integer<unsigned>(magic[0]) != 0 || std::to_integer<unsigned>(magic[1]) != 0)
    in.fail("not an IDX file: the first two bytes must be zero");
  const unsigned code = std::to_integer<unsigned>(magic[2]);
  if (code != 0x08 && code != 0x09 && code != 0x0B && code != 0x0C && code != 0x0D && code != 0x0E) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02X", code);
    in.fail(std::string("not an IDX file: unknown element type ") + hex +
            " (expected 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32 or 0x0E f64)");
  }
  const unsigned ndim = std::to_integer<unsigned>(magic[3]);
  if (ndim == 0) in.fail("IDX header declares 0 dimensions");

  IdxArray a;
  a.path = path;
  a.type = static_cast<IdxType>(code);
  std::vector<std::byte> dims(4 * static_cast<std::size_t>(ndim));
  if (const std::size_t g = in.read(dims.data(), dims.size()); g < dims.size())
    in.fail("truncated IDX header: " + std::to_string(ndim) + " dimensions need " + std::to_string(dims.size()) +
            " bytes of sizes, found " + std::to_string(g));
  std::size_t numel = 1;
  for (unsigned i = 0; i < ndim; ++i) {
    std::uint32_t v = 0;
    for (unsigned b = 0; b < 4; ++b) v = (v << 8) | std::to_integer<std::uint32_t>(dims[4 * i + b]);
    a.shape.push_back(v);
    if (!sae::detail::checked_mul(numel, v, numel))
      in.fail("IDX shape " + detail::idx::shape_text(a.shape) + " overflows");
  }
  std::size_t nbytes = 0;
  if (!sae::detail::checked_mul(numel, idx_itemsize(a.type), nbytes))
    in.fail("IDX shape " + detail::idx::shape_text(a.shape) + " overflows the byte count");
  const std::size_t header = 4 + dims.size();
  // Never allocate more than the file can hold: deflate expands at most ~1032:1.
  const std::size_t cap = in.gzip() ? (file.size() > std::numeric_limits<std::size_t>::max() / 1032
                                           ? std::numeric_limits<std::size_t>::max()
                                           : file.size() * 1032)
                                    : file.size() - std::min(file.size(), header);
  if (nbytes > cap)
    in.fail("truncated: shape " + detail::idx::shape_text(a.shape) + " of " + idx_type_name(a.type) + " needs " +
            std::to_string(nbytes) + " bytes of data, the " + (in.gzip() ? "compressed file" : "file") + " has only " +
            std::to_string(in.gzip() ? file.size() : cap));
  a.data.resize(nbytes);
  if (const std::size_t g = in.read(a.data.data(), nbytes); g < nbytes)
    in.fail("truncated: expected " + std::to_string(nbytes) + " bytes of data for shape " +
            detail::idx::shape_text(a.shape) + ", found " + std::to_string(g));
  if (!in.at_end())
    in.fail("size mismatch: trailing bytes after the " + std::to_string(nbytes) + " bytes of data for shape " +
            detail::idx::shape_text(a.shape));
  if (!in.complete()) in.fail("truncated gzip stream (the compressed data ends early)");
  detail::idx::swap_elements(a.data, idx_itemsize(a.type));
  return a;
}

/// An IDX array [N, dims...] as a column-major float matrix (product(dims)) x N, one item per
/// column, each element multiplied by @p scale (1/255 turns u8 pixels into [0, 1]).
/// A 1-D array [N] gives a 1 x N matrix.
inline Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic> idx_matrix(const IdxArray& a, double scale = 1.0) {
  const std::size_t n = a.shape.empty() ? 0 : a.shape[0];
  const std::size_t d = n == 0 ? 0 : a.numel() / n;
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic> m(static_cast<Eigen::Index>(d), static_cast<Eigen::Index>(n));
  float* out = m.data();
  const std::size_t total = d * n;
  if (a.type == IdxType::U8) {
    const float s = static_cast<float>(scale);
    for (std::size_t i = 0; i < total; ++i) out[i] = static_cast<float>(std::to_integer<std::uint8_t>(a.data[i])) * s;
  } else {
    for (std::size_t i = 0; i < total; ++i) out[i] = static_cast<float>(a.value(i) * scale);
  }
  return m;
}

/// Reads an IDX image file [N, h, w] (u8) as a (h*w) x N matrix with pixels in [0, 1].
/// Throws IoError unless the file is a 3-D u8 array.
inline Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic> read_idx_images(const std::filesystem::path& path,
                                                                            std::size_t* height = nullptr,
                                                                            std::size_t* width = nullptr) {
  const IdxArray a = read_idx(path);
  if (a.type != IdxType::U8 || a.shape.size() != 3)
    throw IoError(path, std::string("expected u8 images [N, height, width], got ") + idx_type_name(a.type) + " " +
                            detail::idx::shape_text(a.shape));
  if (height) *height = a.shape[1];
  if (width) *width = a.shape[2];
  return idx_matrix(a, 1.0 / 255.0);
}

/// Reads an IDX label file [N] (u8) as a vector of N labels.
/// Throws IoError unless the file is a 1-D u8 array.
inline std::vector<std::uint8_t> read_idx_labels(const std::filesystem::path& path) {
  const IdxArray a = read_idx(path);
  if (a.type != IdxType::U8 || a.shape.size() != 1)
    throw IoError(path, std::string("expected u8 labels [N], got ") + idx_type_name(a.type) + " " +
                            detail::idx::shape_text(a.shape));
  std::vector<std::uint8_t> out(a.data.size());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = std::to_integer<std::uint8_t>(a.data[i]);
  return out;
}

}  // namespace sae::io
