// SAELens directory I/O: bit-exact round trip, the tensor layout other tools read, and clear
// errors for missing or malformed files.
#include "helpers.hpp"

#include <algorithm>
#include <fstream>
#include <numeric>
#include <vector>

using sae::Index;
using sae::Mat;
namespace fs = std::filesystem;

namespace {

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

sae::TopKSae<float> random_topk(Index d, Index m, Index k, std::uint64_t seed) {
  sae::SaeConfig cfg;
  cfg.d_in = d;
  cfg.d_sae = m;
  cfg.k = k;
  cfg.metadata = {{"hook_name", "blocks.0.hook_resid_post"}};
  sae::TopKSae<float> model(cfg);
  model.set_params(sae_test::random_params<float>(d, m, seed));
  return model;
}

}  // namespace

TEST_CASE("SAELens: save then load is bit-exact for both architectures", "[io][saelens]") {
  sae_test::TempDir tmp("saelens_rt");
  SECTION("topk") {
    const auto model = random_topk(7, 19, 3, 1);
    sae::save_sae(tmp / "topk", model);
    const sae::AnySae loaded = sae::load_sae(tmp / "topk");
    REQUIRE(std::holds_alternative<sae::TopKSae<float>>(loaded));
    const auto& m = std::get<sae::TopKSae<float>>(loaded);
    REQUIRE(m.config().k == 3);
    REQUIRE(m.activation().k == 3);
    REQUIRE(m.config().metadata.at("hook_name") == "blocks.0.hook_resid_post");
    REQUIRE(m.params().W_enc == model.params().W_enc);
    REQUIRE(m.params().W_dec == model.params().W_dec);
    REQUIRE(m.params().b_enc == model.params().b_enc);
    REQUIRE(m.params().b_dec == model.params().b_dec);
  }
  SECTION("relu, without b_dec subtraction") {
    sae::SaeConfig cfg;
    cfg.d_in = 5;
    cfg.d_sae = 11;
    cfg.apply_b_dec_to_input = false;
    sae::ReluSae<float> model(cfg);
    model.set_params(sae_test::random_params<float>(5, 11, 2));
    sae::save_sae(tmp / "relu", model);
    const sae::AnySae loaded = sae::load_sae(tmp / "relu");
    REQUIRE(std::holds_alternative<sae::ReluSae<float>>(loaded));
    const auto& m = std::get<sae::ReluSae<float>>(loaded);
    REQUIRE_FALSE(m.config().apply_b_dec_to_input);
    REQUIRE(m.params().W_enc == model.params().W_enc);
    REQUIRE(m.params().W_dec == model.params().W_dec);
    REQUIRE(m.params().b_enc == model.params().b_enc);
    REQUIRE(m.params().b_dec == model.params().b_dec);
  }
}

