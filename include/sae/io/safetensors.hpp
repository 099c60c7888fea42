/// @file sae/io/safetensors.hpp
/// safetensors reader (memory-mapped, fully validated) and atomic writer.
///
/// Format (the safetensors specification):
///   bytes 0-7   N, little-endian u64: the header size (at most 100,000,000 here)
///   N bytes     UTF-8 JSON object, starting with '{', possibly right-padded with spaces:
///               { "NAME": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [b, e]},
///                 ..., "__metadata__": {"key": "value", ...} (optional, strings only) }
///   rest        the data buffer; a tensor's bytes are buffer[b, e), little-endian, C order.
/// The tensors must tile the buffer exactly: sorted by begin offset they are contiguous from
/// 0 to the buffer size, with no overlap and no hole. Writers here pad the header with spaces
/// so that 8 + N is a multiple of 8.
///
/// Layout note (DESIGN.md section 3): a C-order [rows, cols] tensor read into a column-major
/// Eigen matrix of cols x rows needs no transpose.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "sae/detail/checked.hpp"
#include "sae/detail/half.hpp"
#include "sae/detail/json_guard.hpp"
#include "sae/detail/mapped_file.hpp"
#include "sae/io/atomic_file.hpp"
#include "sae/io/error.hpp"

namespace sae::io {

static_assert(std::endian::native == std::endian::little,
              "sae::io assumes a little-endian host (safetensors data is little-endian)");

/// Element types this library understands (the safetensors names are the enumerator names).
enum class StDtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

/// "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL".
constexpr const char* st_dtype_name(StDtype t) noexcept {
  switch (t) {
    case StDtype::F64:
      return "F64";
    case StDtype::F32:
      return "F32";
    case StDtype::F16:
      return "F16";
    case StDtype::BF16:
      return "BF16";
    case StDtype::I64:
      return "I64";
    case StDtype::I32:
      return "I32";
    case StDtype::I16:
      return "I16";
    case StDtype::I8:
      return "I8";
    case StDtype::U8:
      return "U8";
    case StDtype::BOOL:
      return "BOOL";
  }
  return "?";
}

/// Inverse of st_dtype_name (exact, case-sensitive); std::nullopt for any other name.
inline std::optional<StDtype> st_dtype_from_name(std::string_view name) noexcept {
  for (StDtype t : {StDtype::F64, StDtype::F32, StDtype::F16, StDtype::BF16, StDtype::I64, StDtype::I32, StDtype::I16,
                    StDtype::I8, StDtype::U8, StDtype::BOOL})
    if (name == st_dtype_name(t)) return t;
  return std::nullopt;
}

/// Bytes per element.
constexpr std::size_t st_dtype_size(StDtype t) noexcept {
  switch (t) {
    case StDtype::F64:
    case StDtype::I64:
      return 8;
    case StDtype::F32:
    case StDtype::I32:
      return 4;
    case StDtype::F16:
    case StDtype::BF16:
    case StDtype::I16:
      return 2;
    case StDtype::I8:
    case StDtype::U8:
    case StDtype::BOOL:
      return 1;
  }
  return 0;
}

/// True for F64, F32, F16, BF16.
constexpr bool st_dtype_is_float(StDtype t) noexcept {
  return t == StDtype::F64 || t == StDtype::F32 || t == StDtype::F16 || t == StDtype::BF16;
}

/// One tensor's header entry. begin/end are byte offsets into the data buffer (which starts
/// right after the header), end - begin == numel() * st_dtype_size(dtype).
struct TensorInfo {
  StDtype dtype = StDtype::F32;
  std::vector<std::int64_t> shape;  ///< C order; empty for a scalar
  std::size_t begin = 0;
  std::size_t end = 0;

