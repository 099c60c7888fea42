/// @file sae/interp/svg.hpp
/// Inline SVG charts for self-contained HTML reports: a line chart (training curves) and a
/// bar histogram (feature density, activation distributions). Plain strings, no scripts, no
/// external resources; sizes in CSS pixels.
///
/// Axes: "nice" ticks at 1, 2 or 5 times a power of ten (about 4-6 per axis); a line chart's y
/// axis is logarithmic when ChartOptions::log_y is set and every value is positive.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sae::interp::svg {

/// Escapes &, <, >, " and ' for HTML text and attribute values.
inline std::string escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

/// Short number: %.{digits}g ("0.0123", "1.5e+04"); "nan"/"inf" as such.
inline std::string num(double v, int digits = 3) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

/// Tick positions covering [lo, hi] at a 1/2/5 x 10^k step, about @p target of them.
inline std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  std::vector<double> t;
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) return {lo};
  const double raw = (hi - lo) / std::max(target, 1);
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / p;  // in [1, 10): round to the nearest of 1, 2, 5, 10
  const double step = (r < 1.5 ? 1.0 : r < 3.0 ? 2.0 : r < 7.0 ? 5.0 : 10.0) * p;
  const auto k0 = static_cast<long long>(std::ceil(lo / step - 1e-9)),
             k1 = static_cast<long long>(std::floor(hi / step + 1e-9));
  for (long long k = k0; k <= k1; ++k) t.push_back(static_cast<double>(k) * step);
  return t;
}

struct ChartOptions {
  int width = 340, height = 200;
  std::string css_class = "chart";
  std::string x_label, y_label;
  bool log_y = false;  ///< log10 y axis (ignored unless every y > 0)
  std::string color = "#2563eb";
};

namespace detail {
struct Frame {
  double x0, y0, x1, y1;  // plot area in pixels
  double xlo, xhi, ylo, yhi;
  double px(double x) const { return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0); }
  double py(double y) const { return y1 - (y - ylo) / (yhi - ylo) * (y1 - y0); }
};

inline std::string open_svg(const ChartOptions& o, std::string_view title) {
  std::string s = "<svg class=\"" + escape(o.css_class) + "\" width=\"" + std::to_string(o.width) + "\" height=\"" +
                  std::to_string(o.height) + "\" viewBox=\"0 0 " + std::to_string(o.width) + " " +
                  std::to_string(o.height) + "\" role=\"img\">";
  s += "<title>" + escape(title) + "</title>";
  s += "<text x=\"" + std::to_string(o.width / 2) + "\" y=\"14\" text-anchor=\"middle\" class=\"ctitle\">" +
       escape(title) + "</text>";
  return s;
}

/// Axes, grid and tick labels; y tick labels show 10^v when log_y.
inline std::string axes(const Frame& f, const ChartOptions& o, bool log_y, bool x_ticks = true) {
  std::string s;
  char buf[256];
  for (double y : nice_ticks(f.ylo, f.yhi, 4)) {
    const double py = f.py(y);
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" class=\"tick\">",
                  f.x0, py, f.x1, py, f.x0 - 4, py + 3.5);
    s += buf;
    s += log_y ? num(std::pow(10.0, y), 2) : num(y, 3);
    s += "</text>";
  }
  if (x_ticks)
    for (double x : nice_ticks(f.xlo, f.xhi, 4)) {
      std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" class=\"tick\">", f.px(x),
                    f.y1 + 13);
      s += buf;
      s += num(x, 4) + "</text>";
    }
  std::snprintf(buf, sizeof buf, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" class=\"frame\"/>", f.x0,
                f.y0, f.x1 - f.x0, f.y1 - f.y0);
  s += buf;
  if (!o.x_label.empty()) {
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" class=\"label\">",
                  (f.x0 + f.x1) / 2, o.height - 3);
    s += buf + escape(o.x_label) + "</text>";
  }
  if (!o.y_label.empty()) {
    std::snprintf(buf, sizeof buf,
                  "<text x=\"10\" y=\"%.1f\" text-anchor=\"middle\" class=\"label\" transform=\"rotate(-90 10 %.1f)\">",
                  (f.y0 + f.y1) / 2, (f.y0 + f.y1) / 2);
    s += buf + escape(o.y_label) + "</text>";
  }
  return s;
}
}  // namespace detail