TEST_CASE("SAELens: tensors are stored with SAELens names, shapes and C-order layout", "[io][saelens]") {
  sae_test::TempDir tmp("saelens_layout");
  const Index d = 4, m = 6;
  const auto model = random_topk(d, m, 2, 3);
  sae::save_sae(tmp.path(), model);
  const auto r = sae::io::SafetensorsReader::open(tmp / "sae_weights.safetensors");
  REQUIRE(r.info("W_enc").shape == std::vector<std::int64_t>{d, m});
  REQUIRE(r.info("W_dec").shape == std::vector<std::int64_t>{m, d});
  REQUIRE(r.info("b_enc").shape == std::vector<std::int64_t>{m});
  REQUIRE(r.info("b_dec").shape == std::vector<std::int64_t>{d});
  REQUIRE(r.info("W_enc").dtype == sae::io::StDtype::F32);
  const std::vector<float> W_enc = r.read_f32("W_enc"), W_dec = r.read_f32("W_dec");
  // SAELens: z = x @ W_enc -> W_enc[i][j] pairs input i with latent j; x_hat = f @ W_dec -> W_dec[j][i].
  for (Index i = 0; i < d; ++i)
    for (Index j = 0; j < m; ++j) {
      REQUIRE(W_enc[i * m + j] == model.params().W_enc(i, j));
      REQUIRE(W_dec[j * d + i] == model.params().W_dec(i, j));
    }
  std::ifstream in(tmp / "cfg.json");
  const auto cfg = nlohmann::json::parse(in);
  REQUIRE(cfg.at("architecture") == "topk");
  REQUIRE(cfg.at("d_in") == d);
  REQUIRE(cfg.at("d_sae") == m);
  REQUIRE(cfg.at("k") == 2);
  REQUIRE(cfg.at("dtype") == "float32");
  REQUIRE(cfg.at("apply_b_dec_to_input") == true);
  REQUIRE(cfg.at("normalize_activations") == "none");
  REQUIRE(cfg.at("metadata").is_object());
  // No temporary files are left behind.
  for (const auto& e : fs::directory_iterator(tmp.path()))
    REQUIRE((e.path().filename() == "cfg.json" || e.path().filename() == "sae_weights.safetensors"));
}

TEST_CASE("SAELens: loading reports the file and the problem", "[io][saelens]") {
  sae_test::TempDir tmp("saelens_err");
  const auto model = random_topk(4, 6, 2, 4);
  const fs::path dir = tmp / "sae";
  sae::save_sae(dir, model);

  SECTION("not a directory") {
    REQUIRE_THROWS_WITH(sae::load_sae(tmp / "nope"), Catch::Contains("nope") && Catch::Contains("not a directory"));
  }
  SECTION("missing cfg.json") {
    fs::remove(dir / "cfg.json");
    REQUIRE_THROWS_AS(sae::load_sae(dir), sae::io::IoError);
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("cfg.json"));
  }
  SECTION("missing weights") {
    fs::remove(dir / "sae_weights.safetensors");
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("sae_weights.safetensors") && Catch::Contains("not found"));
  }
  SECTION("invalid JSON") {
    write_text(dir / "cfg.json", "{\"d_in\": 4, ");
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("cfg.json") && Catch::Contains("invalid JSON"));
  }
  SECTION("cfg.json d_sae disagrees with the tensors") {
    write_text(dir / "cfg.json", R"({"architecture": "topk", "d_in": 4, "d_sae": 7, "k": 2})");
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("sae_weights.safetensors") && Catch::Contains("W_enc") &&
                                                Catch::Contains("[4, 6]"));
  }
  SECTION("unknown architecture") {
    write_text(dir / "cfg.json", R"({"architecture": "frobnicate", "d_in": 4, "d_sae": 6})");
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("cfg.json") && Catch::Contains("frobnicate"));
  }
  SECTION("gated without its gate tensors") {
    write_text(dir / "cfg.json", R"({"architecture": "gated", "d_in": 4, "d_sae": 6})");
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("sae_weights.safetensors") && Catch::Contains("'b_gate'"));
  }
  SECTION("topk without k") {
    write_text(dir / "cfg.json", R"({"architecture": "topk", "d_in": 4, "d_sae": 6})");
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("cfg.json") && Catch::Contains("'k'"));
  }
  SECTION("truncated weights file") {
    const fs::path w = dir / "sae_weights.safetensors";
    fs::resize_file(w, fs::file_size(w) - 5);
    REQUIRE_THROWS_AS(sae::load_sae(dir), sae::io::IoError);
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("sae_weights.safetensors"));
  }
  SECTION("a missing tensor") {
    // Rewrite the weights without b_dec.
    const auto& p = model.params();
    const Mat<float> Wt = p.W_enc.transpose();
    sae::io::SafetensorsWriter w;
    w.add("W_enc", {4, 6}, std::span<const float>(Wt.data(), 24));
    w.add("W_dec", {6, 4}, std::span<const float>(p.W_dec.data(), 24));
    w.add("b_enc", {6}, std::span<const float>(p.b_enc.data(), 6));
    w.write(dir / "sae_weights.safetensors");
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("b_dec"));
  }
}