  /// Product of the dims (1 for a scalar). Validated not to overflow when read from a file.
  std::size_t numel() const noexcept {
    std::size_t n = 1;
    for (std::int64_t d : shape) n *= static_cast<std::size_t>(d);
    return n;
  }
};

namespace detail::st {

inline constexpr std::uint64_t max_header_size = 100'000'000;

using sae::detail::checked_mul;

/// Escapes control and non-ASCII bytes as \xNN and shortens long text, so that messages stay
/// one printable line.
inline std::string printable(std::string_view v, std::size_t max_len = 200) {
  std::string out;
  static constexpr char hex[] = "0123456789abcdef";
  for (unsigned char c : v.substr(0, max_len)) {
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (v.size() > max_len) out += "...";
  return out;
}

template <class T>
T load(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace detail::st

/// Memory-mapped safetensors reader. open() validates the whole header and the buffer tiling,
/// so accessors only fail for a missing name or an impossible conversion.
/// Movable, not copyable.
class SafetensorsReader {
 public:
  /// Maps and validates `path`. Every problem is an IoError "PATH: problem" (one line): file
  /// shorter than 8 bytes; header length beyond the file or above 100,000,000; header not
  /// starting with '{', nested deeper than 64, not valid JSON (including invalid UTF-8),
  /// not an object, or with duplicate keys; an entry that is not an object or lacks a
  /// string "dtype", an integer array "shape", or a two-integer "data_offsets"; unknown
  /// dtype; negative dims or element/byte count overflow; end < begin; end beyond the
  /// buffer; end - begin != numel * dtype size; overlapping tensors, holes, or unused
  /// bytes at the end of the buffer; "__metadata__" not an object of strings.
  static SafetensorsReader open(const std::filesystem::path& path) {
    SafetensorsReader r;
    r.file_ = sae::detail::MappedFile(path);
    r.parse();
    return r;
  }

  /// All tensors, by name.
  const std::map<std::string, TensorInfo>& tensors() const noexcept { return tensors_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  /// The tensor's entry; IoError "PATH: no tensor 'NAME' (has: a, b, c)" if absent.
  const TensorInfo& info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      std::string have;
      std::size_t shown = 0;
      for (const auto& kv : tensors_) {
        if (shown == 30) {
          have += ", ...";
          break;
        }
        if (shown++) have += ", ";
        have += detail::st::printable(kv.first, 80);
      }
      throw IoError(path(), "no tensor '" + detail::st::printable(name, 80) + "' (has: " + have + ")");
    }
    return it->second;
  }

  /// The "__metadata__" map (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// The tensor's raw little-endian bytes inside the map (no alignment guarantee).
  std::span<const std::byte> raw(const std::string& name) const {
    const TensorInfo& t = info(name);
    return {buffer_ + t.begin, t.end - t.begin};
  }

  /// The tensor as floats, C order, converted from F64/F32/F16/BF16 (F64 is rounded).
  /// IoError for integer and bool dtypes.
  std::vector<float> read_f32(const std::string& name) const {
    const TensorInfo& t = info(name);
    std::vector<float> out(t.numel());
    read_into<float>(name, out.data(), out.size());
    return out;
  }

  /// Converts the tensor into out[0, count), C order. count must equal numel().
  /// A floating-point Scalar accepts F64/F32/F16/BF16 tensors; an integral Scalar accepts
  /// I64/I32/I16/I8/U8/BOOL tensors, every value range-checked (bool: nonzero is true).
  /// Anything else is an IoError naming the tensor.
  template <class Scalar>
  void read_into(const std::string& name, Scalar* out, std::size_t count) const {
    static_assert(std::is_arithmetic_v<Scalar>, "read_into needs an arithmetic Scalar");
    const TensorInfo& t = info(name);
    const std::string tn = "tensor '" + detail::st::printable(name, 80) + "'";
    if (count != t.numel())
      throw IoError(path(), tn + " has " + std::to_string(t.numel()) + " elements, not " + std::to_string(count));
    const std::byte* p = buffer_ + t.begin;
    const std::size_t n = count;
    if constexpr (std::is_floating_point_v<Scalar>) {
      switch (t.dtype) {
        case StDtype::F32:
          if constexpr (std::is_same_v<Scalar, float>) {
            if (n) std::memcpy(out, p, n * sizeof(float));
          } else {
            for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Scalar>(detail::st::load<float>(p + 4 * i));
          }
          return;
        case StDtype::F64:
          if constexpr (std::is_same_v<Scalar, double>) {
            if (n) std::memcpy(out, p, n * sizeof(double));
          } else {
            for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Scalar>(detail::st::load<double>(p + 8 * i));
          }
          return;
        case StDtype::F16:
          for (std::size_t i = 0; i < n; ++i)
            out[i] = static_cast<Scalar>(sae::detail::half_bits_to_float(detail::st::load<std::uint16_t>(p + 2 * i)));
          return;
        case StDtype::BF16:
          for (std::size_t i = 0; i < n; ++i)
            out[i] = static_cast<Scalar>(sae::detail::bf16_bits_to_float(detail::st::load<std::uint16_t>(p + 2 * i)));
          return;
        default:
          throw IoError(path(), tn + " has dtype " + st_dtype_name(t.dtype) + ", not a floating-point type");
      }
    } else {
      if (st_dtype_is_float(t.dtype))
        throw IoError(path(),
                      tn + " has floating-point dtype " + st_dtype_name(t.dtype) + ", cannot read it as integers");
      for (std::size_t i = 0; i < n; ++i) {
        std::int64_t v = 0;
        switch (t.dtype) {
          case StDtype::I64:
            v = detail::st::load<std::int64_t>(p + 8 * i);
            break;
          case StDtype::I32:
            v = detail::st::load<std::int32_t>(p + 4 * i);
            break;
          case StDtype::I16:
            v = detail::st::load<std::int16_t>(p + 2 * i);
            break;
          case StDtype::I8:
            v = detail::st::load<std::int8_t>(p + i);
            break;
          case StDtype::U8:
          case StDtype::BOOL:
            v = detail::st::load<std::uint8_t>(p + i);
            break;
          default:
            break;
        }
        if constexpr (std::is_same_v<Scalar, bool>) {
          out[i] = v != 0;
        } else {
          if (!std::in_range<Scalar>(v))
            throw IoError(path(), tn + " value " + std::to_string(v) + " at index " + std::to_string(i) +
                                      " does not fit the requested type");
          out[i] = static_cast<Scalar>(v);
        }
      }
    }
  }

  const std::filesystem::path& path() const noexcept { return file_.path(); }
  /// Byte offset of the data buffer in the file (8 + header size).
  std::size_t data_offset() const noexcept { return data_offset_; }

 private:
  SafetensorsReader() = default;

  [[noreturn]] void fail(const std::string& problem) const { throw IoError(path(), problem); }

  void parse() {
    using nlohmann::json;
    const std::byte* base = file_.data();
    const std::size_t size = file_.size();
    if (size < 8) fail("not a safetensors file: too short (" + std::to_string(size) + " bytes, need at least 8)");
    const auto n = detail::st::load<std::uint64_t>(base);
    if (n > detail::st::max_header_size)
      fail("header length " + std::to_string(n) + " exceeds the limit of " +
           std::to_string(detail::st::max_header_size) + " bytes");
    if (n > size - 8)
      fail("header length " + std::to_string(n) + " is beyond the end of the file (" + std::to_string(size) +
           " bytes)");
    const std::string_view text(reinterpret_cast<const char*>(base + 8), static_cast<std::size_t>(n));
    if (text.empty() || text.front() != '{') fail("header does not start with '{'");
    json root;
    // Depth pre-scan, then a parse that rejects duplicate keys (json_guard.hpp).
    if (const std::string problem = sae::detail::parse_untrusted_json(text, root); !problem.empty())
      fail("header: " + problem);
    if (!root.is_object()) fail("header is not a JSON object");

    data_offset_ = 8 + static_cast<std::size_t>(n);
    buffer_ = base + data_offset_;
    const std::size_t buffer_size = size - data_offset_;

    for (const auto& [name, entry] : root.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) fail("\"__metadata__\" is not an object");
        for (const auto& [k, v] : entry.items()) {
          if (!v.is_string()) fail("\"__metadata__\" value for '" + detail::st::printable(k, 80) + "' is not a string");
          metadata_.emplace(k, v.get<std::string>());
        }
        continue;
      }
      const std::string tn = "tensor '" + detail::st::printable(name, 80) + "'";
      if (!entry.is_object()) fail(tn + ": entry is not an object");
      auto dt = entry.find("dtype");
      if (dt == entry.end()) fail(tn + ": missing \"dtype\"");
      if (!dt->is_string()) fail(tn + ": \"dtype\" is not a string");
      auto sh = entry.find("shape");
      if (sh == entry.end()) fail(tn + ": missing \"shape\"");
      if (!sh->is_array()) fail(tn + ": \"shape\" is not an array");
      auto off = entry.find("data_offsets");
      if (off == entry.end()) fail(tn + ": missing \"data_offsets\"");
      if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
        fail(tn + ": \"data_offsets\" is not an array of two non-negative integers");

      TensorInfo info;
      const auto dtype = st_dtype_from_name(dt->get_ref<const std::string&>());
      if (!dtype) fail(tn + ": unknown dtype '" + detail::st::printable(dt->get_ref<const std::string&>(), 40) + "'");
      info.dtype = *dtype;
      std::size_t numel = 1;
      for (const auto& d : *sh) {
        if (!d.is_number_integer()) fail(tn + ": \"shape\" contains a non-integer");
        if (d.is_number_unsigned()) {
          const auto u = d.get<std::uint64_t>();
          if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
            fail(tn + ": dimension " + std::to_string(u) + " is too large");
          info.shape.push_back(static_cast<std::int64_t>(u));
        } else {
          const auto s = d.get<std::int64_t>();
          if (s < 0) fail(tn + ": negative dimension " + std::to_string(s));
          info.shape.push_back(s);
        }
        if (!detail::st::checked_mul(numel, static_cast<std::size_t>(info.shape.back()), numel))
          fail(tn + ": shape overflows the element count");
      }
      std::size_t nbytes = 0;
      if (!detail::st::checked_mul(numel, st_dtype_size(info.dtype), nbytes))
        fail(tn + ": shape overflows the byte count");
      const auto b = (*off)[0].get<std::uint64_t>();
      const auto e = (*off)[1].get<std::uint64_t>();
      if (e < b) fail(tn + ": data_offsets end " + std::to_string(e) + " is before begin " + std::to_string(b));
      if (e > buffer_size)
        fail(tn + ": data_offsets end " + std::to_string(e) + " is beyond the data buffer (" +
             std::to_string(buffer_size) + " bytes)");
      info.begin = static_cast<std::size_t>(b);
      info.end = static_cast<std::size_t>(e);
      if (info.end - info.begin != nbytes)
        fail(tn + ": data_offsets span " + std::to_string(info.end - info.begin) + " bytes but dtype " +
             st_dtype_name(info.dtype) + " and the shape need " + std::to_string(nbytes));
      tensors_.emplace(name, std::move(info));
    }

    // The tensors must tile [0, buffer_size) exactly.
    std::vector<std::pair<const std::string*, const TensorInfo*>> order;
    order.reserve(tensors_.size());
    for (const auto& kv : tensors_) order.emplace_back(&kv.first, &kv.second);
    std::sort(order.begin(), order.end(), [](const auto& x, const auto& y) {
      return std::pair(x.second->begin, x.second->end) < std::pair(y.second->begin, y.second->end);
    });
    std::size_t cursor = 0;
    const std::string* prev = nullptr;
    for (const auto& [name, t] : order) {
      if (t->begin < cursor)
        fail("tensor '" + detail::st::printable(*name, 80) + "' overlaps tensor '" + detail::st::printable(*prev, 80) +
             "' (data_offsets begin " + std::to_string(t->begin) + " < " + std::to_string(cursor) + ")");
      if (t->begin > cursor)
        fail("hole in the data buffer: bytes [" + std::to_string(cursor) + ", " + std::to_string(t->begin) +
             ") belong to no tensor");
      cursor = t->end;
      prev = name;
    }
    if (cursor != buffer_size)
      fail("hole in the data buffer: bytes [" + std::to_string(cursor) + ", " + std::to_string(buffer_size) +
           ") after the last tensor belong to no tensor");
  }

