// Tests for sae/interp/image.hpp, svg.hpp and report.hpp: PNG bytes checked with zlib's own
// CRC-32 and inflate, base64 against RFC 4648 vectors, and the report's structure.
#include <catch2/catch.hpp>

#include "helpers.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <sae/interp/interp.hpp>

#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
#include <zlib.h>
#endif

using sae::Index;
using sae::Mat;

namespace {

std::size_t count(const std::string& s, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + needle.size())) ++n;
  return n;
}

std::uint32_t be32(const std::string& s, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s[at + static_cast<std::size_t>(i)]);
  return v;
}

}  // namespace

TEST_CASE("base64: RFC 4648 test vectors", "[interp][report]") {
  using sae::interp::image::base64;
  CHECK(base64("") == "");
  CHECK(base64("f") == "Zg==");
  CHECK(base64("fo") == "Zm8=");
  CHECK(base64("foo") == "Zm9v");
  CHECK(base64("foob") == "Zm9vYg==");
  CHECK(base64("fooba") == "Zm9vYmE=");
  CHECK(base64("foobar") == "Zm9vYmFy");
  CHECK(base64(std::string("\xff\x00\x80", 3)) == "/wCA");
}

TEST_CASE("PNG: chunks, CRCs and pixel data are valid", "[interp][report]") {
  // 300 x 250 RGB is more than one 65535-byte stored block.
  const int w = 300, h = 250;
  std::string px(static_cast<std::size_t>(w * h * 3), '\0');
  for (std::size_t i = 0; i < px.size(); ++i) px[i] = static_cast<char>((i * 7) % 251);
  const std::string png = sae::interp::image::encode_png(px, w, h, 3);
  REQUIRE(png.substr(0, 8) == "\x89PNG\r\n\x1a\n");
  std::size_t at = 8;
  std::vector<std::string> types;
  std::string idat;
  while (at < png.size()) {
    const std::uint32_t len = be32(png, at);
    const std::string type = png.substr(at + 4, 4);
    const std::string data = png.substr(at + 8, len);
    types.push_back(type);
#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
    const std::string td = type + data;
    CHECK(be32(png, at + 8 + len) ==
          ::crc32(0, reinterpret_cast<const Bytef*>(td.data()), static_cast<uInt>(td.size())));
#endif
    if (type == "IHDR") {
      CHECK(be32(data, 0) == static_cast<std::uint32_t>(w));
      CHECK(be32(data, 4) == static_cast<std::uint32_t>(h));
      CHECK(data[8] == 8);
      CHECK(data[9] == 2);
    }
    if (type == "IDAT") idat += data;
    at += 12 + len;
  }
  CHECK(at == png.size());
  CHECK(types == std::vector<std::string>{"IHDR", "IDAT", "IEND"});
#if defined(SAE_HAVE_ZLIB) && SAE_HAVE_ZLIB
  std::string raw(static_cast<std::size_t>((w * 3 + 1) * h), '\0');
  uLongf n = static_cast<uLongf>(raw.size());
  REQUIRE(::uncompress(reinterpret_cast<Bytef*>(raw.data()), &n, reinterpret_cast<const Bytef*>(idat.data()),
                       static_cast<uLong>(idat.size())) == Z_OK);
  REQUIRE(n == raw.size());
  for (int r = 0; r < h; ++r) {
    const std::size_t row = static_cast<std::size_t>(r) * (w * 3 + 1);
    CHECK(raw[row] == '\0');
    CHECK(raw.substr(row + 1, w * 3) == px.substr(static_cast<std::size_t>(r) * w * 3, w * 3));
  }
#endif
}

