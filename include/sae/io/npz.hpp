/// @file sae/io/npz.hpp
/// NumPy .npz archives: a validating reader and an atomic writer.
///
/// Format: an .npz file is a ZIP archive (PKWARE APPNOTE) whose members are .npy files
/// (see sae/io/npy.hpp) named "NAME.npy"; np.load() exposes them as NAME. Members are either
/// stored (method 0) or deflate-compressed (method 8, np.savez_compressed). The parts used:
///
///   local file header   "PK\3\4", version, flags, method, time, date, crc32, compressed
///                       size, uncompressed size, name length, extra length, name, extra,
///                       then the member data
///   central directory   one "PK\1\2" record per member (the same fields plus comment
///                       length, disk number, attributes and the local header's offset)
///   end of central dir  "PK\5\6", disk numbers, entry counts, directory size and offset,
///                       comment length, comment (up to 65535 bytes, so the record is found
///                       by scanning back from the end of the file)
///
/// The central directory is authoritative. NumPy's np.savez forces ZIP64 *local* headers
/// (sizes 0xFFFFFFFF plus a ZIP64 extra field) even for small members; that is fine here
/// because sizes come from the central directory and the local extra field is only skipped.
/// An archive that actually needs ZIP64 (a member or the archive beyond 4 GiB, more than
/// 65535 members: the central directory or end record holds the 0xFFFF... escape values) is
/// rejected with a clear message, as are encryption, multi-disk archives and compression
/// methods other than stored and deflate.
///
/// Deflate needs zlib (SAE_HAVE_ZLIB=1, set by CMake when zlib is found). Without it the
/// writer stores members uncompressed and the reader rejects deflate members; CRC-32 then
/// uses a built-in table.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "sae/detail/checked.hpp"
#include "sae/detail/half.hpp"
#include "sae/detail/mapped_file.hpp"
#include "sae/io/atomic_file.hpp"
#include "sae/io/error.hpp"
#include "sae/io/npy.hpp"

#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
#include <zlib.h>
#define SAE_NPZ_HAVE_ZLIB 1
#else
#define SAE_NPZ_HAVE_ZLIB 0
#endif

namespace sae::io {

/// True when this build can read and write deflate-compressed members.
inline constexpr bool npz_has_deflate = SAE_NPZ_HAVE_ZLIB != 0;

/// An array read from an .npz member: C-order data and its shape (empty shape = scalar).
template <class T>
struct NpzArray {
  std::vector<std::size_t> shape;
  std::vector<T> data;