TEST_CASE("SAELens: saving over an existing SAE replaces it; saving onto a file fails cleanly", "[io][saelens]") {
  sae_test::TempDir tmp("saelens_over");
  const auto a = random_topk(4, 6, 2, 5), b = random_topk(4, 6, 3, 6);
  sae::save_sae(tmp / "sae", a);
  sae::save_sae(tmp / "sae", b);
  const auto loaded = std::get<sae::TopKSae<float>>(sae::load_sae(tmp / "sae"));
  REQUIRE(loaded.config().k == 3);
  REQUIRE(loaded.params().W_dec == b.params().W_dec);
  {
    std::ofstream f(tmp / "file");
    f << "x";
  }
  REQUIRE_THROWS_WITH(sae::save_sae(tmp / "file", a), Catch::Contains("not a directory"));
}

TEST_CASE("SAELens: rescale_acts_by_decoder_norm is folded; run-time normalisations are refused", "[io][saelens]") {
  sae_test::TempDir tmp("saelens_semantics");
  const Index d = 6, m = 14, k = 3;
  auto model = random_topk(d, m, k, 5);
  sae::Parameters<float> p = model.params();
  for (Index j = 0; j < m; ++j) p.W_dec.col(j) *= 0.2f + 0.25f * static_cast<float>(j) / p.W_dec.col(j).norm();
  model.set_params(p);
  sae::save_sae(tmp / "plain", model);
  const std::string cfg = [&] {
    std::ifstream in(tmp / "plain" / "cfg.json");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  auto with = [&](const std::string& from, const std::string& to) {
    std::string c = cfg;
    const auto at = c.find(from);
    REQUIRE(at != std::string::npos);
    return c.replace(at, from.size(), to);
  };

  SECTION("the fold gives SAELens's codes: top k of ||W_dec[j]|| z_j, decoded by W_dec[j] / ||W_dec[j]||") {
    fs::create_directories(tmp / "rescaled");
    fs::copy_file(tmp / "plain" / "sae_weights.safetensors", tmp / "rescaled" / "sae_weights.safetensors");
    write_text(tmp / "rescaled" / "cfg.json",
               with("\"rescale_acts_by_decoder_norm\": false", "\"rescale_acts_by_decoder_norm\": true"));
    const auto loaded = std::get<sae::TopKSae<float>>(sae::load_sae(tmp / "rescaled"));
    REQUIRE(loaded.config().metadata.at("folded_decoder_norm") == true);
    const Mat<float> X = sae_test::random_matrix<float>(d, 25, 6);
    const Mat<float> F = loaded.encode(X).to_dense();
    // SAELens's formula, written out in double
    const Eigen::MatrixXd Z =
        ((p.W_enc.cast<double>().transpose() * (X.cast<double>().colwise() - p.b_dec.cast<double>())).colwise() +
         p.b_enc.cast<double>());
    for (Index t = 0; t < X.cols(); ++t) {
      Eigen::VectorXd s(m);
      for (Index j = 0; j < m; ++j) s[j] = Z(j, t) * p.W_dec.col(j).cast<double>().norm();
      std::vector<Index> order(m);
      std::iota(order.begin(), order.end(), Index{0});
      std::sort(order.begin(), order.end(), [&](Index a, Index b) { return s[a] > s[b]; });
      for (Index r = 0; r < m; ++r) {
        const Index j = order[static_cast<std::size_t>(r)];
        const double want = r < k ? std::max(0.0, s[j]) : 0.0;
        REQUIRE(F(j, t) == Approx(want).margin(1e-4));
      }
    }
    for (Index j = 0; j < m; ++j) REQUIRE(loaded.params().W_dec.col(j).norm() == Approx(1.0f).epsilon(1e-5));
  }
  SECTION("layer_norm, constant_norm_rescale and covariance_whitening are refused naming the file") {
    for (const std::string norm : {"layer_norm", "constant_norm_rescale", "covariance_whitening"}) {
      const fs::path dir = tmp / norm;
      fs::create_directories(dir);
      fs::copy_file(tmp / "plain" / "sae_weights.safetensors", dir / "sae_weights.safetensors");
      write_text(dir / "cfg.json",
                 with("\"normalize_activations\": \"none\"", "\"normalize_activations\": \"" + norm + "\""));
      REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains((dir / "cfg.json").string()) &&
                                                  Catch::Contains("'" + norm + "'") && Catch::Contains("refused"));
    }
  }
  SECTION("the flag on another architecture is refused") {
    fs::create_directories(tmp / "odd");
    fs::copy_file(tmp / "plain" / "sae_weights.safetensors", tmp / "odd" / "sae_weights.safetensors");
    std::string c = with("\"rescale_acts_by_decoder_norm\": false", "\"rescale_acts_by_decoder_norm\": true");
    c.replace(c.find("\"architecture\": \"topk\""), 22, "\"architecture\": \"standard\"");
    write_text(tmp / "odd" / "cfg.json", c);
    REQUIRE_THROWS_WITH(sae::load_sae(tmp / "odd"), Catch::Contains("topk SAEs only"));
  }
}

