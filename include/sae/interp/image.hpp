/// @file sae/interp/image.hpp
/// Small images for reports: a minimal PNG encoder (8-bit gray or RGB, uncompressed deflate
/// "stored" blocks, so no zlib is needed), base64 data URIs, and the two colour maps reports
/// use (gray for inputs, blue-white-red for signed decoder directions).
///
/// PNG (ISO/IEC 15948): 8-byte signature, then chunks [u32 big-endian length][type][data]
/// [CRC-32 of type + data]: IHDR (width, height, bit depth 8, colour type 0 gray / 2 RGB),
/// one IDAT holding a zlib stream (header 78 01, stored blocks of <= 65535 bytes, Adler-32),
/// IEND. Every scanline starts with filter byte 0 (none). A 28 x 28 gray image is ~900 bytes.
///
/// Pixel layout: an image of h rows and w columns is a vector of h*w values, row-major (pixel
/// (r, c) at r*w + c), which is how an IDX / C-order [N, h, w] array stores each item.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include <Eigen/Core>

namespace sae::interp::image {

namespace detail {

inline std::uint32_t crc32(std::string_view bytes, std::uint32_t crc = 0) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (unsigned char b : bytes) crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

inline std::uint32_t adler32(std::string_view bytes) {
  std::uint32_t a = 1, b = 0;
  for (unsigned char c : bytes) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  return (b << 16) | a;
}

inline void put_u32be(std::string& s, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
}

inline void chunk(std::string& png, const char* type, std::string_view data) {
  put_u32be(png, static_cast<std::uint32_t>(data.size()));
  std::string td(type, 4);
  td.append(data);
  png += td;
  put_u32be(png, crc32(td));
}

}  // namespace detail

/// PNG bytes of an 8-bit image: @p pixels has h * w * channels bytes, row-major, channels 1
/// (gray) or 3 (RGB).
inline std::string encode_png(std::string_view pixels, int width, int height, int channels) {
  std::string raw;
  const std::size_t row = static_cast<std::size_t>(width) * static_cast<std::size_t>(channels);
  raw.reserve((row + 1) * static_cast<std::size_t>(height));
  for (int r = 0; r < height; ++r) {
    raw += '\0';  // filter: none
    raw.append(pixels.substr(static_cast<std::size_t>(r) * row, row));
  }
  std::string z = "\x78\x01";
  std::size_t pos = 0;
  do {  // stored blocks; an empty image still gets one (empty, final) block
    const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
    z += static_cast<char>(pos + n == raw.size() ? 1 : 0);  // BFINAL, BTYPE 00
    z += static_cast<char>(n & 0xFF);
    z += static_cast<char>(n >> 8);
    z += static_cast<char>(~n & 0xFF);
    z += static_cast<char>((~n >> 8) & 0xFF);
    z.append(raw, pos, n);
    pos += n;
  } while (pos < raw.size());
  detail::put_u32be(z, detail::adler32(raw));

  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  detail::put_u32be(ihdr, static_cast<std::uint32_t>(width));
  detail::put_u32be(ihdr, static_cast<std::uint32_t>(height));
  ihdr += '\x08';                                    // bit depth
  ihdr += static_cast<char>(channels == 3 ? 2 : 0);  // colour type
  ihdr.append(3, '\0');                              // compression, filter, interlace
  detail::chunk(png, "IHDR", ihdr);
  detail::chunk(png, "IDAT", z);
  detail::chunk(png, "IEND", {});
  return png;
}

/// Base64 (RFC 4648, with padding).
inline std::string base64(std::string_view bytes) {
  static constexpr char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const std::uint32_t v = (std::uint32_t(static_cast<unsigned char>(bytes[i])) << 16) |
                            (std::uint32_t(static_cast<unsigned char>(bytes[i + 1])) << 8) |
                            std::uint32_t(static_cast<unsigned char>(bytes[i + 2]));
    out += abc[v >> 18];
    out += abc[(v >> 12) & 63];
    out += abc[(v >> 6) & 63];
    out += abc[v & 63];
  }
  if (i < bytes.size()) {
    std::uint32_t v = std::uint32_t(static_cast<unsigned char>(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= std::uint32_t(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out += abc[v >> 18];
    out += abc[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? abc[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

/// "data:image/png;base64,..." for @p png bytes.
inline std::string png_data_uri(std::string_view png) { return "data:image/png;base64," + base64(png); }

/// Gray PNG of h x w values (row-major) mapped linearly from [lo, hi] to black..white
/// (clamped); lo == hi maps everything to black.
template <class Derived>
std::string gray_png(const Eigen::MatrixBase<Derived>& v, int height, int width, double lo, double hi) {
  std::string px(static_cast<std::size_t>(height) * static_cast<std::size_t>(width), '\0');
  const double span = hi > lo ? hi - lo : 1.0;
  for (std::size_t i = 0; i < px.size(); ++i) {
    const double x = (static_cast<double>(v(static_cast<Eigen::Index>(i))) - lo) / span;
    px[i] = static_cast<char>(static_cast<unsigned char>(std::lround(255.0 * std::clamp(x, 0.0, 1.0))));
  }
  return encode_png(px, width, height, 1);
}

/// RGB colour of a signed value @p x in [-1, 1]: blue (-1), white (0), red (+1).
inline std::array<unsigned char, 3> diverging_rgb(double x) {
  x = std::clamp(x, -1.0, 1.0);
  const auto fade = [](double t) { return static_cast<unsigned char>(std::lround(255.0 * (1.0 - t))); };
  if (x >= 0) return {255, fade(0.85 * x), fade(0.85 * x)};
  return {fade(-0.85 * x), fade(-0.7 * x), 255};
}

/// Blue-white-red PNG of h x w signed values (row-major), scaled by max |v| (so 0 is white).
template <class Derived>
std::string diverging_png(const Eigen::MatrixBase<Derived>& v, int height, int width) {
  const double scale = std::max(static_cast<double>(v.cwiseAbs().maxCoeff()), 1e-30);
  std::string px(static_cast<std::size_t>(height) * static_cast<std::size_t>(width) * 3, '\0');
  for (Eigen::Index i = 0; i < static_cast<Eigen::Index>(height) * width; ++i) {
    const auto c = diverging_rgb(static_cast<double>(v(i)) / scale);
    for (int k = 0; k < 3; ++k)
      px[static_cast<std::size_t>(3 * i + k)] = static_cast<char>(c[static_cast<std::size_t>(k)]);
  }
  return encode_png(px, width, height, 3);
}

}  // namespace sae::interp::image