  /// Product of the shape (1 for a scalar).
  std::size_t numel() const noexcept { return data.size(); }
};

namespace detail::npz {

using sae::detail::checked_mul;

inline constexpr std::uint32_t sig_local = 0x04034b50;
inline constexpr std::uint32_t sig_central = 0x02014b50;
inline constexpr std::uint32_t sig_end = 0x06054b50;
inline constexpr std::uint32_t sig_zip64_locator = 0x07064b50;
inline constexpr std::size_t local_fixed = 30;
inline constexpr std::size_t central_fixed = 46;
inline constexpr std::size_t end_fixed = 22;
/// Deflate cannot expand data by more than about 1032:1; a larger declared ratio is a lie
/// (and refusing it bounds the allocation a tiny hostile file can cause).
inline constexpr std::uint64_t max_deflate_ratio = 1100;

inline std::uint32_t crc32_update(std::uint32_t crc, const void* data, std::size_t n) noexcept {
#if SAE_NPZ_HAVE_ZLIB
  const auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  while (n > 0) {
    const auto chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
    c = ::crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<std::uint32_t>(c);
#else
  // Reflected CRC-32 (polynomial 0xEDB88320), as ZIP specifies.
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t c = crc ^ 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
#endif
}

inline std::uint16_t rd16(const std::byte* p) noexcept {
  return static_cast<std::uint16_t>(static_cast<unsigned>(p[0]) | (static_cast<unsigned>(p[1]) << 8));
}
inline std::uint32_t rd32(const std::byte* p) noexcept {
  return static_cast<std::uint32_t>(rd16(p)) | (static_cast<std::uint32_t>(rd16(p + 2)) << 16);
}
inline void put16(std::string& s, std::uint32_t v) {
  s += static_cast<char>(v & 0xFF);
  s += static_cast<char>((v >> 8) & 0xFF);
}
inline void put32(std::string& s, std::uint32_t v) {
  put16(s, v & 0xFFFF);
  put16(s, v >> 16);
}

inline std::string printable(std::string_view v) { return detail::npy::HeaderParser::printable(v); }

/// Element kinds of an .npy member this reader converts.
enum class Kind { F16, F32, F64, I8, I16, I32, I64, U8, U16, U32, U64, Bool };

inline bool parse_descr(const std::string& d, Kind& k, std::size_t& size) {
  struct E {
    const char* name;
    Kind kind;
    std::size_t size;
  };
  static constexpr E table[] = {
      {"<f2", Kind::F16, 2}, {"<f4", Kind::F32, 4}, {"<f8", Kind::F64, 8}, {"|i1", Kind::I8, 1},
      {"<i2", Kind::I16, 2}, {"<i4", Kind::I32, 4}, {"<i8", Kind::I64, 8}, {"|u1", Kind::U8, 1},
      {"<u2", Kind::U16, 2}, {"<u4", Kind::U32, 4}, {"<u8", Kind::U64, 8}, {"|b1", Kind::Bool, 1},
  };
  std::string n = d;
  if (n.size() == 3 && n[0] == '=') n[0] = n[2] == '1' ? '|' : '<';  // native = little here
  if (n.size() == 3 && n[0] == '<' && n[2] == '1') n[0] = '|';
  for (const E& e : table)
    if (n == e.name) {
      k = e.kind;
      size = e.size;
      return true;
    }
  return false;
}

inline bool is_float(Kind k) noexcept { return k == Kind::F16 || k == Kind::F32 || k == Kind::F64; }

/// A parsed .npy member held in memory.
struct NpyView {
  Kind kind = Kind::F32;
  std::size_t itemsize = 4;
  bool fortran = false;
  std::vector<std::size_t> shape;
  std::size_t numel = 1;
  const std::byte* data = nullptr;
};

/// Parses an in-memory .npy image (detail::npy::parse_preamble); returns "" or an error text.
inline std::string parse_npy(std::span<const std::byte> b, NpyView& v) {
  using detail::npy::Holder;
  detail::npy::Preamble pre;
  if (std::string err = detail::npy::parse_preamble(b, Holder::Member, pre); !err.empty()) return err;
  detail::npy::Header& h = pre.header;
  if (!parse_descr(h.descr, v.kind, v.itemsize)) {
    if (!h.descr.empty() && h.descr[0] == '>') return "big-endian dtype '" + printable(h.descr) + "' is not supported";
    return "unsupported dtype '" + printable(h.descr) + "'";
  }
  v.fortran = h.fortran_order;
  if (std::string err =
          detail::npy::check_data_size(h.shape, v.itemsize, b.size() - pre.data_offset, Holder::Member, v.numel);
      !err.empty())
    return err;
  v.shape = std::move(h.shape);
  v.data = b.data() + pre.data_offset;
  return {};
}

/// Element i (in storage order) converted to T; `ok` becomes false when an integer does not
/// fit T.
template <class T>
T element(const NpyView& v, std::size_t i, bool& ok) noexcept {
  const std::byte* p = v.data + i * v.itemsize;
  auto ld = [p](auto tag) {
    decltype(tag) x;
    std::memcpy(&x, p, sizeof(x));
    return x;
  };
  if constexpr (std::is_floating_point_v<T>) {
    switch (v.kind) {
      case Kind::F16:
        return static_cast<T>(sae::detail::half_bits_to_float(ld(std::uint16_t{})));
      case Kind::F32:
        return static_cast<T>(ld(float{}));
      case Kind::F64:
        return static_cast<T>(ld(double{}));
      default:
        ok = false;
        return T{};
    }
  } else {
    auto fit = [&ok](auto x) {
      if (!std::in_range<T>(x)) {
        ok = false;
        return T{};
      }
      return static_cast<T>(x);
    };
    switch (v.kind) {
      case Kind::I8:
        return fit(ld(std::int8_t{}));
      case Kind::I16:
        return fit(ld(std::int16_t{}));
      case Kind::I32:
        return fit(ld(std::int32_t{}));
      case Kind::I64:
        return fit(ld(std::int64_t{}));
      case Kind::U8:
        return fit(ld(std::uint8_t{}));
      case Kind::Bool:
        return static_cast<T>(ld(std::uint8_t{}) != 0);
      case Kind::U16:
        return fit(ld(std::uint16_t{}));
      case Kind::U32:
        return fit(ld(std::uint32_t{}));
      case Kind::U64:
        return fit(ld(std::uint64_t{}));
      default:
        ok = false;
        return T{};
    }
  }
}

}  // namespace detail::npz

/// Validating .npz reader. open() maps the file and checks the whole ZIP structure (end
/// record, central directory, every local header, member ranges inside the file and not
/// overlapping, unique names, sizes consistent with the method); a member's data is
/// decompressed, CRC-checked and its .npy header validated only when it is read.
/// Every problem is an IoError "PATH: problem" (one line), naming the member when relevant.
/// Movable, not copyable.
class NpzReader {
 public:
  /// One archive member, as described by the central directory.
  struct Member {
    std::string name;          ///< array name (the member file name without ".npy")
    std::string file_name;     ///< the member's file name in the archive
    std::uint16_t method = 0;  ///< 0 stored, 8 deflate
    std::uint32_t crc = 0;
    std::size_t compressed = 0;     ///< compressed size in bytes
    std::size_t uncompressed = 0;   ///< uncompressed size (the .npy image) in bytes
    std::size_t header_offset = 0;  ///< offset of the local header in the file
    std::size_t data_offset = 0;    ///< offset of the (compressed) data in the file
  };

