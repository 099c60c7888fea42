/// @file sae/detail/json_guard.hpp
/// Guards for parsing untrusted JSON (safetensors headers, cfg.json): a nesting-depth pre-scan
/// so nlohmann's recursive parser never sees pathological nesting, and a parse that rejects
/// duplicate object keys (the DOM would silently keep only the last one).
#pragma once

#include <algorithm>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace sae::detail {

/// Deepest nesting the readers accept for JSON coming from files.
inline constexpr int max_json_depth = 64;

/// Maximum nesting depth of '[' / '{' outside JSON strings (a linear pre-scan; a string's
/// escapes are skipped so "\"" does not end it).
inline int json_nesting_depth(std::string_view s) noexcept {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

/// Parses untrusted JSON text. Returns "" and sets `out`, or returns a one-line problem:
/// nesting deeper than max_json_depth, invalid JSON (including invalid UTF-8 inside strings),
/// or a duplicate key in any object.
inline std::string parse_untrusted_json(std::string_view text, nlohmann::json& out) {
  using nlohmann::json;
  if (json_nesting_depth(text) > max_json_depth)
    return "JSON is nested more than " + std::to_string(max_json_depth) + " levels deep";
  struct Duplicate {
    std::string key;
  };
  try {
    std::vector<std::set<std::string>> keys;
    json::parser_callback_t cb = [&keys](int, json::parse_event_t ev, json& parsed) {
      if (ev == json::parse_event_t::object_start) {
        keys.emplace_back();
      } else if (ev == json::parse_event_t::object_end) {
        if (!keys.empty()) keys.pop_back();
      } else if (ev == json::parse_event_t::key && !keys.empty()) {
        const auto& k = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(k).second) throw Duplicate{k};
      }
      return true;
    };
    out = json::parse(text.begin(), text.end(), cb);
  } catch (const Duplicate& d) {
    std::string k;
    for (unsigned char c : std::string_view(d.key).substr(0, 80))
      k += (c >= 0x20 && c < 0x7F) ? static_cast<char>(c) : '?';
    return "duplicate key '" + k + "'";
  } catch (const json::exception& e) {
    std::string msg = "invalid JSON: ";
    for (unsigned char c : std::string_view(e.what()).substr(0, 200))
      msg += (c >= 0x20 && c < 0x7F) ? static_cast<char>(c) : '?';
    return msg;
  }
  return {};
}

}  // namespace sae::detail
