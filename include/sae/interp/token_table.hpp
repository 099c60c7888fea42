/// @file sae/interp/token_table.hpp
/// The token table of language-model activations (which token each activation row is, in which
/// context window) and the vocabulary list, for the text view of `sae report`.
///
/// tokens.tsv (UTF-8), header line exactly `row\tctx\tpos\ttoken_id\tdoc\ttext`, then one line
/// per token of every context window, in order:
///   row       row of this token in the activations .npy (0-based), or -1 (not harvested);
///             the non-negative rows are 0, 1, 2, ... in order, without gaps
///   ctx       context window (non-decreasing: a window's lines are contiguous)
///   pos       position in the window: 0, 1, 2, ... within each ctx
///   token_id  integer
///   doc       short document label; text: the decoded token. Both escaped: `\\` `\t` `\n` `\r`
///             for backslash, tab, newline, carriage return; everything else raw bytes (token
///             pieces may be invalid UTF-8: utf8_sanitize() before showing them).
/// vocab.txt: one line per vocabulary entry, same escaping.
///
/// Storage: per line 8 + 8 + 4 + 4 + 8 bytes plus one shared text arena and a deduplicated
/// list of doc labels (consecutive equal labels share one entry), so millions of lines fit.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "../core/parameters.hpp"
#include "../io/error.hpp"

namespace sae::interp {

namespace detail::tokens {

/// Reads a whole file; IoError when it cannot be opened.
inline std::string read_all(const std::filesystem::path& path, const char* what) {
  if (!std::filesystem::is_regular_file(path)) throw io::IoError(path, "not a regular file");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw io::IoError(path, std::string("cannot open the ") + what);
  std::string s(static_cast<std::size_t>(in.tellg()), '\0');
  in.seekg(0);
  if (!in.read(s.data(), static_cast<std::streamsize>(s.size())))
    throw io::IoError(path, std::string("cannot read the ") + what);
  return s;
}

/// Calls f(line_number (1-based), line) for each line of @p s (a final '\n' ends the last
/// line; a trailing '\r' is dropped, so CRLF files read too).
template <class F>
void for_each_line(std::string_view s, F&& f) {
  std::int64_t n = 0;
  std::size_t at = 0;
  while (at < s.size()) {
    const char* nl = static_cast<const char*>(std::memchr(s.data() + at, '\n', s.size() - at));
    const std::size_t end = nl ? static_cast<std::size_t>(nl - s.data()) : s.size();
    std::string_view line = s.substr(at, end - at);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    f(++n, line);
    at = end + 1;
  }
}

}  // namespace detail::tokens

/// Appends @p field with its escapes (`\\` `\t` `\n` `\r`) undone to @p out; false on any other
/// backslash sequence (or a lone trailing backslash).
inline bool unescape_field(std::string_view field, std::string& out) {
  for (std::size_t i = 0; i < field.size(); ++i) {
    const char c = field[i];
    if (c != '\\') {
      out += c;
      continue;
    }
    if (++i == field.size()) return false;
    switch (field[i]) {
      case '\\':
        out += '\\';
        break;
      case 't':
        out += '\t';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      default:
        return false;
    }
  }
  return true;
}

/// @p s with every invalid UTF-8 sequence (bad lead or continuation byte, overlong form,
/// surrogate, > U+10FFFF, truncated) replaced by U+FFFD, one per maximal invalid subpart.
inline std::string utf8_sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte (Unicode Table 3-7)
    if (c >= 0xC2 && c <= 0xDF)
      len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    std::size_t k = 1;  // bytes of a valid prefix
    if (len > 0) {
      while (k < len && i + k < n) {
        const unsigned char b = p[i + k];
        if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
        ++k;
      }
    }
    if (len > 0 && k == len)
      out.append(s.substr(i, len));
    else
      out += "\xEF\xBF\xBD";
    i += k;
  }
  return out;
}

/// The parsed tokens.tsv (see the file comment). Line index l = 0 .. size()-1 (the file's line
/// l + 2, after the header).
class TokenTable {
 public:
  static constexpr const char* header = "row\tctx\tpos\ttoken_id\tdoc\ttext";

  /// Reads and validates @p path; IoError "PATH: line N: ..." for a bad header, a wrong number
  /// of columns, a non-integer field, rows out of order, positions or windows out of order, or
  /// a bad escape.
  explicit TokenTable(const std::filesystem::path& path) : path_(path) {
    parse(detail::tokens::read_all(path, "token table"));
  }

  const std::filesystem::path& path() const { return path_; }
  Index size() const { return static_cast<Index>(row_.size()); }               ///< lines (tokens)
  Index harvested() const { return static_cast<Index>(line_of_row_.size()); }  ///< lines with row >= 0

  std::int64_t row(Index l) const { return row_[u(l)]; }
  std::int64_t ctx(Index l) const { return ctx_[u(l)]; }
  std::int32_t pos(Index l) const { return pos_[u(l)]; }
  std::int64_t token_id(Index l) const { return token_id_[u(l)]; }
  std::string_view text(Index l) const { return {arena_.data() + text_at_[u(l)], text_at_[u(l) + 1] - text_at_[u(l)]}; }
  const std::string& doc(Index l) const { return docs_[static_cast<std::size_t>(doc_[u(l)])]; }