  static NpzReader open(const std::filesystem::path& path) {
    NpzReader r;
    r.file_ = sae::detail::MappedFile(path);
    r.parse();
    return r;
  }

  const std::filesystem::path& path() const noexcept { return file_.path(); }

  /// Array names in archive order (member file names with the ".npy" suffix removed).
  std::vector<std::string> members() const {
    std::vector<std::string> out;
    out.reserve(members_.size());
    for (const Member& m : members_) out.push_back(m.name);
    return out;
  }
  /// Central-directory details of every member, archive order.
  const std::vector<Member>& entries() const noexcept { return members_; }

  /// True if an array `name` (or a member file named exactly `name`) exists.
  bool contains(const std::string& name) const { return find(name) != nullptr; }

  /// The array as floats, C order, converted from '<f4', '<f2' or '<f8' (a Fortran-order
  /// array is reordered to C order). IoError for a missing member, integer dtypes, or any
  /// corruption.
  NpzArray<float> read_f32(const std::string& name) const { return read_as<float>(name); }
  /// Same as read_f32 with double precision.
  NpzArray<double> read_f64(const std::string& name) const { return read_as<double>(name); }
  /// The array as int64, from any integer or bool dtype (u8 values are range-checked).
  /// IoError for floating-point dtypes.
  NpzArray<std::int64_t> read_i64(const std::string& name) const { return read_as<std::int64_t>(name); }

  /// The raw .npy image of a member (decompressed and CRC-checked).
  std::vector<std::byte> read_raw(const std::string& name) const { return extract(member(name)); }

 private:
  NpzReader() = default;

  [[noreturn]] void fail(const std::string& problem) const { throw IoError(path(), problem); }
  [[noreturn]] void fail(const Member& m, const std::string& problem) const {
    throw IoError(path(), "member '" + detail::npz::printable(m.file_name) + "': " + problem);
  }