namespace {

/// A SAELens gated SAE directory (what GatedSAE.save_model writes): W_enc [d, m], W_dec [m, d],
/// b_dec [d], b_gate, b_mag, r_mag [m].
struct GatedWeights {
  Mat<float> W_enc, W_dec;  // d x m
  sae::Vec<float> b_dec, b_gate, b_mag, r_mag;
};

void write_gated(const fs::path& dir, const GatedWeights& g, const std::string& extra_tensor = "") {
  fs::create_directories(dir);
  const Index d = g.W_enc.rows(), m = g.W_enc.cols();
  const Mat<float> Wt = g.W_enc.transpose();
  sae::io::SafetensorsWriter w;
  w.add("W_enc", {d, m}, std::span<const float>(Wt.data(), static_cast<std::size_t>(d * m)));
  w.add("W_dec", {m, d}, std::span<const float>(g.W_dec.data(), static_cast<std::size_t>(d * m)));
  w.add("b_dec", {d}, std::span<const float>(g.b_dec.data(), static_cast<std::size_t>(d)));
  w.add("b_gate", {m}, std::span<const float>(g.b_gate.data(), static_cast<std::size_t>(m)));
  w.add("b_mag", {m}, std::span<const float>(g.b_mag.data(), static_cast<std::size_t>(m)));
  w.add("r_mag", {m}, std::span<const float>(g.r_mag.data(), static_cast<std::size_t>(m)));
  if (!extra_tensor.empty())
    w.add(extra_tensor, {m}, std::span<const float>(g.b_mag.data(), static_cast<std::size_t>(m)));
  w.write(dir / "sae_weights.safetensors");
  write_text(dir / "cfg.json", R"({"architecture": "gated", "d_in": )" + std::to_string(d) + R"(, "d_sae": )" +
                                   std::to_string(m) + R"(, "dtype": "float32", "apply_b_dec_to_input": true,
      "normalize_activations": "none", "metadata": {"sae_lens_version": "6.54.12", "hook_name": "h"}})");
}

}  // namespace

