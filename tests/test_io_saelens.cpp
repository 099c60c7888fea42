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
    write_text(dir / "cfg.json", R"({"architecture": "gated", "d_in": 4, "d_sae": 6})");
    REQUIRE_THROWS_WITH(sae::load_sae(dir), Catch::Contains("cfg.json") && Catch::Contains("gated"));
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
    const Eigen::MatrixXd Z = ((p.W_enc.cast<double>().transpose() * (X.cast<double>().colwise() - p.b_dec.cast<double>()))
                                   .colwise() + p.b_enc.cast<double>());
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
      write_text(dir / "cfg.json", with("\"normalize_activations\": \"none\"", "\"normalize_activations\": \"" + norm + "\""));
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
