/// @file sae/interp/report.hpp
/// A self-contained HTML report of a trained SAE: one file with inline CSS, inline SVG charts
/// and PNG data URIs (no scripts, no network), readable in any browser.
///
/// Sections (element classes in brackets, which the browser test counts):
///   1. summary     the SAE's config and the evaluation metrics on the analysed tokens
///   2. training    one line chart per numeric field of DIR/train_log.jsonl   [svg.train-curve]
///   3. density     histogram of log10(firing frequency), dead latents apart;
///                  dead and dense latent lists                               [svg.density-hist]
///   4. features    the top-N features (FeatureOrder), each with                [div.feature]
///                  - frequency, mean and max activation, quantiles
///                  - histogram of its sampled activations                     [svg.act-hist]
///                  - the decoder direction W_dec[:, j] as a blue-white-red image (image data)
///                                                                             [img.decoder]
///                  - its top activating examples: images with their activation (image data)
///                    or a table of example index and activation               [.example]
///                  - examples sampled from activation quantile intervals     [.interval-example]
///                  - with a token table (language-model data), each example as its text
///                    context, tokens shaded by the feature's activation     [div.context, span.tok]
///                  - with an unembedding, the logit effect U·W_dec[:, j]: top promoted and
///                    suppressed tokens                                       [table.logit-effect]
///
/// Text view (ReportInput::tokens): an example row r is shown as the tokens of its context
/// window from pos - context_before to pos + context_after; every harvested token i is shaded
/// with alpha = clamp(f_j(x_i) / max_j, 0, 1) (max_j: the feature's largest activation among
/// the analysed tokens), f_j(x_i) from ReportInput::latent_values, in its `data-act` and `title`;
/// the example token is outlined (span.tok.ex), tokens without a row are grey (span.tok.nh).
///
/// Image data: each example (column of X, d = h*w values) is an h x w row-major image, as the
/// IDX and C-order [N, h, w] layouts store it; shown with each image scaled to its own
/// [min(0, min x), max x] range, black to white.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "../core/parameters.hpp"
#include "../io/atomic_file.hpp"
#include "../io/error.hpp"
#include "../metrics/metrics.hpp"
#include "image.hpp"
#include "logit_effect.hpp"
#include "svg.hpp"
#include "token_table.hpp"
#include "tracker.hpp"

namespace sae::interp {

/// The training log `sae train` writes: one JSON object per progress line.
struct TrainLog {
  std::vector<nlohmann::json> rows;

  /// Numeric fields worth plotting, in a fixed order: loss, fvu, l0, dead_fraction first,
  /// then the rest alphabetically (step, tokens, seconds and throughput are left out).
  std::vector<std::string> series_names() const {
    std::vector<std::string> names;
    for (const auto& r : rows)
      for (auto it = r.begin(); it != r.end(); ++it)
        if (it.value().is_number() && std::find(names.begin(), names.end(), it.key()) == names.end())
          names.push_back(it.key());
    static const std::vector<std::string> skip = {"step", "tokens", "seconds", "tokens_per_s", "steps"};
    static const std::vector<std::string> first = {"loss", "fvu", "l0", "dead_fraction"};
    std::vector<std::string> out;
    for (const auto& f : first)
      if (std::find(names.begin(), names.end(), f) != names.end()) out.push_back(f);
    std::sort(names.begin(), names.end());
    for (const auto& n : names)
      if (std::find(out.begin(), out.end(), n) == out.end() && std::find(skip.begin(), skip.end(), n) == skip.end())
        out.push_back(n);
    return out;
  }

  /// (step, value) of field @p name over the rows that have both.
  std::vector<std::pair<double, double>> series(const std::string& name) const {
    std::vector<std::pair<double, double>> p;
    for (const auto& r : rows) {
      auto s = r.find("step");
      auto v = r.find(name);
      if (s != r.end() && v != r.end() && s->is_number() && v->is_number())
        p.emplace_back(s->get<double>(), v->get<double>());
    }
    return p;
  }
};

/// Reads a JSON-lines training log (blank lines skipped). Throws IoError "PATH: line N: ..."
/// for a line that is not a JSON object.
inline TrainLog read_train_log(const std::filesystem::path& path) {
  if (!std::filesystem::is_regular_file(path)) throw io::IoError(path, "not a regular file");
  std::ifstream in(path);
  if (!in) throw io::IoError(path, "cannot open the training log");
  TrainLog log;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
      throw io::IoError(path, "line " + std::to_string(n) + ": not a JSON object");
    log.rows.push_back(std::move(j));
  }
  return log;
}