  const Member* find(const std::string& name) const {
    for (const Member& m : members_)
      if (m.name == name) return &m;
    for (const Member& m : members_)
      if (m.file_name == name) return &m;
    return nullptr;
  }

  const Member& member(const std::string& name) const {
    if (const Member* m = find(name)) return *m;
    std::string have;
    for (std::size_t i = 0; i < members_.size() && i < 30; ++i) {
      if (i) have += ", ";
      have += detail::npz::printable(members_[i].name);
    }
    if (members_.size() > 30) have += ", ...";
    fail("no array '" + detail::npz::printable(name) + "' (has: " + have + ")");
  }

  void parse() {
    using namespace detail::npz;
    const std::byte* base = file_.data();
    const std::size_t size = file_.size();
    if (size < end_fixed) fail("not a zip/.npz archive: too short (" + std::to_string(size) + " bytes)");
    // Find the end-of-central-directory record: the last signature whose comment length
    // reaches exactly the end of the file.
    std::size_t eocd = std::numeric_limits<std::size_t>::max();
    const std::size_t lowest = size > end_fixed + 0xFFFF ? size - end_fixed - 0xFFFF : 0;
    for (std::size_t pos = size - end_fixed + 1; pos-- > lowest;) {
      if (rd32(base + pos) == sig_end && pos + end_fixed + rd16(base + pos + 20) == size) {
        eocd = pos;
        break;
      }
    }
    if (eocd == std::numeric_limits<std::size_t>::max()) {
      if (size >= 4 && rd32(base) == sig_local) fail("truncated zip/.npz archive: no end-of-central-directory record");
      fail("not a zip/.npz archive: no end-of-central-directory record");
    }
    const std::byte* e = base + eocd;
    const std::uint16_t disk = rd16(e + 4), cd_disk = rd16(e + 6);
    const std::uint16_t n_disk = rd16(e + 8), n_total = rd16(e + 10);
    const std::uint32_t cd_size = rd32(e + 12), cd_off = rd32(e + 16);
    if (n_total == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu ||
        (eocd >= 20 && rd32(base + eocd - 20) == sig_zip64_locator && n_total == 0 && cd_size == 0))
      fail("ZIP64 archives are not supported (archive larger than 4 GiB or with more than 65534 members)");
    if (disk != 0 || cd_disk != 0 || n_disk != n_total) fail("multi-disk (spanned) zip archives are not supported");
    if (cd_off > eocd || cd_size > eocd - cd_off)
      fail("central directory [" + std::to_string(cd_off) + ", +" + std::to_string(cd_size) +
           ") is outside the archive (end record at " + std::to_string(eocd) + ")");
    if (std::size_t{n_total} * central_fixed > cd_size)
      fail("central directory of " + std::to_string(cd_size) + " bytes cannot hold " + std::to_string(n_total) +
           " entries");
    members_.reserve(n_total);
    std::set<std::string> names;  // file names, and array names tagged with '\n'
    std::size_t pos = cd_off;
    const std::size_t cd_end = std::size_t{cd_off} + cd_size;
    for (std::size_t i = 0; i < n_total; ++i) {
      const std::string where = "central directory entry " + std::to_string(i);
      if (cd_end - pos < central_fixed) fail(where + " is truncated");
      const std::byte* c = base + pos;
      if (rd32(c) != sig_central) fail(where + " has a bad signature");
      Member m;
      const std::uint16_t flags = rd16(c + 8);
      m.method = rd16(c + 10);
      m.crc = rd32(c + 16);
      const std::uint32_t csize = rd32(c + 20), usize = rd32(c + 24);
      const std::size_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
      const std::uint16_t start_disk = rd16(c + 34);
      const std::uint32_t lho = rd32(c + 42);
      if (cd_end - pos - central_fixed < nlen + xlen + clen) fail(where + " runs past the central directory");
      m.file_name.assign(reinterpret_cast<const char*>(c + central_fixed), nlen);
      pos += central_fixed + nlen + xlen + clen;
      if (m.file_name.empty()) fail(where + " has an empty file name");
      if (m.file_name.find('\0') != std::string::npos) fail(where + " has a NUL byte in its file name");
      if (csize == 0xFFFFFFFFu || usize == 0xFFFFFFFFu || lho == 0xFFFFFFFFu)
        fail(m, "ZIP64 members are not supported (member or archive larger than 4 GiB)");
      if (start_disk != 0) fail(m, "member on another disk (spanned archives are not supported)");
      if (flags & 0x0001u) fail(m, "encrypted members are not supported");
      if (flags & 0x0040u) fail(m, "strongly encrypted members are not supported");
      if (m.method != 0 && m.method != 8)
        fail(m, "unsupported compression method " + std::to_string(m.method) + " (only stored (0) and deflate (8))");
      if (m.method == 0 && csize != usize)
        fail(m, "stored member with compressed size " + std::to_string(csize) + " != uncompressed size " +
                    std::to_string(usize));
      if (m.method == 8 && std::uint64_t{usize} > std::uint64_t{csize} * max_deflate_ratio + 64)
        fail(m, "uncompressed size " + std::to_string(usize) + " is impossible for " + std::to_string(csize) +
                    " bytes of deflate data");
      m.compressed = csize;
      m.uncompressed = usize;
      m.header_offset = lho;
      // Local header: inside the archive before the central directory.
      if (lho > cd_off || cd_off - lho < local_fixed)
        fail(m, "local header offset " + std::to_string(lho) + " is out of range");
      const std::byte* l = base + lho;
      if (rd32(l) != sig_local) fail(m, "bad local header signature at offset " + std::to_string(lho));
      const std::size_t lnlen = rd16(l + 26), lxlen = rd16(l + 28);
      if (cd_off - lho - local_fixed < lnlen + lxlen) fail(m, "local header runs into the central directory");
      if (lnlen != nlen || std::memcmp(l + local_fixed, c + central_fixed, nlen) != 0)
        fail(m, "local header file name differs from the central directory");
      if (rd16(l + 8) != m.method) fail(m, "local header compression method differs from the central directory");
      m.data_offset = lho + local_fixed + lnlen + lxlen;
      if (m.compressed > cd_off - m.data_offset)
        fail(m, "data [" + std::to_string(m.data_offset) + ", +" + std::to_string(m.compressed) +
                    ") runs into the central directory at " + std::to_string(cd_off));
      m.name = m.file_name;
      if (m.name.size() > 4 && m.name.compare(m.name.size() - 4, 4, ".npy") == 0) m.name.resize(m.name.size() - 4);
      if (!names.insert(m.file_name).second || !names.insert(m.name + "\n").second) fail(m, "duplicate member name");
      members_.push_back(std::move(m));
    }
    if (pos != cd_end)
      fail("central directory has " + std::to_string(cd_end - pos) + " unused bytes after " + std::to_string(n_total) +
           " entries");
    // Members (local header through data) must not overlap.
    std::vector<const Member*> order;
    for (const Member& m : members_) order.push_back(&m);
    std::sort(order.begin(), order.end(),
              [](const Member* a, const Member* b) { return a->header_offset < b->header_offset; });
    for (std::size_t i = 1; i < order.size(); ++i)
      if (order[i]->header_offset < order[i - 1]->data_offset + order[i - 1]->compressed)
        fail(*order[i], "overlaps member '" + printable(order[i - 1]->file_name) + "'");
  }

