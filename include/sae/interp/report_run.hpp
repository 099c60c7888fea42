/// @file sae/interp/report_run.hpp
/// `sae report` as a library call: analyse an SAE on activations, read the optional label file,
/// token table, unembedding and vocabulary, render the HTML page (report.hpp), write it, and
/// return the JSON result the CLI prints. The `sae` tool and the Python binding
/// (libsae.report) both call write_sae_report().
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "../any_sae.hpp"
#include "../io/error.hpp"
#include "../io/npy.hpp"
#include "encode.hpp"
#include "logit_effect.hpp"
#include "report.hpp"
#include "token_table.hpp"
#include "tracker.hpp"

namespace sae::interp {

/// Everything `sae report` takes besides the SAE and the data (flag names in brackets).
struct ReportSettings {
  std::filesystem::path sae_path;  ///< where the SAE came from: summary, DIR/train_log.jsonl (may be empty)
  std::filesystem::path out;       ///< the .html written [--out]
  std::string images;              ///< "HxW": the data are images [--images]
  std::optional<std::filesystem::path> labels;   ///< one label per example [--labels]
  std::optional<std::filesystem::path> tokens;   ///< token table: text view [--tokens]
  std::optional<std::filesystem::path> unembed;  ///< [vocab, d_in] .npy: logit effects [--unembed]
  std::optional<std::filesystem::path> vocab;    ///< one entry per unembedding row [--vocab]
  std::string order = "mass";                    ///< mass | frequency | max [--order]
  ReportOptions opt;                             ///< features, examples, intervals, context_*, title, feature_ids...
  Index top_n = 0;                               ///< examples kept per latent; 0: max(examples, 16)
  Index batch = 4096;                            ///< tokens per encoded batch [--batch]
  Index limit = 0;                               ///< analyse only the first N tokens (0: all) [--limit]
  Index logit_top = 10;                          ///< promoted / suppressed tokens per feature
};

/// Progress lines ("encoded 100000/2000000 tokens", "wrote ..."); may be empty.
using ReportLog = std::function<void(const std::string&)>;

/// "28x28" -> (28, 28); std::invalid_argument on anything else.
inline std::pair<int, int> parse_image_shape(const std::string& s) {
  const auto x = s.find_first_of("xX");
  int h = 0, w = 0;
  try {
    std::size_t p1 = 0, p2 = 0;
    if (x == std::string::npos) throw std::invalid_argument("");
    h = std::stoi(s.substr(0, x), &p1);
    w = std::stoi(s.substr(x + 1), &p2);
    if (p1 != x || p2 != s.size() - x - 1) throw std::invalid_argument("");
  } catch (const std::exception&) {
    throw std::invalid_argument("--images must look like HxW (e.g. 28x28), got '" + s + "'");
  }
  if (h <= 0 || w <= 0) throw std::invalid_argument("--images must have positive sides, got '" + s + "'");
  return {h, w};
}

/// The codes of @p model at data rows @p rows (gathered from @p X), for @p latents only:
/// a |latents| x |rows| matrix, entry (i, c) = f_{latents[i]}(x_{rows[c]}).
template <class Model, class Source>
Mat<float> latent_values_at(const Model& model, const Source& X, const std::vector<Index>& latents,
                            const std::vector<std::int64_t>& rows, Index batch) {
  Mat<float> G(X.d_in(), static_cast<Index>(rows.size()));
  for (std::size_t c = 0; c < rows.size(); ++c) G.col(static_cast<Index>(c)) = X.token(rows[c]);
  std::vector<Index> slot(static_cast<std::size_t>(model.d_sae()), -1);  // latent -> first row of the result
  for (std::size_t i = latents.size(); i-- > 0;) slot[static_cast<std::size_t>(latents[i])] = static_cast<Index>(i);
  Mat<float> out = Mat<float>::Zero(static_cast<Index>(latents.size()), G.cols());
  encode_batches(model, MatrixBatches(G), batch, [&](Index t0, const auto& codes, const auto&) {
    detail::stats::for_each_active(codes, [&](Index j, auto v, Index t) {
      const Index i = slot[static_cast<std::size_t>(j)];
      if (i >= 0) out(i, t0 + t) = static_cast<float>(v);
    });
  });
  for (std::size_t i = 0; i < latents.size(); ++i)  // a latent asked for twice
    if (const Index first = slot[static_cast<std::size_t>(latents[i])]; first != static_cast<Index>(i))
      out.row(static_cast<Index>(i)) = out.row(first);
  return out;
}

/// Writes the report of @p model on @p X (a batch source: NpyBatches or MatrixBatches; its
/// rows are the examples, @p data_name names it in messages) to s.out and returns the result:
/// out, tokens, features, dead, dense, l0, fvu, train_log, text (a token table was used),
/// contexts (text contexts shown), logit_effects ({"feature": {"promoted": [[id, text, value],
/// ...], "suppressed": [...]}}, {} without an unembedding), logit_features (its size), bytes,
/// seconds.
/// Errors: std::invalid_argument for inconsistent settings, io::IoError naming the file for
/// unreadable or inconsistent files (a token table whose harvested rows differ from the
/// data's rows, a vocabulary whose length differs from the unembedding's rows).
template <class Source>
nlohmann::json write_sae_report(const AnySae& model, const Source& X, const std::string& data_name,
                                const ReportSettings& s, const ReportLog& log = {}) {
  const auto t0 = std::chrono::steady_clock::now();
  auto say = [&](const std::string& m) {
    if (log) log(m);
  };
  if (s.batch <= 0) throw std::invalid_argument("--batch must be positive");
  const Index d_in = model.d_in();
  model.check_d_in(X.d_in(), data_name, s.sae_path);
  ReportOptions opt = s.opt;
  if (!s.images.empty()) {
    if (s.tokens) throw std::invalid_argument("--images and --tokens exclude each other");
    const auto [h, w] = parse_image_shape(s.images);
    if (static_cast<Index>(h) * w != d_in)
      throw std::invalid_argument("--images " + s.images + " has " + std::to_string(h * w) +
                                  " pixels but d_in=" + std::to_string(d_in));
    opt.image_height = h;
    opt.image_width = w;
  }
  if (s.unembed.has_value() != s.vocab.has_value()) throw std::invalid_argument("--unembed and --vocab go together");
  if (opt.context_before < 0 || opt.context_after < 0)
    throw std::invalid_argument("--context-before and --context-after must be >= 0");
  opt.order = parse_feature_order(s.order);

  // Files first, so that a bad one fails before the (long) analysis.
  std::vector<std::string> labels;
  if (s.labels) {
    std::ifstream in(*s.labels);
    if (!in) throw io::IoError(*s.labels, "cannot open the labels file");
    for (std::string line; std::getline(in, line);) labels.push_back(line);
  }
  const Index n = s.limit > 0 ? std::min(s.limit, X.tokens()) : X.tokens();
  if (s.labels && static_cast<Index>(labels.size()) < n)
    throw io::IoError(*s.labels, "has " + std::to_string(labels.size()) + " lines, fewer than the " +
                                     std::to_string(n) + " examples");
  std::optional<TokenTable> table;
  if (s.tokens) {
    table.emplace(*s.tokens);
    if (table->harvested() != X.tokens())
      throw io::IoError(*s.tokens, "has " + std::to_string(table->harvested()) + " harvested rows (row >= 0) but " +
                                       data_name + " has " + std::to_string(X.tokens()) + " rows");
  }
  std::optional<io::NpyReader> U;
  std::vector<std::string> vocab;
  if (s.unembed) {
    U.emplace(io::NpyReader::open(*s.unembed));
    if (U->shape().size() != 2) throw io::IoError(*s.unembed, "expected a 2-D unembedding [vocab, d_in]");
    if (static_cast<Index>(U->cols()) != d_in)
      throw io::IoError(*s.unembed, "unembedding has d_in=" + std::to_string(U->cols()) +
                                        " but the SAE has d_in=" + std::to_string(d_in));
    vocab = read_vocab(*s.vocab);
    if (vocab.size() != U->rows())
      throw io::IoError(*s.vocab, "has " + std::to_string(vocab.size()) + " entries but " + s.unembed->string() +
                                      " has " + std::to_string(U->rows()) + " rows");
  }

  AnalyzeOptions ao;
  ao.batch = s.batch;
  ao.limit = n;
  ao.tracker.top_n = s.top_n > 0 ? s.top_n : std::max<Index>(opt.examples, 16);
  Index last = 0;
  ao.on_progress = [&](Index done, Index total) {
    if (done - last >= 100000 || done == total) {
      last = done;
      say("encoded " + std::to_string(done) + "/" + std::to_string(total) + " tokens");
    }
  };
  say((s.sae_path.empty() ? std::string("SAE") : s.sae_path.string()) + " on " + std::to_string(n) + " tokens of " +
      data_name);
  const Analysis an = std::visit([&](const auto& m) { return analyze(m, X, ao); }, model);

  const Mat<float>& W_dec = model.params().W_dec;
  ReportInput in(an.tracker, W_dec);
  in.metrics = an.metrics;
  const SaeConfig cfg = model.config();
  in.summary = {{"SAE", s.sae_path.empty() ? std::string("(in memory)") : s.sae_path.string()},
                {"architecture", cfg.architecture},
                {"d_in", cfg.d_in},
                {"d_sae", cfg.d_sae},
                {"data", data_name}};
  if (cfg.k > 0) in.summary["k"] = cfg.k;
  if (s.tokens) in.summary["tokens table"] = s.tokens->string();
  if (s.unembed) in.summary["unembedding"] = s.unembed->string();
  in.b_dec = Vec<float>(model.params().b_dec);
  in.example = [&](Index t) { return Vec<float>(X.token(t)); };
  if (s.labels) in.example_label = [&](Index t) { return labels[static_cast<std::size_t>(t)]; };
  if (table) {
    in.tokens = &*table;
    in.latent_values = [&](const std::vector<Index>& latents, const std::vector<std::int64_t>& rows) {
      return std::visit([&](const auto& m) { return latent_values_at(m, X, latents, rows, s.batch); }, model);
    };
  }
  const std::vector<Index> feats = select_features(an.tracker, opt);
  nlohmann::json effects = nlohmann::json::object();
  if (U) {
    in.logit_effects = logit_effects(*U, W_dec, feats, s.logit_top);
    in.vocab = &vocab;
    for (const LogitEffect& e : in.logit_effects) {
      auto list = [&](const std::vector<LogitToken>& v) {
        nlohmann::json a = nlohmann::json::array();
        for (const LogitToken& t : v)
          a.push_back({t.id, utf8_sanitize(vocab[static_cast<std::size_t>(t.id)]), t.value});
        return a;
      };
      effects[std::to_string(e.feature)] = {{"promoted", list(e.promoted)}, {"suppressed", list(e.suppressed)}};
    }
  }
  if (!s.sae_path.empty()) {
    const std::filesystem::path log_path = s.sae_path / "train_log.jsonl";
    std::error_code ec;
    if (std::filesystem::is_regular_file(log_path, ec)) in.train_log = read_train_log(log_path);
  }
  if (opt.title == "SAE report" && !s.sae_path.empty()) opt.title = "SAE report: " + s.sae_path.filename().string();

  const std::string html = render_report(in, opt);
  write_report(s.out, html);
  std::size_t contexts = 0;
  if (table)
    for (std::size_t p = html.find(" context\" data-row="); p != std::string::npos;
         p = html.find(" context\" data-row=", p + 1))
      ++contexts;
  say("wrote " + s.out.string() + " (" + std::to_string(html.size() / 1024) + " KiB)");
  return {{"out", s.out.string()},
          {"tokens", n},
          {"features", feats.size()},
          {"dead", an.tracker.density().dead_latents().size()},
          {"dense", an.tracker.density().dense_latents(opt.dense_threshold).size()},
          {"l0", an.metrics.l0},
          {"fvu", an.metrics.fvu},
          {"train_log", in.train_log.has_value()},
          {"text", table.has_value()},
          {"contexts", contexts},
          {"logit_effects", effects},
          {"logit_features", effects.size()},
          {"bytes", html.size()},
          {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
}

/// write_sae_report on the SAE at @p sae_path (any format load_sae reads; s.sae_path is set to
/// it) and the [N, d_in] .npy @p data (streamed). A template only so that a translation unit
/// that includes <sae/sae.hpp> without calling it does not compile the report for every
/// architecture (that cost every such TU ~10 s).
template <class Log = ReportLog>
nlohmann::json write_sae_report(const std::filesystem::path& sae_path, const std::filesystem::path& data,
                                ReportSettings s, const Log& log = {}) {
  const AnySae model = load_sae(sae_path);
  const NpyBatches X(data);
  s.sae_path = sae_path;
  return write_sae_report(model, X, data.string(), s, log);
}

}  // namespace sae::interp