/// How the report picks its top-N features among the latents that fired.
enum class FeatureOrder {
  Mass,       ///< largest sum of activations (the latents that carry most of the reconstruction)
  Frequency,  ///< most frequently firing
  Max,        ///< largest maximum activation
};

inline FeatureOrder parse_feature_order(const std::string& s) {
  if (s == "mass") return FeatureOrder::Mass;
  if (s == "frequency" || s == "freq") return FeatureOrder::Frequency;
  if (s == "max") return FeatureOrder::Max;
  throw std::invalid_argument("unknown feature order '" + s + "' (expected mass|frequency|max)");
}

/// What the report shows and how.
struct ReportOptions {
  std::string title = "SAE report";
  Index features = 24;     ///< top-N features shown
  Index examples = 12;     ///< top activating examples per feature (<= tracker top_n)
  int intervals = 3;       ///< quantile intervals with sampled examples per feature (0: none)
  Index per_interval = 4;  ///< examples per quantile interval
  int image_height = 0;    ///< > 0 with image_width: the data are h x w images
  int image_width = 0;
  int image_zoom = 3;  ///< displayed pixels per image pixel
  FeatureOrder order = FeatureOrder::Mass;
  std::vector<Index> feature_ids;  ///< shown instead of the ordered top-N when non-empty
  double dense_threshold = 0.1;    ///< frequency above which a latent is listed as dense
  bool include_dense = false;      ///< let dense latents into the top-N (they are listed apart anyway)
  int density_bins = 40;
  Index context_before = 12;  ///< text view: tokens shown before the example token
  Index context_after = 4;    ///< text view: tokens shown after it
};

/// The data a report is made of. @p W_dec is the decoder (d x m, one column per latent);
/// @p example(t) returns example t's activations (d values, e.g. a column of the data);
/// @p example_label(t), if set, a short label shown with it (e.g. the class name).
struct ReportInput {
  const FeatureTracker* tracker = nullptr;
  EvalMetrics metrics;
  nlohmann::json summary = nlohmann::json::object();  ///< key/value rows of the summary table
  Eigen::Ref<const Mat<float>> W_dec;                 ///< d x m decoder, one column per latent
  std::function<Vec<float>(Index)> example;
  std::function<std::string(Index)> example_label;
  std::optional<TrainLog> train_log;
  Vec<float> b_dec;  ///< decoder bias (d); with image data, adds a "b_dec + max * W_dec[:, j]" picture
  /// Text view: the token table of the data (example t = row t), and latent_values(latents,
  /// rows) = the codes f_j(x_r) as a |latents| x |rows| matrix (the SAE encoding those rows).
  const TokenTable* tokens = nullptr;
  std::function<Mat<float>(const std::vector<Index>&, const std::vector<std::int64_t>&)> latent_values;
  /// Logit effects of (some of) the shown features, and the vocabulary their ids index.
  std::vector<LogitEffect> logit_effects;
  const std::vector<std::string>* vocab = nullptr;

  explicit ReportInput(const FeatureTracker& t, const Eigen::Ref<const Mat<float>>& w) : tracker(&t), W_dec(w) {}
};

