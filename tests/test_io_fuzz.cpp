// Fuzz-style robustness test of every reader: valid files of each format (npy, npz stored and
// deflate, safetensors, SAELens directory, sparsify directory, Gemma Scope npz and Gemma
// Scope 2 safetensors) are mutated (truncated at every offset, bytes flipped, multi-byte
// fields overwritten with boundary values, JSON/npy header tokens replaced) and loaded.
//
// Contract checked for every case: loading either succeeds or throws sae::io::IoError with a
// one-line message that starts with the path of a file of the SAE. Nothing else may escape
// (std::invalid_argument from configuration validation is converted to IoError by
// sae::load_sae), and under scripts/test.sh's ASan/UBSan build nothing may crash, overflow or
// leak. The case count is printed.
#include "helpers.hpp"

#include <sae/io/npz.hpp>

#include <chrono>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>

namespace fs = std::filesystem;
using sae::io::IoError;

namespace {

using Bytes = std::vector<unsigned char>;

using sae_test::slurp;
using sae_test::spit;

/// Where a text header lives inside a file, so token replacements can fix up its length.
enum class TextKind { None, Json, SafetensorsHeader, NpyHeader };

struct Target {
  std::string name;
  fs::path file;               ///< the file that is mutated
  std::function<void()> load;  ///< loads it (through the public API)
  TextKind text = TextKind::None;
  bool zip = false;
  Bytes original = {};
};

struct Stats {
  std::size_t cases = 0, loaded = 0, rejected = 0;
  std::vector<std::string> failures;
};

void run_case(const Target& t, const Bytes& bytes, const std::string& what, Stats& st) {
  spit(t.file, bytes);
  ++st.cases;
  try {
    t.load();
    ++st.loaded;
  } catch (const IoError& e) {
    const std::string msg = e.what();
    if (msg.find('\n') != std::string::npos || msg.empty() || msg.find(": ") == std::string::npos)
      st.failures.push_back(t.name + " " + what + ": malformed message: " + msg);
    ++st.rejected;
  } catch (const std::exception& e) {
    st.failures.push_back(t.name + " " + what + ": unexpected exception: " + e.what());
  }
}

/// Replaces the bytes [at, at+len) of the text region with `repl` and fixes the region's
/// length field.
Bytes replace_text(const Target& t, std::size_t at, std::size_t len, const std::string& repl) {
  Bytes b = t.original;
  b.erase(b.begin() + std::ptrdiff_t(at), b.begin() + std::ptrdiff_t(at + len));
  b.insert(b.begin() + std::ptrdiff_t(at), repl.begin(), repl.end());
  const std::ptrdiff_t delta = std::ptrdiff_t(repl.size()) - std::ptrdiff_t(len);
  if (t.text == TextKind::SafetensorsHeader) {
    std::uint64_t n = 0;
    std::memcpy(&n, t.original.data(), 8);
    n = std::uint64_t(std::int64_t(n) + delta);
    std::memcpy(b.data(), &n, 8);
  } else if (t.text == TextKind::NpyHeader) {
    const std::uint32_t n = std::uint32_t(t.original[8] | (t.original[9] << 8)) + std::uint32_t(delta);
    b[8] = n & 0xFF;
    b[9] = (n >> 8) & 0xFF;
  }
  return b;
}

std::pair<std::size_t, std::size_t> text_region(const Target& t) {
  switch (t.text) {
    case TextKind::Json:
      return {0, t.original.size()};
    case TextKind::SafetensorsHeader: {
      std::uint64_t n = 0;
      std::memcpy(&n, t.original.data(), 8);
      return {8, std::size_t(n)};
    }
    case TextKind::NpyHeader:
      return {10, std::size_t(t.original[8] | (t.original[9] << 8))};
    default:
      return {0, 0};
  }
}

void fuzz_target(const Target& t, std::mt19937_64& rng, Stats& st) {
  const Bytes& o = t.original;
  const std::size_t n = o.size();
  auto pick = [&rng](std::size_t k) { return std::size_t(rng() % k); };

  // 1. Truncation at every offset (all files here are small).
  for (std::size_t len = 0; len < n; ++len)
    run_case(t, Bytes(o.begin(), o.begin() + std::ptrdiff_t(len)), "truncate " + std::to_string(len), st);
  // Trailing garbage.
  {
    Bytes b = o;
    b.insert(b.end(), 13, 0x5A);
    run_case(t, b, "append", st);
  }
  // 2. Single-byte mutations.
  for (int i = 0; i < 1500; ++i) {
    Bytes b = o;
    const std::size_t at = pick(n);
    switch (pick(4)) {
      case 0:
        b[at] ^= static_cast<unsigned char>(1u << pick(8));
        break;
      case 1:
        b[at] = 0x00;
        break;
      case 2:
        b[at] = 0xFF;
        break;
      default:
        b[at] = static_cast<unsigned char>(rng());
        break;
    }
    if (pick(4) == 0) b[pick(n)] = static_cast<unsigned char>(rng());  // sometimes a second byte
    run_case(t, b, "byte@" + std::to_string(at), st);
  }
  // 3. Multi-byte fields overwritten with boundary values.
  const std::uint64_t interesting[] = {0,
                                       1,
                                       2,
                                       7,
                                       8,
                                       0x7F,
                                       0x80,
                                       0xFF,
                                       0xFFFF,
                                       0x10000,
                                       0x7FFFFFFF,
                                       0x80000000,
                                       0xFFFFFFFF,
                                       0x100000000ULL,
                                       0x7FFFFFFFFFFFFFFFULL,
                                       0xFFFFFFFFFFFFFFFFULL,
                                       n,
                                       n - 1,
                                       n + 1,
                                       n / 2};
  for (int i = 0; i < 500; ++i) {
    Bytes b = o;
    const std::size_t width = std::size_t(1) << pick(4);  // 1, 2, 4, 8
    if (width > n) continue;
    const std::size_t at = pick(n - width + 1);
    const std::uint64_t v = pick(3) == 0 ? rng() : interesting[pick(std::size(interesting))];
    for (std::size_t k = 0; k < width; ++k) b[at + k] = static_cast<unsigned char>((v >> (8 * k)) & 0xFF);
    run_case(t, b, "field@" + std::to_string(at), st);
  }
  // 4. ZIP structure fields (central directory and end record) set to boundary values.
  if (t.zip && n >= 22) {
    const std::size_t eocd = n - 22;
    const std::size_t cd =
        o[eocd + 16] | (o[eocd + 17] << 8) | (o[eocd + 18] << 16) | (std::size_t(o[eocd + 19]) << 24);
    const std::size_t cd_fields[][2] = {{8, 2},  {10, 2}, {16, 4}, {20, 4}, {24, 4},
                                        {28, 2}, {30, 2}, {32, 2}, {34, 2}, {42, 4}};
    const std::size_t end_fields[][2] = {{4, 2}, {6, 2}, {8, 2}, {10, 2}, {12, 4}, {16, 4}, {20, 2}};
    for (int i = 0; i < 300; ++i) {
      Bytes b = o;
      std::size_t at = 0, width = 0;
      if (pick(2) == 0) {
        const auto& f = end_fields[pick(std::size(end_fields))];
        at = eocd + f[0];
        width = f[1];
      } else {
        // Some central entry: walk a random number of entries.
        std::size_t pos = cd;
        const std::size_t skip = pick(5);
        for (std::size_t s = 0; s < skip && pos + 46 <= eocd; ++s)
          pos += 46 + (o[pos + 28] | (o[pos + 29] << 8)) + (o[pos + 30] | (o[pos + 31] << 8)) +
                 (o[pos + 32] | (o[pos + 33] << 8));
        if (pos + 46 > eocd) pos = cd;
        const auto& f = cd_fields[pick(std::size(cd_fields))];
        at = pos + f[0];
        width = f[1];
      }
      const std::uint64_t v = pick(3) == 0 ? rng() : interesting[pick(std::size(interesting))];
      for (std::size_t k = 0; k < width; ++k) b[at + k] = static_cast<unsigned char>((v >> (8 * k)) & 0xFF);
      run_case(t, b, "zipfield@" + std::to_string(at), st);
    }
  }
  // 5. Header token replacements (numbers, strings, structure) with length fix-up.
  if (t.text != TextKind::None) {
    const auto [start, len] = text_region(t);
    const std::string text(o.begin() + std::ptrdiff_t(start), o.begin() + std::ptrdiff_t(start + len));
    std::vector<std::pair<std::size_t, std::size_t>> numbers, strings;
    for (std::size_t i = 0; i < text.size();) {
      if (std::isdigit(static_cast<unsigned char>(text[i]))) {
        std::size_t j = i;
        while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
        numbers.emplace_back(i, j - i);
        i = j;
      } else if (text[i] == '"' || text[i] == '\'') {
        const std::size_t j = text.find(text[i], i + 1);
        if (j == std::string::npos) break;
        strings.emplace_back(i, j - i + 1);
        i = j + 1;
      } else {
        ++i;
      }
    }
    const char* num_repl[] = {"0",
                              "1",
                              "-1",
                              "18446744073709551615",
                              "18446744073709551616",
                              "9223372036854775807",
                              "-9223372036854775808",
                              "4294967296",
                              "4294967295",
                              "1e308",
                              "3.5",
                              "null",
                              "\"7\"",
                              "[]",
                              "{}",
                              "true",
                              "99999999999999999999999999",
                              "65536",
                              "2147483648"};
    const char* str_repl[] = {"\"F16\"",          "\"BF16\"",     "\"F64\"",     "\"I64\"",       "\"BOOL\"",  "\"U8\"",
                              "\"__metadata__\"", "\"\xff\xfe\"", "\"\\ud800\"", "\"\"",          "1",         "null",
                              "[[[[[[[[]]]]]]]]", "'<f2'",        "'<f8'",       "'>f4'",         "'|b1'",     "True",
                              "\"jumprelu\"",     "\"standard\"", "\"topk\"",    "\"batchtopk\"", "\"gated\"", "\"k\"",
                              "\"d_in\"",         "\"d_sae\"",    "\"shape\"",   "\"dtype\""};
    for (int i = 0; i < 250; ++i) {
      const int kind = int(pick(5));
      Bytes b;
      if (kind <= 1 && !numbers.empty()) {
        const auto [at, l] = numbers[pick(numbers.size())];
        b = replace_text(t, start + at, l, num_repl[pick(std::size(num_repl))]);
      } else if (kind <= 3 && !strings.empty()) {
        const auto [at, l] = strings[pick(strings.size())];
        b = replace_text(t, start + at, l, str_repl[pick(std::size(str_repl))]);
      } else {
        // Structural damage: delete or duplicate a span, or nest deeply.
        const std::size_t at = pick(len + 1);
        const std::size_t l = std::min<std::size_t>(pick(12), len - at);
        switch (pick(3)) {
          case 0:
            b = replace_text(t, start + at, l, "");
            break;
          case 1:
            b = replace_text(t, start + at, 0, text.substr(at, l));
            break;
          default:
            b = replace_text(t, start + at, 0, std::string(200, '['));
            break;
        }
      }
      run_case(t, b, "token#" + std::to_string(i), st);
    }
  }
  spit(t.file, t.original);
}

/// Scratch directory for the fuzz files: in /dev/shm when it exists (rewriting a file 20,000
/// times on a disk file system costs milliseconds each because truncation forces a flush),
/// else in the system temp directory. Removed on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    std::error_code ec;
    fs::path base = fs::temp_directory_path();
    if (fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0) base = "/dev/shm";
    path_ = base / ("libsae_fuzz_" + std::to_string(::getpid()));
    fs::remove_all(path_, ec);
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

sae::Parameters<float> params(sae::Index d, sae::Index m, bool threshold, std::uint64_t seed) {
  sae::Parameters<float> p = sae_test::random_params<float>(d, m, seed);
  if (threshold) p.threshold = sae_test::random_matrix<float>(m, 1, seed + 5, 0.1).cwiseAbs();
  return p;
}

}  // namespace