TEST_CASE("SAELens gated: read as the JumpReLU with SAELens's gated codes", "[io][saelens]") {
  sae_test::TempDir tmp("saelens_gated");
  const Index d = 6, m = 40, T = 300;
  GatedWeights g;
  g.W_enc = sae_test::random_matrix<float>(d, m, 11, 0.5);
  g.W_dec = sae_test::random_matrix<float>(d, m, 12, 0.5);
  g.b_dec = sae_test::random_matrix<float>(d, 1, 13, 0.3);
  g.b_gate = sae_test::random_matrix<float>(m, 1, 14, 0.8);  // both signs: thresholds of both signs
  g.b_mag = sae_test::random_matrix<float>(m, 1, 15, 0.8);   // negative b_mag: open gates with relu = 0
  g.r_mag = sae_test::random_matrix<float>(m, 1, 16, 1.0);
  write_gated(tmp / "gated", g);
  const sae::AnySae any = sae::load_sae(tmp / "gated");
  REQUIRE(std::holds_alternative<sae::JumpReluSae<float>>(any));
  const auto& model = std::get<sae::JumpReluSae<float>>(any);
  REQUIRE(model.config().metadata.at("folded_gated") == true);
  REQUIRE(model.config().metadata.at("hook_name") == "h");

  const Mat<float> X = sae_test::random_matrix<float>(d, T, 17, 1.5);
  const Mat<float> F = model.encode(X);  // JumpReLU codes are dense
  // The gated encoder as SAELens defines it, in double, straight from the file's tensors:
  // f_j = 1[(x - b_dec).W_j + b_gate_j > 0] * relu(exp(r_mag_j) (x - b_dec).W_j + b_mag_j).
  Index open_positive = 0, open_zero = 0, closed_positive_mag = 0, checked = 0;
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < m; ++j) {
      double xw = 0;
      for (Index i = 0; i < d; ++i) xw += (double(X(i, t)) - double(g.b_dec[i])) * double(g.W_enc(i, j));
      const double gate = xw + g.b_gate[j];
      const double mag = std::exp(double(g.r_mag[j])) * xw + g.b_mag[j];
      if (std::abs(gate) < 1e-4) continue;  // within rounding of the gate: either side is right
      ++checked;
      const double want = gate > 0 ? std::max(0.0, mag) : 0.0;
      open_positive += gate > 0 && mag > 0;
      open_zero += gate > 0 && mag <= 0;
      closed_positive_mag += gate <= 0 && mag > 0;
      REQUIRE(F(j, t) == Approx(want).margin(1e-5 * std::max(1.0, std::abs(want))));
    }
  REQUIRE(checked > T * m * 99 / 100);
  // every case of the formula occurred
  REQUIRE(open_positive > 100);
  REQUIRE(open_zero > 100);
  REQUIRE(closed_positive_mag > 100);
  REQUIRE((model.params().threshold.array() < 0).any());
  REQUIRE((model.params().threshold.array() > 0).any());

  SECTION("saved again it is a jumprelu SAE with the same codes") {
    sae::save_sae(tmp / "again", any);
    const auto again = std::get<sae::JumpReluSae<float>>(sae::load_sae(tmp / "again"));
    REQUIRE(again.encode(X) == F);
  }
  SECTION("exp(r_mag) outside the float range is refused naming the latent") {
    g.r_mag[7] = 120.0f;
    write_gated(tmp / "huge", g);
    REQUIRE_THROWS_WITH(sae::load_sae(tmp / "huge"), Catch::Contains("sae_weights.safetensors") &&
                                                         Catch::Contains("r_mag[7]") && Catch::Contains("refused"));
    g.r_mag[7] = -120.0f;
    write_gated(tmp / "tiny", g);
    REQUIRE_THROWS_WITH(sae::load_sae(tmp / "tiny"), Catch::Contains("r_mag[7]"));
  }
}