  std::vector<std::byte> extract(const Member& m) const {
    const std::byte* src = file_.data() + m.data_offset;
    std::vector<std::byte> out;
    if (m.method == 0) {
      out.assign(src, src + m.compressed);
    } else {
#if SAE_NPZ_HAVE_ZLIB
      out.resize(m.uncompressed);
      z_stream zs{};
      if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) fail(m, "cannot initialise zlib inflate");
      zs.next_in = const_cast<Bytef*>(reinterpret_cast<const Bytef*>(src));
      zs.avail_in = static_cast<uInt>(m.compressed);
      std::byte extra{};
      // With avail_out == 0 zlib cannot tell us the stream is longer than declared, so a
      // one-byte spill area catches "more data than the declared size".
      zs.next_out = out.empty() ? reinterpret_cast<Bytef*>(&extra) : reinterpret_cast<Bytef*>(out.data());
      zs.avail_out = out.empty() ? 1u : static_cast<uInt>(out.size());
      int rc = Z_OK;
      bool spilled = false;
      for (;;) {
        rc = inflate(&zs, Z_FINISH);
        if (rc == Z_STREAM_END) break;
        if (zs.avail_out == 0 && !spilled && !out.empty() && rc != Z_DATA_ERROR && rc != Z_MEM_ERROR) {
          spilled = true;
          zs.next_out = reinterpret_cast<Bytef*>(&extra);
          zs.avail_out = 1;
          continue;
        }
        break;
      }
      const std::size_t produced = zs.total_out;
      const char* msg = zs.msg;
      inflateEnd(&zs);
      if (rc != Z_STREAM_END) {
        if (rc == Z_DATA_ERROR)
          fail(m, std::string("corrupt deflate data") + (msg ? std::string(" (") + msg + ")" : ""));
        if (produced > m.uncompressed)
          fail(m, "deflate data expands beyond the declared size " + std::to_string(m.uncompressed));
        fail(m, "truncated deflate data (" + std::to_string(produced) + " of " + std::to_string(m.uncompressed) +
                    " bytes)");
      }
      if (produced != m.uncompressed)
        fail(m, "deflate data expands to " + std::to_string(produced) + " bytes, the directory says " +
                    std::to_string(m.uncompressed));
      if (out.empty() && spilled) fail(m, "deflate data expands beyond the declared size 0");
#else
      fail(m, "member is deflate-compressed but libsae was built without zlib (SAE_HAVE_ZLIB)");
#endif
    }
    const std::uint32_t crc = detail::npz::crc32_update(0, out.data(), out.size());
    if (crc != m.crc) fail(m, "CRC-32 mismatch (data is corrupt)");
    return out;
  }