  sae::detail::MappedFile file_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  const std::byte* buffer_ = nullptr;
  std::size_t data_offset_ = 0;
};

/// Builds a safetensors file in memory-light fashion and writes it atomically.
///
/// The writer does NOT copy tensor data: add() and add_raw() keep spans, and the caller must
/// keep the data alive and unchanged until write() returns. Conversion to F16/BF16/F64 happens
/// during write() in small chunks. add()/add_raw() throw std::invalid_argument at once for a
/// duplicate or reserved name ("__metadata__"), a negative dimension, or a data size that does
/// not match the shape.
class SafetensorsWriter {
 public:
  /// Adds float data (C order, product(shape) elements) to be stored as `store_as`
  /// (F32, F16, BF16 or F64; conversions round to nearest even).
  void add(std::string name, std::vector<std::int64_t> shape, std::span<const float> data,
           StDtype store_as = StDtype::F32) {
    if (!st_dtype_is_float(store_as))
      throw std::invalid_argument("safetensors: tensor '" + name + "': cannot store floats as " +
                                  st_dtype_name(store_as));
    const std::size_t numel = check_new(name, shape);
    if (numel != data.size())
      throw std::invalid_argument("safetensors: tensor '" + name + "': shape has " + std::to_string(numel) +
                                  " elements but " + std::to_string(data.size()) + " were given");
    entries_.push_back(Entry{std::move(name), store_as, std::move(shape), data, {}, false});
  }