TEST_CASE("SAELens BatchTopK training saves are read as their inference form", "[io][saelens]") {
  // cfg.json "batchtopk" / "matryoshka_batchtopk" + the scalar F64 topk_threshold SAELens keeps:
  // a jumprelu SAE with that threshold for every latent, as save_inference_model writes it.
  sae_test::TempDir tmp("saelens_btk_training");
  const Index d = 4, m = 6;
  const auto p = sae_test::random_params<float>(d, m, 9);
  for (const std::string arch : {"batchtopk", "matryoshka_batchtopk"}) {
    const fs::path dir = tmp / arch;
    fs::create_directories(dir);
    write_text(dir / "cfg.json",
               R"({"architecture": ")" + arch + R"(", "d_in": 4, "d_sae": 6, "k": 2, "matryoshka_widths": [3, 6]})");
    const sae::Mat<float> W_enc_t = p.W_enc.transpose();
    const double th = 0.1875;
    sae::io::SafetensorsWriter w;
    w.add("W_enc", {d, m}, std::span<const float>(W_enc_t.data(), d * m));
    w.add("W_dec", {m, d}, std::span<const float>(p.W_dec.data(), d * m));
    w.add("b_enc", {m}, std::span<const float>(p.b_enc.data(), m));
    w.add("b_dec", {d}, std::span<const float>(p.b_dec.data(), d));
    w.add_raw("topk_threshold", sae::io::StDtype::F64, {},
              std::span<const std::byte>(reinterpret_cast<const std::byte*>(&th), sizeof th));
    w.write(dir / "sae_weights.safetensors");
    const sae::AnySae loaded = sae::load_sae(dir);
    REQUIRE(std::holds_alternative<sae::JumpReluSae<float>>(loaded));
    REQUIRE((loaded.params().threshold.array() == 0.1875f).all());
    REQUIRE(loaded.params().W_dec == p.W_dec);
    REQUIRE(loaded.config().metadata.at("training_architecture") == arch);
    REQUIRE(loaded.config().metadata.at("k") == 2);
    // Codes: z * 1[z > theta], z = W_enc^T (x - b_dec) + b_enc.
    const sae::Mat<float> X = sae_test::random_matrix<float>(d, 30, 10);
    const sae::Mat<float> Z = (p.W_enc.transpose() * (X.colwise() - p.b_dec)).colwise() + p.b_enc;
    const sae::Mat<float> want = (Z.array() > 0.1875f).select(Z, 0.0f);
    const sae::Mat<float> got = std::get<sae::JumpReluSae<float>>(loaded).encode(X);
    REQUIRE((got - want).cwiseAbs().maxCoeff() < 1e-6f);

    // With rescale_acts_by_decoder_norm (SAELens's default for BatchTopK): selected on n_j z_j,
    // decoded as (f_j / n_j) W_dec[j]; the threshold is in the units of n_j z_j.
    write_text(dir / "cfg.json", R"({"architecture": ")" + arch +
                                     R"(", "d_in": 4, "d_sae": 6, "k": 2, "rescale_acts_by_decoder_norm": true})");
    const sae::AnySae folded = sae::load_sae(dir);
    const sae::Vec<float> n = p.W_dec.colwise().norm().transpose();
    const sae::Mat<float> Zn = Z.array().colwise() * n.array();
    const sae::Mat<float> Fn = (Zn.array() > 0.1875f).select(Zn, 0.0f);
    REQUIRE((std::get<sae::JumpReluSae<float>>(folded).encode(X) - Fn).cwiseAbs().maxCoeff() < 1e-5f);
    const sae::Mat<float> Xh = (p.W_dec * (Fn.array().colwise() / n.array()).matrix()).colwise() + p.b_dec;
    sae::Mat<float> got_xh;
    const auto& fm = std::get<sae::JumpReluSae<float>>(folded);
    fm.decode(fm.encode(X), got_xh);
    REQUIRE((got_xh - Xh).cwiseAbs().maxCoeff() < 1e-5f);
  }
  // Without its topk_threshold the file is refused, naming what is missing.
  const fs::path dir = tmp / "batchtopk";
  sae::save_sae(tmp / "plain", random_topk(4, 6, 2, 3));
  fs::copy_file(tmp / "plain" / "sae_weights.safetensors", dir / "sae_weights.safetensors",
                fs::copy_options::overwrite_existing);
  REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("topk_threshold") && Catch::Contains("batchtopk"));
}

