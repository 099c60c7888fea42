// Tests for sae/interp/token_table.hpp (the tokens.tsv of language-model activations, the
// vocabulary list, escapes, UTF-8 repair), logit_effect.hpp (against a brute-force sort) and the
// text view / logit effect of write_sae_report (report_run.hpp): every refusal names its file.
#include <catch2/catch.hpp>

#include "helpers.hpp"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <sae/sae.hpp>

using sae::Index;
using sae::Mat;
using sae::interp::TokenTable;

namespace {

const std::string tt_header = "row\tctx\tpos\ttoken_id\tdoc\ttext\n";

/// Writes @p body after the header (or instead of it, with @p with_header false).
std::filesystem::path tt_write(const sae_test::TempDir& dir, const std::string& body, bool with_header = true,
                               const std::string& name = "tokens.tsv") {
  const auto p = dir / name;
  sae_test::write_all(p, (with_header ? tt_header : std::string()) + body);
  return p;
}

std::size_t tt_count(const std::string& s, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + needle.size())) ++n;
  return n;
}

}  // namespace

TEST_CASE("token table: fields, escapes, rows and windows", "[io][tokens]") {
  sae_test::TempDir dir("tokens");
  // Two windows; pos 0 of each is not harvested (row -1). Escapes in doc and text; a
  // byte-level piece that is invalid UTF-8; a CRLF line ending.
  const std::string body =
      "-1\t0\t0\t2\tGen 1\t<bos>\n"
      "0\t0\t1\t651\tGen 1\tIn\n"
      "1\t0\t2\t573\tGen 1\t the\\tbeginning\n"
      "2\t0\t3\t108\tGen\\\\1\t\\n\\r\\\\\r\n"
      "-1\t7\t0\t2\tEx 2\t<bos>\n"
      "3\t7\t1\t9\tEx 2\t\xE2\x80\n"
      "4\t7\t2\t10\tEx 2\t\n";
  const TokenTable t(tt_write(dir, body));
  REQUIRE(t.size() == 7);
  CHECK(t.harvested() == 5);
  CHECK(t.row(0) == -1);
  CHECK(t.row(3) == 2);
  CHECK(t.ctx(4) == 7);
  CHECK(t.pos(6) == 2);
  CHECK(t.token_id(1) == 651);
  CHECK(t.text(0) == "<bos>");
  CHECK(t.text(2) == " the\tbeginning");
  CHECK(t.text(3) == "\n\r\\");  // the CRLF's \r is the line end, not text
  CHECK(t.text(5) == "\xE2\x80");
  CHECK(t.text(6).empty());
  CHECK(t.doc(1) == "Gen 1");
  CHECK(t.doc(3) == "Gen\\1");
  CHECK(t.doc(6) == "Ex 2");
  for (Index r = 0; r < 5; ++r) CHECK(t.row(t.line_of_row(r)) == r);
  CHECK(t.line_of_row(3) == 5);
  // windows stay inside their ctx
  CHECK(t.window(2, 12, 4) == std::pair<Index, Index>(0, 4));
  CHECK(t.window(2, 1, 0) == std::pair<Index, Index>(1, 3));
  CHECK(t.window(1, 0, 1) == std::pair<Index, Index>(1, 3));
  CHECK(t.window(5, 12, 4) == std::pair<Index, Index>(4, 7));
  CHECK(t.window(6, 0, 0) == std::pair<Index, Index>(6, 7));
  // header only: an empty table
  CHECK(TokenTable(tt_write(dir, "", true, "empty.tsv")).size() == 0);
}

TEST_CASE("token table: escapes and UTF-8 repair", "[io][tokens]") {
  using sae::interp::unescape_field;
  using sae::interp::utf8_sanitize;
  std::string s;
  CHECK(unescape_field("a\\\\b\\tc\\nd\\re", s));
  CHECK(s == "a\\b\tc\nd\re");
  for (const char* bad : {"\\x", "\\", "ab\\", "\\u00e9", "\\0"}) {
    std::string o;
    INFO(bad);
    CHECK_FALSE(unescape_field(bad, o));
  }
  const std::string fffd = "\xEF\xBF\xBD";
  CHECK(utf8_sanitize("plain ascii") == "plain ascii");
  CHECK(utf8_sanitize("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80") == "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");  // é € 😀
  CHECK(utf8_sanitize("a\xE2\x80") == "a" + fffd);                        // truncated 3-byte sequence
  CHECK(utf8_sanitize("\xE2\x80z") == fffd + "z");                        // one U+FFFD per maximal subpart
  CHECK(utf8_sanitize("\x80\xBF") == fffd + fffd);                        // stray continuation bytes
  CHECK(utf8_sanitize("\xC0\x80") == fffd + fffd);                        // overlong NUL
  CHECK(utf8_sanitize("\xED\xA0\x80") == fffd + fffd + fffd);             // surrogate U+D800
  CHECK(utf8_sanitize("\xF4\x90\x80\x80") == fffd + fffd + fffd + fffd);  // > U+10FFFF
  CHECK(utf8_sanitize("\xFF") == fffd);
}