/// The latents a report shows: ReportOptions::feature_ids, or the top-N by
/// ReportOptions::order (ties: lower latent first) of the latents that fired and, unless
/// include_dense, are not dense (frequency <= dense_threshold).
inline std::vector<Index> select_features(const FeatureTracker& tr, const ReportOptions& o) {
  if (!o.feature_ids.empty()) {
    for (Index j : o.feature_ids)
      if (j < 0 || j >= tr.d_sae())
        throw std::invalid_argument("feature " + std::to_string(j) +
                                    " is outside [0, d_sae=" + std::to_string(tr.d_sae()) + ")");
    return o.feature_ids;
  }
  std::vector<Index> ids;
  for (Index j = 0; j < tr.d_sae(); ++j)
    if (tr.density().count(j) > 0 && (o.include_dense || tr.density().frequency(j) <= o.dense_threshold))
      ids.push_back(j);
  auto key = [&](Index j) {
    switch (o.order) {
      case FeatureOrder::Mass:
        return tr.density().sum(j);
      case FeatureOrder::Frequency:
        return tr.density().frequency(j);
      case FeatureOrder::Max:
        return static_cast<double>(tr.top().max_value(j));
    }
    return 0.0;
  };
  std::stable_sort(ids.begin(), ids.end(), [&](Index a, Index b) { return key(a) > key(b); });
  if (static_cast<Index>(ids.size()) > o.features) ids.resize(static_cast<std::size_t>(std::max<Index>(o.features, 0)));
  return ids;
}