  template <class T>
  NpzArray<T> read_as(const std::string& name) const {
    using namespace detail::npz;
    const Member& m = member(name);
    const std::vector<std::byte> img = extract(m);
    NpyView v;
    const std::string err = parse_npy(img, v);
    if (!err.empty()) fail(m, err);
    if constexpr (std::is_floating_point_v<T>) {
      if (!is_float(v.kind)) fail(m, "array has an integer dtype, expected a floating-point one");
    } else {
      if (is_float(v.kind)) fail(m, "array has a floating-point dtype, expected an integer one");
    }
    NpzArray<T> a;
    a.shape = v.shape;
    a.data.resize(v.numel);
    bool ok = true;
    if (!v.fortran || v.shape.size() < 2) {
      for (std::size_t i = 0; i < v.numel; ++i) {
        a.data[i] = element<T>(v, i, ok);
        if (!ok) fail(m, "value at index " + std::to_string(i) + " does not fit the requested type");
      }
      return a;
    }
    // Fortran order: storage index = i0 + s0*(i1 + s1*(i2 + ...)); walk C order.
    const std::size_t nd = v.shape.size();
    std::vector<std::size_t> idx(nd, 0), stride(nd, 1);
    for (std::size_t k = 1; k < nd; ++k) stride[k] = stride[k - 1] * v.shape[k - 1];
    std::size_t f = 0;
    for (std::size_t i = 0; i < v.numel; ++i) {
      a.data[i] = element<T>(v, f, ok);
      if (!ok) fail(m, "value at index " + std::to_string(f) + " does not fit the requested type");
      for (std::size_t k = nd; k-- > 0;) {
        if (++idx[k] < v.shape[k]) {
          f += stride[k];
          break;
        }
        f -= (idx[k] - 1) * stride[k];
        idx[k] = 0;
      }
    }
    return a;
  }

