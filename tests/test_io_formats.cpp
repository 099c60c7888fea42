// Foreign SAE formats: Gemma Scope params.npz, Gemma Scope 2 params.safetensors, sparsify
// directories, SAELens F16/BF16 and pre-6.0 cfg.json; format detection; hostile cfg.json.
#include "helpers.hpp"

#include <sae/io/npz.hpp>

#include <fstream>

using sae::Index;
using sae::Mat;
using sae::io::IoError;
namespace fs = std::filesystem;

namespace {

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

/// Random JumpReLU parameters with a positive threshold.
sae::Parameters<float> jump_params(Index d, Index m, std::uint64_t seed) {
  sae::Parameters<float> p = sae_test::random_params<float>(d, m, seed);
  p.threshold = sae_test::random_matrix<float>(m, 1, seed + 9, 0.1).cwiseAbs();
  return p;
}

/// Writes Gemma Scope tensors (C order) with the given key case.
template <class Add>
void add_gemma_tensors(const sae::Parameters<float>& p, bool lower, Add&& add) {
  const Index d = p.d_in(), m = p.d_sae();
  const Mat<float> We_t = p.W_enc.transpose();  // C-order [d, m]
  add(lower ? "w_enc" : "W_enc", std::vector<std::size_t>{std::size_t(d), std::size_t(m)}, We_t.data());
  add(lower ? "w_dec" : "W_dec", std::vector<std::size_t>{std::size_t(m), std::size_t(d)}, p.W_dec.data());
  add("b_enc", std::vector<std::size_t>{std::size_t(m)}, p.b_enc.data());
  add("b_dec", std::vector<std::size_t>{std::size_t(d)}, p.b_dec.data());
  add("threshold", std::vector<std::size_t>{std::size_t(m)}, p.threshold.data());
}

void write_gemma_npz(const fs::path& file, const sae::Parameters<float>& p, bool compress) {
  sae::io::NpzWriter w;
  add_gemma_tensors(p, false, [&](const char* name, std::vector<std::size_t> shape, const float* data) {
    std::size_t n = 1;
    for (auto s : shape) n *= s;
    w.add(name, shape, std::span<const float>(data, n));
  });
  w.write(file, compress);
}

void write_gemma2(const fs::path& file, const sae::Parameters<float>& p, sae::io::StDtype dt = sae::io::StDtype::F32) {
  sae::io::SafetensorsWriter w;
  std::vector<std::vector<float>> keep;  // the writer keeps spans until write()
  keep.reserve(5);
  add_gemma_tensors(p, true, [&](const char* name, std::vector<std::size_t> shape, const float* data) {
    std::size_t n = 1;
    for (auto s : shape) n *= s;
    keep.emplace_back(data, data + n);
    w.add(name, std::vector<std::int64_t>(shape.begin(), shape.end()), keep.back(), dt);
  });
  w.write(file);
}

void write_sparsify(const fs::path& dir, const sae::Parameters<float>& p, Index k, const std::string& extra_cfg = "") {
  fs::create_directories(dir);
  const Index d = p.d_in(), m = p.d_sae();
  sae::io::SafetensorsWriter w;
  // encoder.weight [m, d] C-order = column-major d x m = libsae W_enc as stored.
  w.add("encoder.weight", {m, d}, std::span<const float>(p.W_enc.data(), std::size_t(d * m)));
  w.add("encoder.bias", {m}, std::span<const float>(p.b_enc.data(), std::size_t(m)));
  w.add("W_dec", {m, d}, std::span<const float>(p.W_dec.data(), std::size_t(d * m)));
  w.add("b_dec", {d}, std::span<const float>(p.b_dec.data(), std::size_t(d)));
  w.write(dir / "sae.safetensors");
  write_text(dir / "cfg.json",
             "{\"activation\": \"topk\", \"expansion_factor\": 32, \"normalize_decoder\": true, "
             "\"num_latents\": " +
                 std::to_string(m) + ", \"k\": " + std::to_string(k) +
                 ", \"multi_topk\": false, \"skip_connection\": false, \"transcode\": false, "
                 "\"d_in\": " +
                 std::to_string(d) + extra_cfg + "}");
}

void require_same(const sae::Parameters<float>& a, const sae::Parameters<float>& b) {
  REQUIRE(a.W_enc == b.W_enc);
  REQUIRE(a.W_dec == b.W_dec);
  REQUIRE(a.b_enc == b.b_enc);
  REQUIRE(a.b_dec == b.b_dec);
  REQUIRE(a.threshold == b.threshold);
}

template <class Codes>
Mat<float> dense(const Codes& c, Index m) {
  if constexpr (requires { c.to_dense(); }) {
    Mat<float> D = c.to_dense();
    if (D.rows() != m) D.conservativeResize(m, D.cols());
    return D;
  } else {
    return c;
  }
}

void require_io_error(const fs::path& path, const std::vector<std::string>& parts) {
  try {
    (void)sae::load_sae(path);
    FAIL("no error for " << path);
  } catch (const IoError& e) {
    const std::string msg = e.what();
    INFO(msg);
    REQUIRE(msg.find('\n') == std::string::npos);
    for (const auto& s : parts) REQUIRE(msg.find(s) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("Gemma Scope params.npz round trip (stored and deflate, file or directory)", "[io][formats]") {
  sae_test::TempDir tmp("gemma_npz");
  const auto p = jump_params(5, 9, 11);
  for (bool compress : {false, true}) {
    const fs::path dir = tmp / (compress ? "c" : "s");
    fs::create_directories(dir);
    write_gemma_npz(dir / "params.npz", p, compress);
    for (const fs::path& where : {dir, dir / "params.npz"}) {
      sae::io::SaeFormat fmt{};
      const sae::AnySae any = sae::load_sae(where, &fmt);
      REQUIRE(fmt == sae::io::SaeFormat::GemmaScope);
      REQUIRE(std::holds_alternative<sae::JumpReluSae<float>>(any));
      const auto& m = std::get<sae::JumpReluSae<float>>(any);
      REQUIRE(m.config().d_in == 5);
      REQUIRE(m.config().d_sae == 9);
      REQUIRE_FALSE(m.config().apply_b_dec_to_input);
      require_same(m.params(), p);
    }
  }
  SECTION("encoding does not subtract b_dec (Gemma Scope convention)") {
    const auto m = std::get<sae::JumpReluSae<float>>(sae::load_sae(tmp / "s"));
    const Mat<float> X = sae_test::random_matrix<float>(5, 7, 3);
    const Mat<float> Z = dense(m.encode(X), 9);
    const Mat<float> pre = (p.W_enc.transpose() * X).colwise() + p.b_enc;
    for (Index t = 0; t < 7; ++t)
      for (Index j = 0; j < 9; ++j) {
        const float want = pre(j, t) > p.threshold[j] ? std::max(pre(j, t), 0.0f) : 0.0f;
        REQUIRE(Z(j, t) == Approx(want).margin(1e-5));
      }
  }
  SECTION("saved as SAELens and reloaded: same model") {
    sae::save_sae(tmp / "converted", sae::load_sae(tmp / "c"));
    const auto m = std::get<sae::JumpReluSae<float>>(sae::load_sae(tmp / "converted"));
    REQUIRE_FALSE(m.config().apply_b_dec_to_input);
    require_same(m.params(), p);
  }
}

TEST_CASE("Gemma Scope 2 params.safetensors (lowercase keys, F32/F16/BF16)", "[io][formats]") {
  sae_test::TempDir tmp("gemma2");
  const auto p = jump_params(6, 10, 21);
  write_gemma2(tmp / "params.safetensors", p);
  sae::io::SaeFormat fmt{};
  const auto m = std::get<sae::JumpReluSae<float>>(sae::load_sae(tmp.path(), &fmt));
  REQUIRE(fmt == sae::io::SaeFormat::GemmaScope2);
  REQUIRE_FALSE(m.config().apply_b_dec_to_input);
  require_same(m.params(), p);
  // A lone file with another name is detected by its extension.
  write_gemma2(tmp / "other.safetensors", p, sae::io::StDtype::BF16);
  const auto b = std::get<sae::JumpReluSae<float>>(sae::load_sae(tmp / "other.safetensors"));
  REQUIRE(b.params().W_dec.isApprox(p.W_dec, 1e-2f));
  SECTION("a (skip) transcoder is read as one: W_dec [m, d_out], affine_skip_connection [d_in, d_out]") {
    // d_in 6, d_out 4, m 10, with values that tell every element apart.
    std::vector<float> we(60), wd(40), be(10), bd(4), th(10), a(24);
    for (std::size_t i = 0; i < we.size(); ++i) we[i] = 0.01f * float(i);
    for (std::size_t i = 0; i < wd.size(); ++i) wd[i] = -0.02f * float(i);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = 0.5f + float(i);
    for (std::size_t i = 0; i < 10; ++i) th[i] = 0.1f;
    bd = {1, 2, 3, 4};
    sae::io::SafetensorsWriter w;
    w.add("w_enc", {6, 10}, std::span<const float>(we));
    w.add("w_dec", {10, 4}, std::span<const float>(wd));
    w.add("b_enc", {10}, std::span<const float>(be));
    w.add("b_dec", {4}, std::span<const float>(bd));
    w.add("threshold", {10}, std::span<const float>(th));
    w.add("affine_skip_connection", {6, 4}, std::span<const float>(a));
    w.write(tmp / "skip.safetensors");
    const sae::AnySae t = sae::load_sae(tmp / "skip.safetensors");
    REQUIRE(t.is_transcoder());
    REQUIRE(t.d_out() == 4);
    REQUIRE(t.config().skip);
    REQUIRE(t.params().W_dec(3, 2) == wd[2 * 4 + 3]);  // W_dec[j=2][r=3]
    REQUIRE(t.params().b_dec[2] == 3.0f);
    REQUIRE(t.params().W_skip(3, 5) == a[5 * 4 + 3]);  // y_r += sum_c x_c A[c][r]: W_skip(r, c) = A[c][r]
    const auto x = sae_test::random_matrix<float>(6, 3, 5);
    Eigen::MatrixXf y;
    std::get<sae::JumpReluSae<float>>(t.variant())
        .output(x, std::get<sae::JumpReluSae<float>>(t.variant()).encode(x), y);
    const Eigen::Map<const Eigen::Matrix<float, 6, 4, Eigen::RowMajor>> A(a.data());
    const Eigen::MatrixXf skip_part = A.transpose() * x;
    Eigen::MatrixXf codes_part = y - skip_part;
    codes_part.colwise() -= t.params().b_dec;
    REQUIRE((codes_part - t.params().W_dec * std::get<sae::JumpReluSae<float>>(t.variant()).encode(x)).norm() < 1e-4f);
  }
}

TEST_CASE("sparsify directory round trip (TopK, k from cfg.json)", "[io][formats]") {
  sae_test::TempDir tmp("sparsify");
  const auto p = sae_test::random_params<float>(4, 12, 31);
  write_sparsify(tmp / "layers.3", p, 3);
  sae::io::SaeFormat fmt{};
  const sae::AnySae any = sae::load_sae(tmp / "layers.3", &fmt);
  REQUIRE(fmt == sae::io::SaeFormat::Sparsify);
  const auto& m = std::get<sae::TopKSae<float>>(any);
  REQUIRE(m.config().k == 3);
  REQUIRE(m.config().apply_b_dec_to_input);
  require_same(m.params(), p);
  // Pointing at sae.safetensors works too.
  REQUIRE(std::holds_alternative<sae::TopKSae<float>>(sae::load_sae(tmp / "layers.3" / "sae.safetensors")));

  SECTION("num_latents may be absent (expansion_factor * d_in)") {
    const auto q = sae_test::random_params<float>(4, 8, 32);
    write_sparsify(tmp / "ef", q, 2);
    write_text(tmp / "ef" / "cfg.json",
               R"({"activation": "topk", "expansion_factor": 2, "num_latents": 0, "k": 2, "d_in": 4})");
    const auto ef = std::get<sae::TopKSae<float>>(sae::load_sae(tmp / "ef"));
    require_same(ef.params(), q);
  }
  SECTION("errors name the file and the problem") {
    const fs::path d = tmp / "layers.3";
    write_text(d / "cfg.json", R"({"activation": "topk", "num_latents": 12, "k": 3, "d_in": 5})");
    require_io_error(d, {"sae.safetensors", "encoder.weight", "[12, 4]", "d_in=5"});
    write_text(d / "cfg.json", R"({"activation": "topk", "num_latents": 12, "k": 13, "d_in": 4})");
    require_io_error(d, {"cfg.json", "k must be in [1, d_sae=12]"});
    write_text(d / "cfg.json", R"({"activation": "groupmax", "num_latents": 12, "k": 3, "d_in": 4})");
    require_io_error(d, {"cfg.json", "groupmax", "k groups", "refused"});
    write_text(d / "cfg.json",
               R"({"activation": "topk", "num_latents": 12, "k": 3, "d_in": 4, "skip_connection": true})");
    require_io_error(d, {"cfg.json", "skip_connection", "W_skip x", "refused"});
    // (transcode: true is a TopK transcoder, read since libsae trains them: test_transcoder.cpp)
    write_text(d / "cfg.json", R"({"activation": "topk", "num_latents": 12, "k": -3, "d_in": 4})");
    require_io_error(d, {"cfg.json", "'k'"});
    write_text(d / "cfg.json", R"({"activation": "topk", "num_latents": 12, "d_in": 4})");
    require_io_error(d, {"cfg.json", "missing field 'k'"});
  }
}

TEST_CASE("SAELens saved as F16/BF16 loads within dtype precision; cfg.json dtype matches", "[io][formats]") {
  sae_test::TempDir tmp("saelens_half");
  sae::SaeConfig cfg;
  cfg.d_in = 8;
  cfg.d_sae = 16;
  cfg.architecture = std::string(sae::JumpReLUVariant::name);
  const auto p = jump_params(8, 16, 41);
  for (auto [dt, name, tol] :
       {std::tuple{sae::io::StDtype::F16, "float16", 1e-3f}, std::tuple{sae::io::StDtype::BF16, "bfloat16", 8e-3f}}) {
    const fs::path dir = tmp / name;
    sae::io::save_saelens(dir, cfg, p, dt);
    const auto r = sae::io::SafetensorsReader::open(dir / "sae_weights.safetensors");
    REQUIRE(r.info("W_enc").dtype == dt);
    REQUIRE(r.info("threshold").dtype == dt);
    const auto c = sae::io::load_saelens_config(dir);
    REQUIRE(c.dtype == name);
    const auto m = std::get<sae::JumpReluSae<float>>(sae::load_sae(dir));
    const auto rel = [](const auto& a, const auto& b) {
      return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
    };
    REQUIRE(rel(m.params().W_enc, p.W_enc) < tol);
    REQUIRE(rel(m.params().W_dec, p.W_dec) < tol);
    REQUIRE(rel(m.params().threshold, p.threshold) < tol);
  }
  REQUIRE_THROWS_AS(sae::io::save_saelens(tmp / "i8", cfg, p, sae::io::StDtype::I8), std::invalid_argument);
}

TEST_CASE("SAELens pre-6.0 flat cfg.json and log_threshold checkpoints load", "[io][formats]") {
  sae_test::TempDir tmp("saelens_old");
  sae::SaeConfig cfg;
  cfg.d_in = 4;
  cfg.d_sae = 6;
  cfg.k = 2;
  sae::TopKSae<float> model(cfg);
  model.set_params(sae_test::random_params<float>(4, 6, 51));
  sae::save_sae(tmp / "old", model);
  write_text(tmp / "old" / "cfg.json",
             R"({"architecture": "standard", "d_in": 4, "d_sae": 6, "dtype": "float32", "device": "cpu",
                 "model_name": "gpt2", "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8,
                 "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2},
                 "apply_b_dec_to_input": true, "normalize_activations": false, "context_size": 128})");
  const auto m = std::get<sae::TopKSae<float>>(sae::load_sae(tmp / "old"));
  REQUIRE(m.config().k == 2);
  REQUIRE(m.config().normalize_activations == "none");
  REQUIRE(m.config().metadata.value("hook_name", "") == "blocks.8.hook_resid_pre");
  REQUIRE(m.config().metadata.value("model_name", "") == "gpt2");
  require_same(m.params(), model.params());

  SECTION("boolean normalize_activations true") {
    write_text(tmp / "old" / "cfg.json",
               R"({"d_in": 4, "d_sae": 6, "activation_fn_str": "relu", "normalize_activations": true})");
    const auto r = std::get<sae::ReluSae<float>>(sae::load_sae(tmp / "old"));
    REQUIRE(r.config().normalize_activations == "expected_average_only_in");
  }
  SECTION("log_threshold instead of threshold") {
    const auto p = jump_params(4, 6, 52);
    const Mat<float> We_t = p.W_enc.transpose();
    const sae::Vec<float> logt = p.threshold.array().log().matrix();
    sae::io::SafetensorsWriter w;
    w.add("W_enc", {4, 6}, std::span<const float>(We_t.data(), 24));
    w.add("W_dec", {6, 4}, std::span<const float>(p.W_dec.data(), 24));
    w.add("b_enc", {6}, std::span<const float>(p.b_enc.data(), 6));
    w.add("b_dec", {4}, std::span<const float>(p.b_dec.data(), 4));
    w.add("log_threshold", {6}, std::span<const float>(logt.data(), 6));
    w.write(tmp / "old" / "sae_weights.safetensors");
    write_text(tmp / "old" / "cfg.json", R"({"architecture": "jumprelu", "d_in": 4, "d_sae": 6})");
    const auto j = std::get<sae::JumpReluSae<float>>(sae::load_sae(tmp / "old"));
    REQUIRE(j.params().threshold.isApprox(p.threshold, 1e-5f));
  }
}

TEST_CASE("hostile cfg.json: one-line IoError naming cfg.json", "[io][formats]") {
  sae_test::TempDir tmp("cfg_hostile");
  sae::SaeConfig cfg;
  cfg.d_in = 4;
  cfg.d_sae = 6;
  cfg.k = 2;
  sae::TopKSae<float> model(cfg);
  model.set_params(sae_test::random_params<float>(4, 6, 61));
  const fs::path dir = tmp / "sae";
  sae::save_sae(dir, model);
  const fs::path c = dir / "cfg.json";
  SECTION("deep nesting") {
    write_text(c, R"({"d_in": 4, "d_sae": 6, "k": 2, "architecture": "topk", "metadata": )" + std::string(100000, '[') +
                      std::string(100000, ']') + "}");
    require_io_error(dir, {"cfg.json", "nested more than 64"});
  }
  SECTION("invalid UTF-8 inside a string") {
    write_text(c, "{\"d_in\": 4, \"d_sae\": 6, \"k\": 2, \"architecture\": \"top\xff\xfek\"}");
    require_io_error(dir, {"cfg.json", "invalid JSON"});
  }
  SECTION("duplicate key") {
    write_text(c, R"({"d_in": 4, "d_sae": 6, "k": 2, "architecture": "topk", "d_in": 5})");
    require_io_error(dir, {"cfg.json", "duplicate key 'd_in'"});
  }
  SECTION("not an object, wrong types, huge values") {
    write_text(c, "[1, 2]");
    require_io_error(dir, {"cfg.json", "object"});
    write_text(c, R"({"d_in": "4", "d_sae": 6})");
    require_io_error(dir, {"cfg.json", "'d_in' must be an integer"});
    write_text(c, R"({"d_in": 18446744073709551615, "d_sae": 6, "architecture": "relu"})");
    require_io_error(dir, {"cfg.json"});
    write_text(c, R"({"d_in": 4000000000, "d_sae": 6000000000, "k": 2, "architecture": "topk"})");
    require_io_error(dir, {"sae_weights.safetensors", "W_enc"});
  }
  SECTION("training architecture in cfg.json") {
    write_text(c, R"({"d_in": 4, "d_sae": 6, "k": 2, "architecture": "batchtopk"})");
    require_io_error(dir, {"sae", "batchtopk"});
  }
  SECTION("oversized file") {
    write_text(c, "{\"d_in\": 4, \"d_sae\": 6, \"pad\": \"" + std::string(17u << 20, 'x') + "\"}");
    require_io_error(dir, {"cfg.json", "limit"});
  }
}

TEST_CASE("format detection: clear errors for unknown paths", "[io][formats]") {
  sae_test::TempDir tmp("detect");
  require_io_error(tmp / "missing", {"missing", "not found"});
  require_io_error(tmp.path(), {"not a recognised SAE directory"});
  write_text(tmp / "x.bin", "hello");
  require_io_error(tmp / "x.bin", {"x.bin", "not a recognised SAE file"});
  write_text(tmp / "params.npz", "PK\x03\x04 this is not a zip");
  require_io_error(tmp.path(), {"params.npz", "zip"});
}