  /// The line of activation row @p r (0 <= r < harvested()).
  Index line_of_row(std::int64_t r) const { return line_of_row_[static_cast<std::size_t>(r)]; }

  /// Lines [first, last) of the same window as line @p l with pos in [pos - before, pos + after].
  std::pair<Index, Index> window(Index l, Index before, Index after) const {
    const Index first = l - std::min<Index>(before, pos(l));  // pos counts 0, 1, ... in a window
    Index last = l + 1;
    while (last < size() && last - l <= after && ctx(last) == ctx(l)) ++last;
    return {first, last};
  }

 private:
  static std::size_t u(Index l) { return static_cast<std::size_t>(l); }

  [[noreturn]] void fail(std::int64_t line, const std::string& what) const {
    throw io::IoError(path_, "line " + std::to_string(line) + ": " + what);
  }

  template <class T>
  T integer(std::string_view f, std::int64_t line, const char* name) const {
    T v{};
    const auto r = std::from_chars(f.data(), f.data() + f.size(), v);
    if (f.empty() || r.ec != std::errc() || r.ptr != f.data() + f.size())
      fail(line, std::string(name) + " is not an integer: '" + std::string(f.substr(0, 40)) + "'");
    return v;
  }

  void parse(const std::string& s) {
    bool header_seen = false;
    std::string doc_buf;
    std::string_view f[6];
    const auto lines = static_cast<std::size_t>(std::count(s.begin(), s.end(), '\n')) + 1;
    for (auto* v : {&row_, &ctx_, &token_id_, &line_of_row_}) v->reserve(lines);
    pos_.reserve(lines);
    doc_.reserve(lines);
    text_at_.reserve(lines + 1);
    arena_.reserve(s.size() / 4);
    text_at_.push_back(0);
    detail::tokens::for_each_line(s, [&](std::int64_t n, std::string_view line) {
      if (!header_seen) {
        if (line != header) fail(n, "expected the header 'row<TAB>ctx<TAB>pos<TAB>token_id<TAB>doc<TAB>text'");
        header_seen = true;
        return;
      }
      std::size_t cols = 0, at = 0;
      for (;;) {
        const std::size_t tab = line.find('\t', at);
        if (cols < 6) f[cols] = line.substr(at, tab == std::string_view::npos ? std::string_view::npos : tab - at);
        ++cols;
        if (tab == std::string_view::npos) break;
        at = tab + 1;
      }
      if (cols != 6) fail(n, "expected 6 tab-separated columns, got " + std::to_string(cols));
      const auto r = integer<std::int64_t>(f[0], n, "row");
      const auto c = integer<std::int64_t>(f[1], n, "ctx");
      const auto p = integer<std::int32_t>(f[2], n, "pos");
      const auto t = integer<std::int64_t>(f[3], n, "token_id");
      if (r < -1) fail(n, "row " + std::to_string(r) + " is neither -1 nor a row index");
      if (r >= 0 && r != harvested())
        fail(n, "row " + std::to_string(r) + " out of order: expected " + std::to_string(harvested()) +
                    " (rows count 0, 1, 2, ... without gaps)");
      const bool same_ctx = !ctx_.empty() && c == ctx_.back();
      if (!ctx_.empty() && c < ctx_.back())
        fail(n, "ctx " + std::to_string(c) + " after ctx " + std::to_string(ctx_.back()) + " (must not decrease)");
      const std::int32_t want = same_ctx ? pos_.back() + 1 : 0;
      if (p != want) fail(n, "pos " + std::to_string(p) + " where " + std::to_string(want) + " was expected");
      doc_buf.clear();
      if (!unescape_field(f[4], doc_buf)) fail(n, "bad escape in doc (only \\\\ \\t \\n \\r are allowed)");
      if (!unescape_field(f[5], arena_)) fail(n, "bad escape in text (only \\\\ \\t \\n \\r are allowed)");
      if (docs_.empty() || docs_.back() != doc_buf) docs_.push_back(doc_buf);
      if (r >= 0) line_of_row_.push_back(size());
      row_.push_back(r);
      ctx_.push_back(c);
      pos_.push_back(p);
      token_id_.push_back(t);
      doc_.push_back(static_cast<std::int32_t>(docs_.size() - 1));
      text_at_.push_back(arena_.size());
    });
    if (!header_seen) throw io::IoError(path_, "empty file: expected the header line");
  }

  std::filesystem::path path_;
  std::vector<std::int64_t> row_, ctx_, token_id_, line_of_row_;
  std::vector<std::int32_t> pos_, doc_;
  std::vector<std::size_t> text_at_;  ///< size() + 1 offsets into arena_
  std::string arena_;
  std::vector<std::string> docs_;
};

/// vocab.txt: one (unescaped) entry per line; IoError "PATH: line N: bad escape ...".
inline std::vector<std::string> read_vocab(const std::filesystem::path& path) {
  const std::string s = detail::tokens::read_all(path, "vocabulary file");
  std::vector<std::string> v;
  detail::tokens::for_each_line(s, [&](std::int64_t n, std::string_view line) {
    std::string e;
    if (!unescape_field(line, e))
      throw io::IoError(path, "line " + std::to_string(n) + ": bad escape (only \\\\ \\t \\n \\r are allowed)");
    v.push_back(std::move(e));
  });
  return v;
}

}  // namespace sae::interp
