/// @file sae/variants/list.hpp
/// The one list of SAE variants. Adding a variant: write its unit (a header in this folder,
/// see variant.hpp for what it holds) and add it to Variants below; `--arch`, its options, the
/// training dispatch, AnySae, checkpoints and the docs table follow from here.
#pragma once

#include <algorithm>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "batch_topk.hpp"
#include "jumprelu.hpp"
#include "matryoshka.hpp"
#include "ortsae.hpp"
#include "standard.hpp"
#include "topk.hpp"
#include "variant.hpp"

namespace sae {

template <Variant... V>
struct VariantList {
  /// f(std::type_identity<V>{}) for every variant, in list order.
  template <class F>
  static void for_each(F&& f) {
    (f(std::type_identity<V>{}), ...);
  }
};

/// Every variant libsae trains, in the order `--arch` lists them.
using Variants = VariantList<StandardVariant, TopKVariant, BatchTopKVariant, JumpReLUVariant, OrtSaeVariant,
                             MatryoshkaBatchTopKVariant>;

/// True if @p s is variant V's name or one of its aliases.
template <Variant V>
bool variant_named(std::string_view s) {
  return s == V::name || std::find(V::aliases.begin(), V::aliases.end(), s) != V::aliases.end();
}

/// Every name and alias, for `--arch` choices.
inline std::vector<std::string> variant_name_list() {
  std::vector<std::string> out;
  Variants::for_each([&]<class V>(std::type_identity<V>) {
    out.emplace_back(V::name);
    for (std::string_view n : V::aliases) out.emplace_back(n);
  });
  return out;
}

/// "standard|relu|topk|..." (names and aliases, in list order), for messages and --help.
inline std::string variant_names(std::string_view sep = "|") {
  std::string out;
  for (const std::string& n : variant_name_list()) out += (out.empty() ? "" : std::string(sep)) + n;
  return out;
}

/// Runs f(std::type_identity<V>{}) for the variant named (or aliased) @p name; throws
/// std::invalid_argument "unknown architecture 'X' (expected ...)" otherwise.
template <class F>
decltype(auto) with_variant(std::string_view name, F&& f) {
  using R = decltype(f(std::type_identity<TopKVariant>{}));
  if constexpr (std::is_void_v<R>) {
    bool found = false;
    Variants::for_each([&]<class V>(std::type_identity<V> v) {
      if (!found && variant_named<V>(name)) {
        found = true;
        f(v);
      }
    });
    if (!found)
      throw std::invalid_argument("unknown architecture '" + std::string(name) + "' (expected " + variant_names() +
                                  ")");
  } else {
    std::optional<R> r;
    Variants::for_each([&]<class V>(std::type_identity<V> v) {
      if (!r && variant_named<V>(name)) r.emplace(f(v));
    });
    if (!r)
      throw std::invalid_argument("unknown architecture '" + std::string(name) + "' (expected " + variant_names() +
                                  ")");
    return R(std::move(*r));  // a prvalue: decltype(auto) is R, not a reference to r
  }
}

/// The canonical name of the variant @p name names (an alias resolved); std::invalid_argument
/// for an unknown name.
inline std::string canonical_variant_name(std::string_view name) {
  return with_variant(name, []<class V>(std::type_identity<V>) { return std::string(V::name); });
}

/// True if the variant named @p name uses k (false for names no variant has).
inline bool variant_name_uses_k(std::string_view name) {
  bool uses = false;
  Variants::for_each([&]<class V>(std::type_identity<V>) {
    if (variant_named<V>(name)) uses = variant_uses_k<V>;
  });
  return uses;
}

/// Every variant's options, each key once (variants sharing a term share its options), with
/// the names of the variants that read it.
struct DeclaredOption {
  OptionSpec spec;
  std::vector<std::string> used_by;
};
inline std::vector<DeclaredOption> all_variant_options() {
  std::vector<DeclaredOption> out;
  Variants::for_each([&]<class V>(std::type_identity<V>) {
    for (const OptionSpec& s : V::options()) {
      auto it = std::find_if(out.begin(), out.end(),
                             [&](const DeclaredOption& d) { return std::string_view(d.spec.key) == s.key; });
      if (it == out.end())
        out.push_back({s, {std::string(V::name)}});
      else
        it->used_by.emplace_back(V::name);
    }
  });
  return out;
}

/// Variant V's options resolved from @p given (TrainSettings::options): each declared key's
/// value, else its default; std::invalid_argument for a value that fails its check, and for a
/// given key that no variant declares. Keys of other variants' options are ignored.
template <Variant V>
OptionValues resolve_options(const nlohmann::json& given) {
  nlohmann::json out = nlohmann::json::object();
  for (const OptionSpec& s : V::options()) {
    const auto it = given.find(s.key);
    out[s.key] = it != given.end() ? *it : s.default_value;
    check_option(s, out[s.key]);
  }
  const auto all = all_variant_options();
  for (const auto& [key, value] : given.items()) {
    if (std::none_of(all.begin(), all.end(), [&](const DeclaredOption& d) { return key == d.spec.key; }))
      throw std::invalid_argument("unknown training option '" + key + "'");
  }
  return OptionValues(std::move(out));
}

/// The markdown table of the variants (docs/variants.md holds it between its `variants:begin`
/// and `variants:end` markers; `sae variants` prints it and a test compares the two).
inline std::string variants_markdown_table() {
  std::string t = "| `--arch` | what it is | its options (default) | saved as |\n|---|---|---|---|\n";
  Variants::for_each([&]<class V>(std::type_identity<V>) {
    std::string names = "`" + std::string(V::name) + "`";
    for (std::string_view a : V::aliases) names += " (`" + std::string(a) + "`)";
    std::string opts;
    if (variant_uses_k<V>) opts = "`--k`";
    for (const OptionSpec& o : V::options()) {
      opts += (opts.empty() ? "" : ", ") + ("`" + o.flag() + "`");
      if (!o.default_value.is_null() && !(o.default_value.is_array() && o.default_value.empty()))
        opts += " (" + o.default_value.dump() + ")";
    }
    const std::string saved = V::saved_as_itself ? "`" + std::string(V::name) + "`" : "`jumprelu` + threshold";
    t += "| " + names + " | " + std::string(V::summary) + " | " + (opts.empty() ? "—" : opts) + " | " + saved + " |\n";
  });
  return t;
}

/// The variants saved under their own name (BatchTopK and OrtSAE are saved as JumpReLU), as
/// std::variant<V::Model<float>...>: what AnySae holds.
namespace detail::variants {
template <class Acc, class... V>
struct saved;
template <class... M>
struct saved<std::variant<M...>> {
  using type = std::variant<M...>;
};
template <class... M, class V, class... Rest>
struct saved<std::variant<M...>, V, Rest...> {
  using type = typename std::conditional_t<V::saved_as_itself,
                                           saved<std::variant<M..., typename V::template Model<float>>, Rest...>,
                                           saved<std::variant<M...>, Rest...>>::type;
};
template <class List>
struct saved_of;
template <class... V>
struct saved_of<VariantList<V...>> {
  using type = typename saved<std::variant<>, V...>::type;
};
}  // namespace detail::variants

using SavedSaeVariant = typename detail::variants::saved_of<Variants>::type;

}  // namespace sae