  sae::detail::MappedFile file_;
  std::vector<Member> members_;
};

/// Builds an .npz archive and writes it atomically. add() copies the data, so the caller's
/// buffers may go away right after the call. Names must be non-empty, unique and free of
/// NUL and '/'; each becomes the member "NAME.npy" holding a C-order '<f4', '<i4' or '<i8'
/// array of the given shape (product(shape) must equal the data size; an empty shape is a
/// scalar). add() throws std::invalid_argument for a bad name or size.
class NpzWriter {
 public:
  void add(std::string name, std::vector<std::size_t> shape, std::span<const float> data) {
    add_bytes(std::move(name), std::move(shape), "<f4", as_bytes(data), data.size());
  }
  void add(std::string name, std::vector<std::size_t> shape, std::span<const std::int32_t> data) {
    add_bytes(std::move(name), std::move(shape), "<i4", as_bytes(data), data.size());
  }
  void add(std::string name, std::vector<std::size_t> shape, std::span<const std::int64_t> data) {
    add_bytes(std::move(name), std::move(shape), "<i8", as_bytes(data), data.size());
  }

  /// Number of arrays added.
  std::size_t size() const noexcept { return entries_.size(); }

  /// Writes the archive atomically (temporary file + fsync + rename). Members are deflated
  /// when `compress` is true and zlib is available, stored otherwise. Throws IoError
  /// "PATH: problem" (e.g. a member or the archive would exceed 4 GiB, which needs ZIP64).
  void write(const std::filesystem::path& path, bool compress = true) const {
    using namespace detail::npz;
    AtomicFile file(path);
    std::string central;
    std::size_t offset = 0;
    auto too_big = [&path](const std::string& what) {
      throw IoError(path, what + " exceeds 4 GiB (ZIP64 is not supported by this writer)");
    };
    for (const Entry& e : entries_) {
      const std::string fname = e.name + ".npy";
      const std::string npy_header = detail::npy::preamble(e.descr, e.shape);
      const std::size_t usize = npy_header.size() + e.bytes.size();
      if (usize >= 0xFFFFFFFFu) too_big("member '" + fname + "'");
      std::uint32_t crc = crc32_update(0, npy_header.data(), npy_header.size());
      crc = crc32_update(crc, e.bytes.data(), e.bytes.size());
      std::uint16_t method = 0;
      std::vector<unsigned char> packed;
#if SAE_NPZ_HAVE_ZLIB
      if (compress) {
        method = 8;
        packed = deflate_member(path, npy_header, e.bytes);
      }
#else
      (void)compress;
#endif
      const std::size_t csize = method == 8 ? packed.size() : usize;
      if (csize >= 0xFFFFFFFFu) too_big("member '" + fname + "'");
      if (offset >= 0xFFFFFFFFu) too_big("archive");
      const std::uint16_t flags = is_ascii(fname) ? 0 : 0x0800;  // bit 11: UTF-8 name
      std::string local;
      put32(local, sig_local);
      put16(local, 20);  // version needed: 2.0 (deflate)
      put16(local, flags);
      put16(local, method);
      put16(local, 0);       // time 00:00:00
      put16(local, 0x0021);  // date 1980-01-01 (fixed, so output is reproducible)
      put32(local, crc);
      put32(local, static_cast<std::uint32_t>(csize));
      put32(local, static_cast<std::uint32_t>(usize));
      put16(local, static_cast<std::uint32_t>(fname.size()));
      put16(local, 0);
      local += fname;

      put32(central, sig_central);
      put16(central, 0x0314);  // made by: UNIX, 2.0
      put16(central, 20);
      put16(central, flags);
      put16(central, method);
      put16(central, 0);
      put16(central, 0x0021);
      put32(central, crc);
      put32(central, static_cast<std::uint32_t>(csize));
      put32(central, static_cast<std::uint32_t>(usize));
      put16(central, static_cast<std::uint32_t>(fname.size()));
      put16(central, 0);            // extra
      put16(central, 0);            // comment
      put16(central, 0);            // disk
      put16(central, 0);            // internal attributes
      put32(central, 0644u << 16);  // external attributes: -rw-r--r--
      put32(central, static_cast<std::uint32_t>(offset));
      central += fname;

      file.write(local.data(), local.size());
      if (method == 8) {
        file.write(packed.data(), packed.size());
      } else {
        file.write(npy_header.data(), npy_header.size());
        file.write(e.bytes.data(), e.bytes.size());
      }
      offset += local.size() + csize;
    }
    if (offset >= 0xFFFFFFFFu || central.size() >= 0xFFFFFFFFu - offset) too_big("archive");
    if (entries_.size() >= 0xFFFF) throw IoError(path, "too many arrays for a zip without ZIP64");
    std::string end;
    put32(end, sig_end);
    put16(end, 0);
    put16(end, 0);
    put16(end, static_cast<std::uint32_t>(entries_.size()));
    put16(end, static_cast<std::uint32_t>(entries_.size()));
    put32(end, static_cast<std::uint32_t>(central.size()));
    put32(end, static_cast<std::uint32_t>(offset));
    put16(end, 0);
    file.write(central.data(), central.size());
    file.write(end.data(), end.size());
    file.commit();
  }