TEST_CASE("fuzz: mutated files of every format load or throw IoError, never crash", "[io][fuzz]") {
  const auto t0 = std::chrono::steady_clock::now();
  ScratchDir tmp;
  const sae::Index d = 3, m = 4;
  std::vector<Target> targets;

  // npy (float32 and float16).
  {
    std::vector<float> x(12);
    for (int i = 0; i < 12; ++i) x[std::size_t(i)] = float(i) - 5.5f;
    const std::size_t shape[2] = {4, 3};
    sae::io::save_npy(tmp / "x.npy", x.data(), shape);
    std::vector<std::uint16_t> h(12, 0x3C00);
    sae::io::save_npy_f16(tmp / "h.npy", h.data(), shape);
    for (const char* f : {"x.npy", "h.npy"}) {
      const fs::path p = tmp / f;
      targets.push_back({std::string("npy ") + f, p,
                         [p] {
                           const auto r = sae::io::NpyReader::open(p);
                           std::vector<float> out(r.numel());
                           r.copy_rows_f32(0, r.rows(), out.data());
                         },
                         TextKind::NpyHeader});
    }
  }
  // Raw safetensors with metadata and mixed dtypes.
  {
    const std::vector<float> a{1, 2, 3, 4, 5, 6};
    sae::io::SafetensorsWriter w;
    w.add("a", {2, 3}, a);
    w.add("b", {3}, std::span<const float>(a.data(), 3), sae::io::StDtype::BF16);
    w.add("c", {}, std::span<const float>(a.data(), 1), sae::io::StDtype::F64);
    w.metadata()["format"] = "pt";
    w.write(tmp / "t.safetensors");
    const fs::path p = tmp / "t.safetensors";
    targets.push_back({"safetensors", p,
                       [p] {
                         const auto r = sae::io::SafetensorsReader::open(p);
                         for (const auto& [name, info] : r.tensors())
                           if (sae::io::st_dtype_is_float(info.dtype)) (void)r.read_f32(name);
                       },
                       TextKind::SafetensorsHeader});
  }
  // Gemma Scope params.npz, stored and deflate.
  const auto pj = params(d, m, true, 7);
  for (bool compress : {false, true}) {
    const fs::path p = tmp / (compress ? "gc.npz" : "gs.npz");
    const sae::Mat<float> We_t = pj.W_enc.transpose();
    sae::io::NpzWriter w;
    w.add("W_enc", {std::size_t(d), std::size_t(m)}, std::span<const float>(We_t.data(), std::size_t(d * m)));
    w.add("W_dec", {std::size_t(m), std::size_t(d)}, std::span<const float>(pj.W_dec.data(), std::size_t(d * m)));
    w.add("b_enc", {std::size_t(m)}, std::span<const float>(pj.b_enc.data(), std::size_t(m)));
    w.add("b_dec", {std::size_t(d)}, std::span<const float>(pj.b_dec.data(), std::size_t(d)));
    w.add("threshold", {std::size_t(m)}, std::span<const float>(pj.threshold.data(), std::size_t(m)));
    w.write(p, compress);
    targets.push_back({compress ? "gemma npz deflate" : "gemma npz stored", p, [p] { (void)sae::load_sae(p); },
                       TextKind::None, true});
    // Also the generic reader on the same bytes, every member as float and as int.
    targets.push_back({compress ? "npz deflate" : "npz stored", p,
                       [p] {
                         const auto r = sae::io::NpzReader::open(p);
                         for (const auto& name : r.members()) {
                           try {
                             (void)r.read_f32(name);
                           } catch (const IoError&) {
                             (void)r.read_i64(name);
                           }
                         }
                       },
                       TextKind::None, true});
  }
  // Gemma Scope 2 params.safetensors.
  {
    const fs::path dir = tmp / "g2";
    fs::create_directories(dir);
    const sae::Mat<float> We_t = pj.W_enc.transpose();
    sae::io::SafetensorsWriter w;
    w.add("w_enc", {d, m}, std::span<const float>(We_t.data(), std::size_t(d * m)), sae::io::StDtype::F16);
    w.add("w_dec", {m, d}, std::span<const float>(pj.W_dec.data(), std::size_t(d * m)));
    w.add("b_enc", {m}, std::span<const float>(pj.b_enc.data(), std::size_t(m)));
    w.add("b_dec", {d}, std::span<const float>(pj.b_dec.data(), std::size_t(d)), sae::io::StDtype::BF16);
    w.add("threshold", {m}, std::span<const float>(pj.threshold.data(), std::size_t(m)));
    w.write(dir / "params.safetensors");
    targets.push_back({"gemma scope 2", dir / "params.safetensors", [dir] { (void)sae::load_sae(dir); },
                       TextKind::SafetensorsHeader});
  }
  // SAELens directory (JumpReLU, BF16 weights): mutate weights and cfg.json.
  {
    sae::SaeConfig cfg;
    cfg.d_in = d;
    cfg.d_sae = m;
    cfg.architecture = std::string(sae::JumpReLUVariant::name);
    cfg.metadata = {{"hook_name", "blocks.0.hook_resid_post"}};
    const fs::path dir = tmp / "saelens";
    sae::io::save_saelens(dir, cfg, pj, sae::io::StDtype::BF16);
    targets.push_back({"saelens weights", dir / "sae_weights.safetensors", [dir] { (void)sae::load_sae(dir); },
                       TextKind::SafetensorsHeader});
    targets.push_back({"saelens cfg.json", dir / "cfg.json", [dir] { (void)sae::load_sae(dir); }, TextKind::Json});
  }
  // sparsify directory (TopK).
  {
    const auto p = params(d, m, false, 9);
    const fs::path dir = tmp / "sparsify";
    fs::create_directories(dir);
    sae::io::SafetensorsWriter w;
    w.add("encoder.weight", {m, d}, std::span<const float>(p.W_enc.data(), std::size_t(d * m)));
    w.add("encoder.bias", {m}, std::span<const float>(p.b_enc.data(), std::size_t(m)));
    w.add("W_dec", {m, d}, std::span<const float>(p.W_dec.data(), std::size_t(d * m)));
    w.add("b_dec", {d}, std::span<const float>(p.b_dec.data(), std::size_t(d)));
    w.write(dir / "sae.safetensors");
    std::ofstream(dir / "cfg.json") << R"({"activation": "topk", "expansion_factor": 1, "normalize_decoder": true, )"
                                       R"("num_latents": 4, "k": 2, "multi_topk": false, "skip_connection": false, )"
                                       R"("transcode": false, "d_in": 3})";
    targets.push_back({"sparsify weights", dir / "sae.safetensors", [dir] { (void)sae::load_sae(dir); },
                       TextKind::SafetensorsHeader});
    targets.push_back({"sparsify cfg.json", dir / "cfg.json", [dir] { (void)sae::load_sae(dir); }, TextKind::Json});
  }

  Stats st;
  std::mt19937_64 rng(20240606);
  for (Target& t : targets) {
    t.original = slurp(t.file);
    REQUIRE(!t.original.empty());
    t.load();  // the unmutated file must load
    const std::size_t before = st.cases;
    fuzz_target(t, rng, st);
    std::cerr << "fuzz: " << t.name << ": " << (st.cases - before) << " cases (" << t.original.size() << " bytes)\n";
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "fuzz: " << st.cases << " cases across " << targets.size() << " targets: " << st.loaded << " loaded, "
            << st.rejected << " rejected with IoError, " << st.failures.size() << " failures, " << secs << " s"
            << std::endl;
  for (std::size_t i = 0; i < st.failures.size() && i < 20; ++i) UNSCOPED_INFO(st.failures[i]);
  REQUIRE(st.failures.empty());
  REQUIRE(st.cases >= 10000);
}