TEST_CASE("SAELens forms libsae does not compute are refused with the reason", "[io][saelens]") {
  sae_test::TempDir tmp("saelens_refused");
  const auto model = random_topk(4, 6, 2, 7);
  sae::save_sae(tmp / "sae", model);
  const fs::path cfg = tmp / "sae" / "cfg.json";
  auto refusal = [&](const std::string& arch) {
    write_text(cfg, R"({"architecture": ")" + arch +
                        R"(", "d_in": 4, "d_sae": 6, "k": 2, "rescale_acts_by_decoder_norm": true})");
    try {
      (void)sae::load_sae(tmp / "sae");
    } catch (const sae::io::IoError& e) {
      const std::string what = e.what();
      REQUIRE(what.find('\n') == std::string::npos);
      REQUIRE(what.rfind(cfg.string() + ": architecture '" + arch + "'", 0) == 0);
      return what;
    }
    FAIL("loaded " << arch);
    return std::string();
  };
  REQUIRE_THAT(refusal("abstopk"), Catch::Contains("negative") && Catch::Contains("refused"));
  // Transcoders are read since libsae trains them (test_transcoder.cpp); one without d_out is not.
  for (const std::string arch : {"transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"}) {
    write_text(cfg, R"({"architecture": ")" + arch + R"(", "d_in": 4, "d_sae": 6})");
    REQUIRE_THROWS_WITH(sae::load_sae(tmp / "sae"), Catch::Contains("missing field 'd_out'"));
  }
  REQUIRE_THAT(refusal("temporal"), Catch::Contains("attention"));
  REQUIRE_THAT(refusal("matching_pursuit"), Catch::Contains("matching pursuit"));
}

TEST_CASE("SAELens: cfg.json records the v6 schema so SAELens keeps the metadata", "[io][saelens]") {
  sae_test::TempDir tmp("saelens_version");
  auto read_cfg = [](const fs::path& p) {
    std::ifstream in(p);
    return nlohmann::json::parse(in);
  };
  const auto model = random_topk(4, 6, 2, 8);
  sae::save_sae(tmp / "sae", model);
  const auto j = read_cfg(tmp / "sae" / "cfg.json");
  // SAELens reads a cfg.json as v6 only when metadata.sae_lens_version >= 6.0.0-rc.0
  REQUIRE(j.at("metadata").at("sae_lens_version") == std::string("6.0.0+libsae.") + sae::version_string);
  REQUIRE(j.at("metadata").at("sae_lens_training_version").is_null());
  REQUIRE(j.at("metadata").at("hook_name") == "blocks.0.hook_resid_post");

  // A file SAELens wrote: saved by libsae, the version is libsae's tag, the training version kept.
  std::string text = j.dump();
  text.replace(text.find("6.0.0+libsae."),
               std::string("6.0.0+libsae.").size() + std::string(sae::version_string).size(), "6.54.12");
  const auto at = text.find("\"sae_lens_training_version\":null");
  REQUIRE(at != std::string::npos);
  text.replace(at, std::string("\"sae_lens_training_version\":null").size(),
               "\"sae_lens_training_version\":\"6.54.12\"");
  write_text(tmp / "sae" / "cfg.json", text);
  const sae::AnySae loaded = sae::load_sae(tmp / "sae");
  REQUIRE(std::get<sae::TopKSae<float>>(loaded).config().metadata.at("sae_lens_version") == "6.54.12");
  sae::save_sae(tmp / "again", loaded);
  const auto j2 = read_cfg(tmp / "again" / "cfg.json");
  REQUIRE(j2.at("metadata").at("sae_lens_version") == std::string("6.0.0+libsae.") + sae::version_string);
  REQUIRE(j2.at("metadata").at("sae_lens_training_version") == "6.54.12");
}