 private:
  struct Entry {
    std::string name;
    std::vector<std::size_t> shape;
    std::string descr;
    std::vector<std::byte> bytes;
  };

  template <class T>
  static std::span<const std::byte> as_bytes(std::span<const T> s) {
    return std::as_bytes(s);
  }

  static bool is_ascii(const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  }

  void add_bytes(std::string name, std::vector<std::size_t> shape, const char* descr, std::span<const std::byte> bytes,
                 std::size_t count) {
    if (name.empty()) throw std::invalid_argument("npz: array name is empty");
    if (name.find('\0') != std::string::npos || name.find('/') != std::string::npos)
      throw std::invalid_argument("npz: array name '" + detail::npz::printable(name) + "' contains NUL or '/'");
    for (const Entry& e : entries_)
      if (e.name == name) throw std::invalid_argument("npz: duplicate array name '" + name + "'");
    std::size_t numel = 1;
    for (std::size_t d : shape)
      if (!detail::npz::checked_mul(numel, d, numel))
        throw std::invalid_argument("npz: array '" + name + "': shape overflows");
    if (numel != count)
      throw std::invalid_argument("npz: array '" + name + "': shape " + detail::npy::format_shape(shape) + " has " +
                                  std::to_string(numel) + " elements but " + std::to_string(count) + " were given");
    entries_.push_back(Entry{std::move(name), std::move(shape), descr, {bytes.begin(), bytes.end()}});
  }

#if SAE_NPZ_HAVE_ZLIB
  static std::vector<unsigned char> deflate_member(const std::filesystem::path& path, const std::string& head,
                                                   const std::vector<std::byte>& body) {
    z_stream zs{};
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
      throw IoError(path, "cannot initialise zlib deflate");
    std::vector<unsigned char> out;
    unsigned char buf[1 << 16];
    auto pump = [&](const void* data, std::size_t n, bool last) {
      const auto* p = static_cast<const Bytef*>(data);
      for (;;) {
        const auto chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
        zs.next_in = const_cast<Bytef*>(p);
        zs.avail_in = chunk;
        const bool final_chunk = last && chunk == n;
        int rc = Z_OK;
        do {
          zs.next_out = buf;
          zs.avail_out = sizeof(buf);
          rc = deflate(&zs, final_chunk ? Z_FINISH : Z_NO_FLUSH);
          if (rc == Z_STREAM_ERROR) {
            deflateEnd(&zs);
            throw IoError(path, "zlib deflate failed");
          }
          out.insert(out.end(), buf, buf + (sizeof(buf) - zs.avail_out));
        } while (zs.avail_out == 0 || (final_chunk && rc != Z_STREAM_END));
        p += chunk;
        n -= chunk;
        if (n == 0) break;
      }
    };
    pump(head.data(), head.size(), false);
    pump(body.data(), body.size(), true);
    deflateEnd(&zs);
    return out;
  }
#endif

  std::vector<Entry> entries_;
};

}  // namespace sae::io