  /// Adds bytes already in the file's encoding (little-endian `dtype`, C order);
  /// bytes.size() must equal product(shape) * st_dtype_size(dtype).
  void add_raw(std::string name, StDtype dtype, std::vector<std::int64_t> shape, std::span<const std::byte> bytes) {
    const std::size_t numel = check_new(name, shape);
    std::size_t nbytes = 0;
    if (!detail::st::checked_mul(numel, st_dtype_size(dtype), nbytes) || nbytes != bytes.size())
      throw std::invalid_argument("safetensors: tensor '" + name + "': shape and dtype " + st_dtype_name(dtype) +
                                  " need " + std::to_string(nbytes) + " bytes but " + std::to_string(bytes.size()) +
                                  " were given");
    entries_.push_back(Entry{std::move(name), dtype, std::move(shape), {}, bytes, true});
  }

  /// The "__metadata__" string map (written only if non-empty).
  std::map<std::string, std::string>& metadata() noexcept { return metadata_; }
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// Number of tensors added.
  std::size_t size() const noexcept { return entries_.size(); }

  /// The header JSON: "__metadata__" first (if any) and the tensors in insertion order with
  /// consecutive data_offsets, padded with spaces so that 8 + N is a multiple of 8 (the data
  /// follows the 8-byte length and this text). IoError naming @p path if it cannot be encoded.
  std::string header_text(const std::filesystem::path& path) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      nlohmann::ordered_json md = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata_) md[k] = v;
      header["__metadata__"] = std::move(md);
    }
    std::size_t offset = 0;
    for (const Entry& e : entries_) {
      const std::size_t nbytes = e.nbytes();
      header[e.name] = {
          {"dtype", st_dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + nbytes}}};
      offset += nbytes;
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const nlohmann::json::exception& ex) {
      throw IoError(path, std::string("cannot encode the header (names and metadata must be UTF-8): ") +
                              detail::st::printable(ex.what()));
    }
    text.append((8 - (8 + text.size()) % 8) % 8, ' ');
    return text;
  }

  /// Writes the file atomically (see write_to for the layout). Throws IoError "PATH: problem".
  void write(const std::filesystem::path& path) const {
    AtomicFile file(path);
    write_to(file);
    file.commit();
  }

  /// Writes the whole file into @p file without committing it (the caller commits, e.g. as
  /// part of a DirectoryWriter). Throws IoError naming file.path().
  void write_to(AtomicFile& file) const {
    const std::string text = header_text(file.path());
    unsigned char len[8];
    const std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xFF);
    file.write(len, 8);
    file.write(text.data(), text.size());
    for (const Entry& e : entries_) write_data(file, e);
  }

 private:
  struct Entry {
    std::string name;
    StDtype dtype;
    std::vector<std::int64_t> shape;
    std::span<const float> floats;
    std::span<const std::byte> bytes;
    bool raw;

    std::size_t nbytes() const noexcept { return raw ? bytes.size() : floats.size() * st_dtype_size(dtype); }
  };

  std::size_t check_new(const std::string& name, const std::vector<std::int64_t>& shape) const {
    if (name == "__metadata__")
      throw std::invalid_argument("safetensors: '__metadata__' is reserved and cannot name a tensor");
    for (const Entry& e : entries_)
      if (e.name == name) throw std::invalid_argument("safetensors: duplicate tensor name '" + name + "'");
    std::size_t numel = 1;
    for (std::int64_t d : shape) {
      if (d < 0)
        throw std::invalid_argument("safetensors: tensor '" + name + "': negative dimension " + std::to_string(d));
      if (!detail::st::checked_mul(numel, static_cast<std::size_t>(d), numel))
        throw std::invalid_argument("safetensors: tensor '" + name + "': shape overflows");
    }
    return numel;
  }

  static void write_data(AtomicFile& file, const Entry& e) {
    if (e.raw) {
      file.write(e.bytes.data(), e.bytes.size());
      return;
    }
    const float* src = e.floats.data();
    const std::size_t n = e.floats.size();
    if (e.dtype == StDtype::F32) {
      file.write(src, n * sizeof(float));
      return;
    }
    constexpr std::size_t chunk = 8192;
    if (e.dtype == StDtype::F64) {
      std::vector<double> buf(std::min(n, chunk));
      for (std::size_t i = 0; i < n; i += chunk) {
        const std::size_t m = std::min(chunk, n - i);
        for (std::size_t j = 0; j < m; ++j) buf[j] = static_cast<double>(src[i + j]);
        file.write(buf.data(), m * sizeof(double));
      }
      return;
    }
    std::vector<std::uint16_t> buf(std::min(n, chunk));
    for (std::size_t i = 0; i < n; i += chunk) {
      const std::size_t m = std::min(chunk, n - i);
      if (e.dtype == StDtype::F16)
        sae::detail::float_to_half(src + i, buf.data(), m);
      else
        sae::detail::float_to_bf16(src + i, buf.data(), m);
      file.write(buf.data(), m * sizeof(std::uint16_t));
    }
  }

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace sae::io