namespace detail::report {

inline const char* css() {
  return R"(body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#111;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:0 0 4px}table.kv td{padding:1px 10px 1px 0}table.kv td:first-child{color:#555}
.charts{display:flex;flex-wrap:wrap;gap:8px}svg.chart{background:#fafafa;border:1px solid #e5e7eb}
svg .grid{stroke:#e5e7eb;stroke-width:1}svg .frame{fill:none;stroke:#9ca3af}svg .tick{font-size:10px;fill:#555}
svg .label{font-size:11px;fill:#333}svg .ctitle{font-size:12px;font-weight:600;fill:#111}svg .series{stroke-width:1.5}
.feature{border:1px solid #e5e7eb;border-radius:6px;padding:10px;margin:10px 0;display:flex;gap:14px}
.feature .meta{flex:0 0 190px}.feature .body{flex:1 1 auto;min-width:0}.pics{display:flex;gap:8px;margin-top:4px}.feature .stats{font-size:12px;color:#333}
.examples,.intervals{display:flex;flex-wrap:wrap;gap:4px;align-items:flex-start}
figure{margin:0;text-align:center;font-size:11px;color:#333}figure img{display:block;image-rendering:pixelated;border:1px solid #ccc}
img.decoder{image-rendering:pixelated;border:1px solid #ccc}table.examples td{padding:0 8px;font-size:12px}
.interval{border-left:3px solid #ddd;padding-left:6px}.interval .range{font-size:11px;color:#666}
.muted{color:#666;font-size:12px}.lists{font-size:12px;max-width:1100px;word-wrap:break-word}
.contexts{margin:2px 0 6px}.intervals.text,.intervals.text .examples{display:block}.context{font:12px/1.6 ui-monospace,Menlo,Consolas,monospace;margin:1px 0}
.ctx-meta{display:inline-block;min-width:150px;color:#666;font:11px system-ui,sans-serif;margin-right:6px}
.ctx-text{white-space:pre-wrap;word-break:break-all}.tok{border-radius:2px}.tok.ex{outline:1.5px solid #111;outline-offset:-1px}
.tok.nh{color:#aaa}.ws{color:#999;font-size:10px}
table.logit-effect{font-size:12px;border-collapse:collapse;margin:4px 0 8px}table.logit-effect th{text-align:left;font-weight:600;padding:0 6px}
table.logit-effect td{padding:0 6px}table.logit-effect td.lt{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
table.logit-effect td.up+td{color:#b45309}table.logit-effect td.down+td{color:#1d4ed8})";
}

inline std::string kv_row(const std::string& k, const std::string& v) {
  return "<tr><td>" + svg::escape(k) + "</td><td>" + svg::escape(v) + "</td></tr>";
}

inline std::string json_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return svg::num(v.get<double>(), 4);
  return v.dump();
}

/// A token's text as HTML: invalid UTF-8 -> U+FFFD, markup escaped, newline / tab / other
/// control characters as small visible glyphs, a whitespace-only token as middle dots.
inline std::string token_html(std::string_view raw) {
  const std::string t = utf8_sanitize(raw);
  if (t.empty()) return "<span class=\"ws\">&empty;</span>";
  std::string h;
  if (t.find_first_not_of(' ') == std::string::npos) {
    h = "<span class=\"ws\">";
    for (std::size_t i = 0; i < t.size(); ++i) h += "&middot;";
    return h + "</span>";
  }
  for (char c : t) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
      h += "<span class=\"ws\">&#x23CE;</span>";  // return symbol
    } else if (c == '\t') {
      h += "<span class=\"ws\">&rarr;</span>";
    } else if (u < 0x20 || u == 0x7F) {  // Unicode control pictures U+2400 + c, U+2421 for DEL
      char b[40];
      std::snprintf(b, sizeof b, "<span class=\"ws\">&#x%X;</span>", u == 0x7F ? 0x2421u : 0x2400u + u);
      h += b;
    } else {
      h += svg::escape(std::string_view(&c, 1));
    }
  }
  return h;
}

/// A float with enough digits to read back the same float ("%.9g").
inline std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

inline std::string list_text(const std::vector<Index>& v, std::size_t max_items = 200) {
  std::string s;
  for (std::size_t i = 0; i < v.size() && i < max_items; ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);  // (not `", " + to_string(...)`: GCC 12 -Wstringop-overflow false positive)
  }
  if (v.size() > max_items) s += ", ... (" + std::to_string(v.size() - max_items) + " more)";
  return v.empty() ? "none" : s;
}

}  // namespace detail::report

/// The report as one HTML string (see the file comment).
inline std::string render_report(const ReportInput& in, const ReportOptions& o) {
  using svg::escape;
  using svg::num;
  const FeatureTracker& tr = *in.tracker;
  const bool images = o.image_height > 0 && o.image_width > 0;
  if (images && static_cast<Index>(o.image_height) * o.image_width != in.W_dec.rows())
    throw std::invalid_argument("image shape " + std::to_string(o.image_height) + "x" + std::to_string(o.image_width) +
                                " does not match d_in=" + std::to_string(in.W_dec.rows()));
  if (in.W_dec.cols() != tr.d_sae())
    throw std::invalid_argument("report: decoder has " + std::to_string(in.W_dec.cols()) + " latents, the tracker " +
                                std::to_string(tr.d_sae()));
  const std::vector<Index> feats = select_features(tr, o);
  const Index n_examples = std::min(o.examples, tr.top().per_latent());
  const FeatureDensity& dens = tr.density();
  const bool text = in.tokens != nullptr && !images;

  // The examples of every shown feature (top n_examples, then the quantile-interval samples).
  std::vector<std::vector<QuantileInterval>> ivs(feats.size());
  if (o.intervals > 0)
    for (std::size_t f = 0; f < feats.size(); ++f)
      ivs[f] = tr.sampler().intervals(feats[f], o.intervals, o.per_interval);
  // Text view: the rows of all their contexts, and f_j at those rows (|feats| x |ctx_rows|).
  const TokenTable* tt = in.tokens;
  std::vector<std::int64_t> ctx_rows;
  Mat<float> ctx_acts;
  if (text) {
    if (o.context_before < 0 || o.context_after < 0)
      throw std::invalid_argument("report: context_before and context_after must be >= 0");
    if (!in.latent_values) throw std::invalid_argument("report: a token table needs ReportInput::latent_values");
    if (tt->harvested() < dens.tokens())
      throw std::invalid_argument("report: the token table has " + std::to_string(tt->harvested()) +
                                  " harvested rows, fewer than the " + std::to_string(dens.tokens()) +
                                  " analysed tokens");
    auto add_context = [&](std::int64_t r) {
      const auto [l0, l1] = tt->window(tt->line_of_row(r), o.context_before, o.context_after);
      for (Index l = l0; l < l1; ++l)
        if (tt->row(l) >= 0) ctx_rows.push_back(tt->row(l));
    };
    for (std::size_t f = 0; f < feats.size(); ++f) {
      const std::vector<Activation> top = tr.top().top(feats[f]);
      for (Index i = 0; i < n_examples && i < static_cast<Index>(top.size()); ++i)
        add_context(top[static_cast<std::size_t>(i)].example);
      for (const QuantileInterval& qi : ivs[f])
        for (const Activation& a : qi.examples) add_context(a.example);
    }
    std::sort(ctx_rows.begin(), ctx_rows.end());
    ctx_rows.erase(std::unique(ctx_rows.begin(), ctx_rows.end()), ctx_rows.end());
    if (!ctx_rows.empty()) {
      ctx_acts = in.latent_values(feats, ctx_rows);
      if (ctx_acts.rows() != static_cast<Index>(feats.size()) || ctx_acts.cols() != static_cast<Index>(ctx_rows.size()))
        throw std::invalid_argument("report: latent_values returned a matrix of the wrong shape");
    }
  }
  // One example as its text context (see the file comment); f = index of the feature in feats.
  auto context_html = [&](std::size_t f, const Activation& a, const std::string& cls, const std::string& lead) {
    const Index j = feats[f], line = tt->line_of_row(a.example);
    const double mx = tr.top().max_value(j);
    const auto [l0, l1] = tt->window(line, o.context_before, o.context_after);
    std::string c = "<div class=\"" + cls + " context\" data-row=\"" + std::to_string(a.example) + "\" data-act=\"" +
                    detail::report::exact(a.value) + "\"><span class=\"ctx-meta\">" + lead +
                    svg::escape(utf8_sanitize(tt->doc(line))) + " &middot; <b>" + svg::num(a.value) +
                    "</b></span><span class=\"ctx-text\">";
    for (Index l = l0; l < l1; ++l) {
      const std::int64_t r = tt->row(l);
      const std::string tok = detail::report::token_html(tt->text(l));
      const std::string id = "token " + std::to_string(tt->token_id(l));
      if (r < 0) {
        c += "<span class=\"tok nh\" title=\"" + id + ", not harvested\">" + tok + "</span>";
        continue;
      }
      const auto col = std::lower_bound(ctx_rows.begin(), ctx_rows.end(), r) - ctx_rows.begin();
      const float v = ctx_acts(static_cast<Index>(f), static_cast<Index>(col));
      const double alpha = mx > 0 ? std::clamp(static_cast<double>(v) / mx, 0.0, 1.0) : 0.0;
      c += "<span class=\"tok" + std::string(l == line ? " ex" : "") + "\" data-row=\"" + std::to_string(r) +
           "\" data-act=\"" + detail::report::exact(v) + "\" title=\"row " + std::to_string(r) + ", " + id +
           ": activation " + svg::num(v, 4) + "\"";
      if (alpha > 0) c += " style=\"background:rgba(234,88,12," + svg::num(alpha, 3) + ")\"";
      c += ">" + tok + "</span>";
    }
    return c + "</span></div>";
  };
  auto vocab_html = [&](Index id) {
    return in.vocab && id < static_cast<Index>(in.vocab->size())
               ? detail::report::token_html((*in.vocab)[static_cast<std::size_t>(id)])
               : "#" + std::to_string(id);
  };

  std::string h;
  h.reserve(1 << 20);
  h += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + escape(o.title) +
       "</title><style>" + detail::report::css() + "</style></head>\n";
  h += "<body data-features=\"" + std::to_string(feats.size()) + "\" data-examples=\"" + std::to_string(n_examples) +
       "\" data-images=\"" + (images ? "1" : "0") + "\" data-text=\"" + (text ? "1" : "0") + "\" data-logit=\"" +
       std::to_string(in.logit_effects.size()) + "\">\n<h1>" + escape(o.title) + "</h1>\n";

  // 1. summary
  h += "<section id=\"summary\"><h2>Summary</h2><table class=\"kv\">";
  for (auto it = in.summary.begin(); it != in.summary.end(); ++it)
    h += detail::report::kv_row(it.key(), detail::report::json_text(it.value()));
  const EvalMetrics& m = in.metrics;
  h += detail::report::kv_row("tokens analysed", std::to_string(m.tokens));
  h += detail::report::kv_row("l0 (mean active latents)", num(m.l0, 4));
  h += detail::report::kv_row("fvu", num(m.fvu, 4));
  h += detail::report::kv_row("explained variance", num(m.explained_variance, 4));
  h += detail::report::kv_row("mse", num(m.mse, 4));
  h += detail::report::kv_row("dead fraction", num(m.dead_fraction, 4));
  h += "</table></section>\n";

  // 2. training curves
  h += "<section id=\"training\"><h2>Training</h2>";
  if (in.train_log && !in.train_log->rows.empty()) {
    h += "<div class=\"charts\">";
    for (const std::string& name : in.train_log->series_names()) {
      svg::ChartOptions co;
      co.css_class = "chart train-curve";
      co.x_label = "step";
      co.log_y = name == "loss" || name == "fvu" || name == "mse" || name == "lr";
      h += svg::line_chart(name, in.train_log->series(name), co);
    }
    h += "</div>";
  } else {
    h += "<p class=\"muted\">No training log (train_log.jsonl) next to the SAE.</p>";
  }
  h += "</section>\n";

  // 3. density
  const DensityHistogram hist = dens.log10_histogram(o.density_bins);
  std::vector<double> edges, counts;
  for (std::size_t i = 0; i <= hist.counts.size(); ++i) edges.push_back(hist.bin_lo(i));
  for (auto c : hist.counts) counts.push_back(static_cast<double>(c));
  svg::ChartOptions dco;
  dco.width = 560;
  dco.height = 230;
  dco.css_class = "chart density-hist";
  dco.x_label = "log10(firing frequency)";
  dco.y_label = "latents";
  const std::vector<Index> dead = dens.dead_latents(), dense = dens.dense_latents(o.dense_threshold);
  h += "<section id=\"density\"><h2>Feature density</h2>";
  h += svg::histogram("Firing frequency of " + std::to_string(dens.d_sae()) + " latents over " +
                          std::to_string(dens.tokens()) + " tokens",
                      edges, counts, dco, {"dead " + std::to_string(hist.dead), static_cast<double>(hist.dead)});
  h += "<div class=\"lists\"><p class=\"dead-list\"><b>Dead latents</b> (never fired, " + std::to_string(dead.size()) +
       "): " + detail::report::list_text(dead) + "</p>";
  h += "<p class=\"dense-list\"><b>Dense latents</b> (frequency &gt; " + num(o.dense_threshold) + ", " +
       std::to_string(dense.size()) + "): " + detail::report::list_text(dense) + "</p></div></section>\n";

  // 4. features
  const int zoom = std::max(1, o.image_zoom);
  const std::string img_size = images ? " width=\"" + std::to_string(o.image_width * zoom) + "\" height=\"" +
                                            std::to_string(o.image_height * zoom) + "\""
                                      : "";
  auto example_image = [&](Index t) {
    const Vec<float> x = in.example(t);
    const double lo = std::min(0.0, static_cast<double>(x.minCoeff())), hi = static_cast<double>(x.maxCoeff());
    return image::png_data_uri(image::gray_png(x, o.image_height, o.image_width, lo, hi));
  };
  auto label_of = [&](Index t) { return in.example_label ? in.example_label(t) : std::string(); };

  h += "<section id=\"features\"><h2>Top " + std::to_string(feats.size()) + " features (by " +
       (o.feature_ids.empty() ? (o.order == FeatureOrder::Mass        ? "total activation"
                                 : o.order == FeatureOrder::Frequency ? "firing frequency"
                                                                      : "maximum activation")
                              : "request") +
       ")</h2>\n";
  const std::vector<double> qs = {0.1, 0.5, 0.9, 0.99};
  for (std::size_t f = 0; f < feats.size(); ++f) {
    const Index j = feats[f];
    const std::vector<Activation> top = tr.top().top(j);
    h += "<div class=\"feature\" id=\"feature-" + std::to_string(j) + "\"><div class=\"meta\"><h3>Feature " +
         std::to_string(j) + "</h3><div class=\"stats\">";
    h += "frequency " + num(dens.frequency(j), 3) + " (" + std::to_string(dens.count(j)) + " tokens)<br>";
    h += "mean when active " + num(dens.mean_when_active(j)) + ", max " + num(tr.top().max_value(j)) + "<br>";
    const std::vector<double> qv = tr.sampler().quantiles(j, qs);
    h += "quantiles" + std::string(tr.sampler().exact(j) ? "" : " (sampled)") + ": ";
    for (std::size_t i = 0; i < qs.size(); ++i)
      h += (i ? ", " : "") + std::string("q") + num(qs[i] * 100) + " " + num(qv[i]);
    h += "<br>decoder norm " + num(static_cast<double>(in.W_dec.col(j).norm()));
    if (in.example_label && !top.empty()) {  // label mix of the top examples
      std::map<std::string, int> mix;
      for (Index i = 0; i < n_examples && i < static_cast<Index>(top.size()); ++i)
        ++mix[label_of(top[static_cast<std::size_t>(i)].example)];
      std::vector<std::pair<int, std::string>> v;
      for (auto& [k, c] : mix) v.emplace_back(-c, k);
      std::sort(v.begin(), v.end());
      h += "<br>top examples: ";
      for (std::size_t i = 0; i < v.size(); ++i)
        h += (i ? ", " : "") + std::to_string(-v[i].first) + "&times; " + escape(v[i].second);
    }
    h += "</div>";
    // histogram of the sampled activations
    const std::vector<Activation> smp = tr.sampler().sample(j);
    if (!smp.empty()) {
      const double hi = smp.front().value, lo = std::min(0.0, static_cast<double>(smp.back().value));
      const int nb = 20;
      std::vector<double> e(nb + 1), c(nb, 0.0);
      for (int i = 0; i <= nb; ++i) e[static_cast<std::size_t>(i)] = lo + (hi - lo) * i / nb;
      for (const Activation& a : smp) {
        const int b = hi > lo ? static_cast<int>((a.value - lo) / (hi - lo) * nb) : 0;
        c[static_cast<std::size_t>(std::clamp(b, 0, nb - 1))] += 1;
      }
      svg::ChartOptions aco;
      aco.width = 230;
      aco.height = 110;
      aco.css_class = "chart act-hist";
      aco.color = "#ea580c";
      h += svg::histogram("activations (" + std::to_string(smp.size()) + " sampled)", e, c, aco);
    }
    if (images) {
      h += "<div class=\"pics\"><figure><img class=\"decoder\" alt=\"decoder direction of feature " +
           std::to_string(j) + "\"" + img_size + " src=\"" +
           image::png_data_uri(image::diverging_png(in.W_dec.col(j), o.image_height, o.image_width)) +
           "\"><figcaption>decoder direction<br>red +, blue &minus;</figcaption></figure>";
      if (in.b_dec.size() == in.W_dec.rows()) {
        const Vec<float> x = in.b_dec + tr.top().max_value(j) * in.W_dec.col(j);
        h += "<figure><img class=\"decoded\" alt=\"decoded feature " + std::to_string(j) + "\"" + img_size + " src=\"" +
             image::png_data_uri(image::gray_png(x, o.image_height, o.image_width,
                                                 std::min(0.0, static_cast<double>(x.minCoeff())),
                                                 static_cast<double>(x.maxCoeff()))) +
             "\"><figcaption>b_dec + max &middot; W_dec[:, j]</figcaption></figure>";
      }
      h += "</div>";
    } else {
      // the largest decoder coordinates instead of an image
      std::vector<Index> dims(static_cast<std::size_t>(in.W_dec.rows()));
      std::iota(dims.begin(), dims.end(), Index{0});
      std::partial_sort(
          dims.begin(), dims.begin() + std::min<std::ptrdiff_t>(5, static_cast<std::ptrdiff_t>(dims.size())),
          dims.end(), [&](Index a, Index b) { return std::abs(in.W_dec(a, j)) > std::abs(in.W_dec(b, j)); });
      h += "<div class=\"muted\">largest decoder coordinates: ";
      for (std::size_t i = 0; i < dims.size() && i < 5; ++i)
        h += (i ? ", " : "") + std::string("d") + std::to_string(dims[i]) + " " +
             num(static_cast<double>(in.W_dec(dims[i], j)));
      h += "</div>";
    }
    h += "</div>";  // meta

    h += "<div class=\"body\">";
    for (const LogitEffect& e : in.logit_effects) {
      if (e.feature != j) continue;
      h += "<div class=\"muted\">logit effect U&middot;W_dec[:, j]</div><table class=\"logit-effect\" data-feature=\"" +
           std::to_string(j) + "\"><tr><th colspan=\"2\">promoted</th><th colspan=\"2\">suppressed</th></tr>";
      for (std::size_t i = 0; i < std::max(e.promoted.size(), e.suppressed.size()); ++i) {
        h += "<tr>";
        for (const auto* side : {&e.promoted, &e.suppressed}) {
          if (i >= side->size()) {
            h += "<td></td><td></td>";
            continue;
          }
          const LogitToken& t = (*side)[i];
          h += std::string("<td class=\"lt ") + (side == &e.promoted ? "up" : "down") + "\" data-id=\"" +
               std::to_string(t.id) + "\" data-value=\"" + detail::report::exact(t.value) + "\" title=\"token " +
               std::to_string(t.id) + "\">" + vocab_html(t.id) + "</td><td>" + num(t.value, 3) + "</td>";
        }
        h += "</tr>";
      }
      h += "</table>";
      break;  // one table per block, also for a latent requested twice
    }
    h += "<div class=\"muted\">top activating examples</div>";
    if (text) {
      h += "<div class=\"contexts\">";
      for (Index i = 0; i < n_examples && i < static_cast<Index>(top.size()); ++i)
        h += context_html(f, top[static_cast<std::size_t>(i)], "example", std::to_string(i + 1) + ". ");
      h += "</div>";
    } else if (images) {
      h += "<div class=\"examples\">";
      for (Index i = 0; i < n_examples && i < static_cast<Index>(top.size()); ++i) {
        const Activation& a = top[static_cast<std::size_t>(i)];
        const std::string lab = label_of(a.example);
        h += "<figure class=\"example\"><img alt=\"example " + std::to_string(a.example) + "\"" + img_size + " src=\"" +
             example_image(a.example) + "\"><figcaption>#" + std::to_string(a.example) + " " + num(a.value) +
             (lab.empty() ? "" : "<br>" + escape(lab)) + "</figcaption></figure>";
      }
      h += "</div>";
    } else {
      h += "<table class=\"examples\"><tr><th>rank</th><th>example</th><th>activation</th>" +
           std::string(in.example_label ? "<th>label</th>" : "") + "</tr>";
      for (Index i = 0; i < n_examples && i < static_cast<Index>(top.size()); ++i) {
        const Activation& a = top[static_cast<std::size_t>(i)];
        h += "<tr class=\"example\"><td>" + std::to_string(i + 1) + "</td><td>" + std::to_string(a.example) +
             "</td><td>" + num(a.value, 4) + "</td>" +
             (in.example_label ? "<td>" + escape(label_of(a.example)) + "</td>" : std::string()) + "</tr>";
      }
      h += "</table>";
    }
    if (o.intervals > 0) {
      h += "<div class=\"muted\">sampled from activation quantile intervals</div><div class=\"intervals" +
           std::string(text ? " text" : "") + "\">";
      for (const QuantileInterval& qi : ivs[f]) {
        h += "<div class=\"interval\"><div class=\"range\">q" + num(qi.q_lo * 100) + "&ndash;" + num(qi.q_hi * 100) +
             ": " + num(qi.value_lo) + "&ndash;" + num(qi.value_hi) + "</div><div class=\"examples\">";
        for (const Activation& a : qi.examples) {
          if (text)
            h += context_html(f, a, "interval-example", "");
          else if (images)
            h += "<figure class=\"interval-example\"><img alt=\"example " + std::to_string(a.example) + "\" width=\"" +
                 std::to_string(o.image_width * 2) + "\" height=\"" + std::to_string(o.image_height * 2) + "\" src=\"" +
                 example_image(a.example) + "\"><figcaption>" + num(a.value) + "</figcaption></figure>";
          else
            h += "<span class=\"interval-example\">#" + std::to_string(a.example) + " (" + num(a.value) + ")</span> ";
        }
        h += "</div></div>";
      }
      h += "</div>";
    }
    h += "</div></div>\n";
  }
  h += "</section>\n<footer class=\"muted\">libsae report &middot; self-contained: inline SVG and PNG, no "
       "scripts</footer>\n</body></html>\n";
  return h;
}

/// Writes @p html to @p path atomically.
inline void write_report(const std::filesystem::path& path, const std::string& html) {
  io::write_file_atomic(path, std::span<const std::byte>(reinterpret_cast<const std::byte*>(html.data()), html.size()));
}

}  // namespace sae::interp