/// A line chart of the points (x_i, y_i) (non-finite values are skipped).
inline std::string line_chart(std::string_view title, const std::vector<std::pair<double, double>>& pts,
                              const ChartOptions& o = {}) {
  std::vector<std::pair<double, double>> p;
  for (auto [x, y] : pts)
    if (std::isfinite(x) && std::isfinite(y)) p.emplace_back(x, y);
  bool log_y = o.log_y && !p.empty();
  for (auto& q : p) log_y = log_y && q.second > 0;
  if (log_y)
    for (auto& q : p) q.second = std::log10(q.second);
  std::string s = detail::open_svg(o, title);
  detail::Frame f{50, 22, static_cast<double>(o.width) - 18, static_cast<double>(o.height) - 30, 0, 1, 0, 1};
  if (!p.empty()) {
    f.xlo = f.xhi = p[0].first;
    f.ylo = f.yhi = p[0].second;
    for (auto [x, y] : p) {
      f.xlo = std::min(f.xlo, x), f.xhi = std::max(f.xhi, x);
      f.ylo = std::min(f.ylo, y), f.yhi = std::max(f.yhi, y);
    }
    if (!(f.xhi > f.xlo)) f.xhi = f.xlo + 1;
    const double pad = (f.yhi - f.ylo) * 0.05;
    if (pad > 0)
      f.ylo -= pad, f.yhi += pad;
    else
      f.ylo -= 0.5, f.yhi += 0.5;
  }
  s += detail::axes(f, o, log_y);
  std::string pl = "<polyline class=\"series\" fill=\"none\" stroke=\"" + escape(o.color) + "\" points=\"";
  char buf[64];
  for (auto [x, y] : p) {
    std::snprintf(buf, sizeof buf, "%.1f,%.1f ", f.px(x), f.py(y));
    pl += buf;
  }
  s += pl + "\"/></svg>";
  return s;
}

/// A bar histogram: bar i spans [edges[i], edges[i+1]) with height counts[i].
/// @p extra_bar, if its label is non-empty, is drawn apart, right of the plot (e.g. dead latents).
inline std::string histogram(std::string_view title, const std::vector<double>& edges,
                             const std::vector<double>& counts, const ChartOptions& o = {},
                             std::pair<std::string, double> extra_bar = {}) {
  std::string s = detail::open_svg(o, title);
  const bool extra = !extra_bar.first.empty();
  const double right = extra ? 56 : 18;  // the extra bar sits right of the plot
  detail::Frame f{50, 22, static_cast<double>(o.width) - right, static_cast<double>(o.height) - 30, 0, 1, 0, 1};
  if (edges.size() == counts.size() + 1 && !counts.empty()) {
    f.xlo = edges.front();
    f.xhi = edges.back();
    double top = extra ? extra_bar.second : 0.0;
    for (double c : counts) top = std::max(top, c);
    f.yhi = top > 0 ? top * 1.05 : 1;
  }
  s += detail::axes(f, o, false);
  char buf[256];
  if (edges.size() == counts.size() + 1)
    for (std::size_t i = 0; i < counts.size(); ++i) {
      if (counts[i] <= 0) continue;
      const double xa = f.px(edges[i]), xb = f.px(edges[i + 1]), y = f.py(counts[i]);
      std::snprintf(buf, sizeof buf,
                    "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\">"
                    "<title>[%s, %s): %s</title></rect>",
                    xa + 0.5, y, std::max(xb - xa - 1.0, 0.5), f.y1 - y, escape(o.color).c_str(), num(edges[i]).c_str(),
                    num(edges[i + 1]).c_str(), num(counts[i], 6).c_str());
      s += buf;
    }
  if (extra) {
    const double y = f.py(extra_bar.second);
    std::snprintf(buf, sizeof buf,
                  "<rect class=\"bar extra\" x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"%.1f\" fill=\"#9ca3af\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" class=\"tick\">",
                  f.x1 + 21, y, f.y1 - y, f.x1 + 28, f.y1 + 13);
    s += buf + escape(extra_bar.first) + "</text>";
  }
  return s + "</svg>";
}

}  // namespace sae::interp::svg