TEST_CASE("svg: nice ticks and escaping", "[interp][report]") {
  auto same = [](const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (std::abs(a[i] - b[i]) > 1e-12) return false;
    return true;
  };
  CHECK(same(sae::interp::svg::nice_ticks(0, 1, 5), {0, 0.2, 0.4, 0.6, 0.8, 1.0}));
  CHECK(same(sae::interp::svg::nice_ticks(-3.2, 7.9, 4), {-2, 0, 2, 4, 6}));
  CHECK(same(sae::interp::svg::nice_ticks(-5.1, -4.05, 4), {-5, -4.8, -4.6, -4.4, -4.2}));
  CHECK(sae::interp::svg::escape("<a href=\"x\">&'") == "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
  const std::string chart = sae::interp::svg::line_chart("loss", {{0, 1.0}, {10, 0.5}, {20, 0.25}});
  CHECK(count(chart, "<polyline") == 1);
  CHECK(chart.rfind("<svg", 0) == 0);
}

TEST_CASE("report: sections, feature blocks and example counts; images when a shape is given", "[interp][report]") {
  const Index h = 4, w = 5, d = h * w, m = 30, N = 400;
  sae::SaeConfig cfg;
  cfg.d_in = d;
  cfg.d_sae = m;
  cfg.k = 3;
  sae::TopKSae<float> model(cfg);
  model.set_params(sae_test::random_params<float>(d, m, 81));
  const Mat<float> X = sae_test::random_matrix<float>(d, N, 82);
  sae::interp::AnalyzeOptions ao;
  ao.tracker.top_n = 8;
  const auto an = sae::interp::analyze(model, sae::interp::MatrixBatches(X), ao);

  sae::interp::ReportInput in(an.tracker, model.params().W_dec);
  in.metrics = an.metrics;
  in.summary = {{"architecture", "topk"}, {"note", "<script>alert(1)</script>"}};
  in.example = [&](Index t) { return sae::Vec<float>(X.col(t)); };
  in.example_label = [](Index t) { return t % 2 ? std::string("odd") : std::string("even"); };
  sae::interp::TrainLog log;
  for (int s = 100; s <= 500; s += 100)
    log.rows.push_back({{"step", s}, {"loss", 1.0 / s}, {"l0", 3.0}, {"fvu", 0.5}, {"seconds", s * 0.1}});
  in.train_log = log;

  sae::interp::ReportOptions o;
  o.features = 5;
  o.examples = 6;
  o.intervals = 2;
  o.per_interval = 3;
  o.image_height = static_cast<int>(h);
  o.image_width = static_cast<int>(w);
  o.include_dense = true;
  const std::string html = sae::interp::render_report(in, o);
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(count(html, "<div class=\"feature\"") == 5);
  CHECK(count(html, "class=\"example\"") == 5 * 6);
  CHECK(count(html, "class=\"interval-example\"") == 5 * 2 * 3);
  CHECK(count(html, "<img class=\"decoder\"") == 5);
  CHECK(count(html, "<img class=\"decoded\"") == 0);       // no b_dec given
  CHECK(count(html, "class=\"chart train-curve\"") == 3);  // loss, fvu, l0 (not seconds)
  CHECK(count(html, "class=\"chart density-hist\"") == 1);
  CHECK(count(html, "class=\"chart act-hist\"") == 5);
  CHECK(count(html, "<script") == 0);  // escaped
  CHECK(count(html, "http") == 0);     // nothing to fetch
  CHECK(count(html, "src=\"data:image/png;base64,") == 5 * (1 + 6 + 2 * 3));
  // The features shown are the top 5 by total activation, in that order.
  std::vector<Index> ids(m);
  for (Index j = 0; j < m; ++j) ids[static_cast<std::size_t>(j)] = j;
  std::stable_sort(ids.begin(), ids.end(),
                   [&](Index a, Index b) { return an.tracker.density().sum(a) > an.tracker.density().sum(b); });
  std::size_t prev = 0;
  for (int i = 0; i < 5; ++i) {
    const std::size_t at = html.find("id=\"feature-" + std::to_string(ids[static_cast<std::size_t>(i)]) + "\"");
    REQUIRE(at != std::string::npos);
    CHECK(at > prev);
    prev = at;
  }

  // By default dense latents (frequency > 0.1) are left out of the top features.
  o.include_dense = false;
  const auto shown = sae::interp::select_features(an.tracker, o);
  CHECK(shown.size() == 5);
  for (Index j : shown) CHECK(an.tracker.density().frequency(j) <= 0.1);
  CHECK(an.tracker.density().dense_latents(0.1).size() > 0);  // so the filter did something

  // Without an image shape: tables of example indices, no images at all.
  o.image_height = o.image_width = 0;
  o.feature_ids = {7, 2};
  const std::string plain = sae::interp::render_report(in, o);
  CHECK(count(plain, "<div class=\"feature\"") == 2);
  CHECK(count(plain, "<img") == 0);
  CHECK(static_cast<Index>(count(plain, "<tr class=\"example\"")) ==
        std::min<Index>(6, an.tracker.top().count(7)) + std::min<Index>(6, an.tracker.top().count(2)));
  CHECK(plain.find("id=\"feature-7\"") < plain.find("id=\"feature-2\""));
  o.image_height = 3;
  o.image_width = 3;
  CHECK_THROWS_AS(sae::interp::render_report(in, o), std::invalid_argument);
}

TEST_CASE("read_train_log: JSON lines, blank lines skipped, bad lines named", "[interp][report][io]") {
  sae_test::TempDir dir("trainlog");
  sae_test::write_all(
      dir / "log.jsonl",
      "{\"step\": 1, \"loss\": 2.5, \"l0\": 4}\n\n{\"step\": 2, \"loss\": 1.5, \"dead_fraction\": 0.1}\n");
  const auto log = sae::interp::read_train_log(dir / "log.jsonl");
  CHECK(log.rows.size() == 2);
  CHECK(log.series_names() == std::vector<std::string>{"loss", "l0", "dead_fraction"});
  CHECK(log.series("loss") == std::vector<std::pair<double, double>>{{1, 2.5}, {2, 1.5}});
  sae_test::write_all(dir / "bad.jsonl", "{\"step\": 1}\n{oops\n");
  sae_test::require_io_error(
      dir / "bad.jsonl", [&] { (void)sae::interp::read_train_log(dir / "bad.jsonl"); }, "line 2");
  sae_test::require_io_error(dir / "none.jsonl", [&] { (void)sae::interp::read_train_log(dir / "none.jsonl"); });
}