TEST_CASE("token table: every malformed table is refused with its file and line", "[io][tokens]") {
  sae_test::TempDir dir("tokens_bad");
  const std::string ok0 = "0\t0\t0\t5\td\ta\n";
  struct Case {
    const char* name;
    std::string content;
    std::string fragment;
  };
  const std::vector<Case> cases = {
      {"no header", ok0, "line 1: expected the header"},
      {"wrong header", "row\tctx\tpos\ttoken\tdoc\ttext\n" + ok0, "line 1: expected the header"},
      {"empty file", "", "empty file"},
      {"5 columns", tt_header + "0\t0\t0\t5\td\n", "line 2: expected 6 tab-separated columns, got 5"},
      {"7 columns", tt_header + ok0 + "1\t0\t1\t5\td\ta\tb\n", "line 3: expected 6 tab-separated columns, got 7"},
      {"blank line", tt_header + ok0 + "\n" + "1\t0\t1\t5\td\ta\n", "line 3: expected 6"},
      {"row not an integer", tt_header + "x\t0\t0\t5\td\ta\n", "line 2: row is not an integer"},
      {"ctx not an integer", tt_header + "0\t0.5\t0\t5\td\ta\n", "line 2: ctx is not an integer"},
      {"pos not an integer", tt_header + "0\t0\t\t5\td\ta\n", "line 2: pos is not an integer"},
      {"token_id not an integer", tt_header + "0\t0\t0\t5e3\td\ta\n", "line 2: token_id is not an integer"},
      {"row below -1", tt_header + "-2\t0\t0\t5\td\ta\n", "line 2: row -2"},
      {"row gap", tt_header + ok0 + "2\t0\t1\t5\td\ta\n", "line 3: row 2 out of order: expected 1"},
      {"row repeated", tt_header + ok0 + "0\t0\t1\t5\td\ta\n", "line 3: row 0 out of order"},
      {"first row not 0", tt_header + "1\t0\t0\t5\td\ta\n", "line 2: row 1 out of order: expected 0"},
      {"ctx decreasing", tt_header + "0\t3\t0\t5\td\ta\n1\t2\t0\t5\td\ta\n", "line 3: ctx 2 after ctx 3"},
      {"pos not starting at 0", tt_header + "0\t0\t1\t5\td\ta\n", "line 2: pos 1 where 0 was expected"},
      {"pos skipping", tt_header + ok0 + "1\t0\t2\t5\td\ta\n", "line 3: pos 2 where 1 was expected"},
      {"new ctx not at pos 0", tt_header + ok0 + "1\t1\t1\t5\td\ta\n", "line 3: pos 1 where 0 was expected"},
      {"bad escape in text", tt_header + "0\t0\t0\t5\td\ta\\xb\n", "line 2: bad escape in text"},
      {"trailing backslash in text", tt_header + "0\t0\t0\t5\td\ta\\\n", "line 2: bad escape in text"},
      {"bad escape in doc", tt_header + "0\t0\t0\t5\td\\q\ta\n", "line 2: bad escape in doc"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const auto p = tt_write(dir, c.content, false, "bad.tsv");
    sae_test::require_io_error(
        p, [&] { TokenTable t(p); }, c.fragment);
  }
  sae_test::require_io_error(
      dir / "missing.tsv", [&] { TokenTable t(dir / "missing.tsv"); }, "not a regular file");
}

TEST_CASE("vocabulary: one escaped entry per line", "[io][tokens]") {
  sae_test::TempDir dir("vocab");
  sae_test::write_all(dir / "v.txt", "a\n\\n\n\n \\\\x\n\xC3\xA9\n");
  const std::vector<std::string> v = sae::interp::read_vocab(dir / "v.txt");
  CHECK(v == std::vector<std::string>{"a", "\n", "", " \\x", "\xC3\xA9"});
  sae_test::write_all(dir / "bad.txt", "a\nb\\z\n");
  sae_test::require_io_error(
      dir / "bad.txt", [&] { sae::interp::read_vocab(dir / "bad.txt"); }, "line 2: bad escape");
}

TEST_CASE("logit effects: top promoted and suppressed tokens equal a brute-force sort", "[io][tokens]") {
  sae_test::TempDir dir("logit");
  const Index V = 37, d = 6, m = 5;
  Mat<float> Ut = sae_test::random_matrix<float>(d, V, 5);  // d x V = C-order [V, d]
  Ut.col(11) = Ut.col(3);                                   // a tie: the lower id ranks first
  const Mat<float> W = sae_test::random_matrix<float>(d, m, 6);
  const std::size_t shape[2] = {static_cast<std::size_t>(V), static_cast<std::size_t>(d)};
  sae::io::save_npy(dir / "U.npy", Ut.data(), shape);
  std::vector<std::uint16_t> half(static_cast<std::size_t>(V * d));
  sae::detail::float_to_half(Ut.data(), half.data(), half.size());
  sae::io::save_npy_f16(dir / "U16.npy", half.data(), shape);
  Mat<float> Ut16(d, V);
  sae::detail::half_to_float(half.data(), Ut16.data(), half.size());

  for (const auto& [file, U] : {std::pair{"U.npy", &Ut}, std::pair{"U16.npy", &Ut16}}) {
    INFO(file);
    const auto reader = sae::io::NpyReader::open(dir / file);
    const std::vector<Index> feats = {4, 0, 2};
    const auto eff = sae::interp::logit_effects(reader, W, feats, 7);
    REQUIRE(eff.size() == 3);
    for (std::size_t f = 0; f < feats.size(); ++f) {
      const Index j = feats[f];
      std::vector<double> s(static_cast<std::size_t>(V));
      for (Index v = 0; v < V; ++v) s[static_cast<std::size_t>(v)] = static_cast<double>(U->col(v).dot(W.col(j)));
      std::vector<Index> up(static_cast<std::size_t>(V));
      std::iota(up.begin(), up.end(), Index{0});
      std::vector<Index> down = up;
      std::stable_sort(up.begin(), up.end(), [&](Index a, Index b) { return s[size_t(a)] > s[size_t(b)]; });
      std::stable_sort(down.begin(), down.end(), [&](Index a, Index b) { return s[size_t(a)] < s[size_t(b)]; });
      CHECK(eff[f].feature == j);
      REQUIRE(eff[f].promoted.size() == 7);
      REQUIRE(eff[f].suppressed.size() == 7);
      for (std::size_t i = 0; i < 7; ++i) {
        CHECK(eff[f].promoted[i].id == up[i]);
        CHECK(eff[f].promoted[i].value == Approx(s[size_t(up[i])]).epsilon(1e-5));
        CHECK(eff[f].suppressed[i].id == down[i]);
        CHECK(eff[f].suppressed[i].value == Approx(s[size_t(down[i])]).epsilon(1e-5));
      }
    }
  }
  sae_test::require_io_error(
      dir / "U.npy",
      [&] { sae::interp::logit_effects(sae::io::NpyReader::open(dir / "U.npy"), Mat<float>::Ones(d + 1, 2), {0}); },
      "unembedding has d_in=6 but the SAE has d_in=7");
}

TEST_CASE("report text view and logit effect: contexts, activations, refusals", "[io][tokens]") {
  sae_test::TempDir dir("report_text");
  const Index d = 8, m = 12, N = 60, V = 20;
  sae::TopKSae<float> topk(sae_test::config(d, m, 3));
  topk.set_params(sae_test::random_params<float>(d, m, 71));
  const sae::AnySae model = topk;
  const Mat<float> X = sae_test::random_matrix<float>(d, N, 72);
  const sae::interp::MatrixBatches src(X);
  // 6 windows of 11 lines: pos 0 not harvested, then 10 rows each; tokens with markup and a newline.
  std::string tsv = tt_header;
  Index row = 0;
  for (int c = 0; c < 6; ++c)
    for (int p = 0; p < 11; ++p) {
      tsv += p == 0 ? std::string("-1") : std::to_string(row++);
      for (const Index x : {Index{c}, Index{p}, (c * 11 + p) % V}) tsv.append("\t").append(std::to_string(x));
      tsv.append("\tdoc <").append(std::to_string(c)).append(">\t");
      tsv.append(p == 5 ? std::string("<b>\\n") : std::to_string(p).insert(0, 1, 't')).append("\n");
    }
  sae_test::write_all(dir / "tokens.tsv", tsv);
  const Mat<float> Ut = sae_test::random_matrix<float>(d, V, 73);
  const std::size_t shape[2] = {static_cast<std::size_t>(V), static_cast<std::size_t>(d)};
  sae::io::save_npy(dir / "U.npy", Ut.data(), shape);
  std::string vocab;
  for (Index v = 0; v < V; ++v) vocab += "v" + std::to_string(v) + "\n";
  sae_test::write_all(dir / "vocab.txt", vocab);

  sae::interp::ReportSettings s;
  s.out = dir / "r.html";
  s.tokens = dir / "tokens.tsv";
  s.unembed = dir / "U.npy";
  s.vocab = dir / "vocab.txt";
  s.opt.features = 4;
  s.opt.include_dense = true;  // 3 of 12 latents per token: every latent is dense here
  s.opt.examples = 3;
  s.opt.intervals = 0;
  s.opt.context_before = 2;
  s.opt.context_after = 1;
  const nlohmann::json r = sae::interp::write_sae_report(model, src, "X", s);
  const std::string html = sae_test::read_all(s.out);
  CHECK(r["text"] == true);
  CHECK(r["features"] == 4);
  CHECK(r["contexts"] == 12);
  CHECK(r["logit_features"] == 4);
  CHECK(tt_count(html, " context\" data-row=") == 12);
  CHECK(tt_count(html, "<span class=\"tok ex\"") == 12);
  CHECK(tt_count(html, "<table class=\"logit-effect\"") == 4);
  CHECK(tt_count(html, "<td class=\"lt up\"") == 40);
  CHECK(html.find("&lt;b&gt;<span class=\"ws\">&#x23CE;</span>") != std::string::npos);
  CHECK(html.find("doc &lt;") != std::string::npos);
  CHECK(html.find("<b>\\n") == std::string::npos);
  // every shaded token's data-act is f_j of its row, for the feature block it is in
  Mat<float> F;
  {
    const sae::SparseCodes<float> codes = topk.encode(X);
    F = Mat<float>::Zero(m, N);
    for (Index t = 0; t < N; ++t)
      for (Index i = codes.offsets[t]; i < codes.offsets[t + 1]; ++i)
        F(codes.indices[std::size_t(i)], t) = codes.values[std::size_t(i)];
  }
  std::size_t checked = 0;
  for (std::size_t at = html.find("<div class=\"feature\" id=\"feature-"); at != std::string::npos;) {
    const std::size_t next = html.find("<div class=\"feature\" id=\"feature-", at + 1);
    const std::string block = html.substr(at, next == std::string::npos ? std::string::npos : next - at);
    const Index j = std::stol(block.substr(std::string("<div class=\"feature\" id=\"feature-").size()));
    for (std::size_t p = block.find("class=\"tok"); p != std::string::npos; p = block.find("class=\"tok", p + 1)) {
      const std::size_t dr = block.find("data-row=\"", p), end = block.find('>', p);
      if (dr > end) continue;  // not harvested
      const Index t = std::stol(block.substr(dr + 10));
      const float v = std::stof(block.substr(block.find("data-act=\"", p) + 10));
      CHECK(v == Approx(F(j, t)).margin(1e-5));
      ++checked;
    }
    at = next;
  }
  CHECK(checked >= 12 * 3);

  // refusals name the files and numbers
  sae_test::write_all(dir / "short.tsv", tt_header + "0\t0\t0\t1\td\ta\n");
  s.tokens = dir / "short.tsv";
  sae_test::require_io_error(
      dir / "short.tsv", [&] { sae::interp::write_sae_report(model, src, "X.npy", s); },
      "has 1 harvested rows (row >= 0) but X.npy has 60 rows");
  s.tokens = dir / "tokens.tsv";
  sae_test::write_all(dir / "vocab19.txt", vocab.substr(0, vocab.rfind("v19")));
  s.vocab = dir / "vocab19.txt";
  sae_test::require_io_error(
      dir / "vocab19.txt", [&] { sae::interp::write_sae_report(model, src, "X", s); },
      "has 19 entries but " + (dir / "U.npy").string() + " has 20 rows");
  s.vocab.reset();
  CHECK_THROWS_AS(sae::interp::write_sae_report(model, src, "X", s), std::invalid_argument);
  s.vocab = dir / "vocab.txt";
  s.images = "2x4";
  CHECK_THROWS_AS(sae::interp::write_sae_report(model, src, "X", s), std::invalid_argument);
}
