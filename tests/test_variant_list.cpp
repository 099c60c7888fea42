// The list of variants (variants/list.hpp): names, aliases, options and what is derived from
// them (AnySae, parsing, option resolution) are consistent.
#include "helpers.hpp"

#include <set>

TEST_CASE("Variant list: names are unique, saved names are SAELens's, options are well formed", "[core][variants]") {
  std::set<std::string> names;
  int saved = 0;
  sae::Variants::for_each([&]<class V>(std::type_identity<V>) {
    INFO(V::name);
    REQUIRE(names.insert(std::string(V::name)).second);
    for (std::string_view a : V::aliases) REQUIRE(names.insert(std::string(a)).second);
    REQUIRE(sae::canonical_variant_name(V::name) == V::name);
    for (std::string_view a : V::aliases) REQUIRE(sae::canonical_variant_name(a) == V::name);
    REQUIRE(typename V::template Model<float>(sae_test::config(4, 8, 2)).config().architecture == V::name);
    if constexpr (V::saved_as_itself) {
      ++saved;
      // what libsae saves under this name, cfg.json readers (SAELens and libsae) read
      REQUIRE(sae::saelens_inference_architecture(V::name));
      auto cfg = sae_test::config(4, 8, 2);
      cfg.architecture = std::string(V::name);
      REQUIRE(sae::make_sae(cfg).config().architecture == V::name);
    }
    std::set<std::string> keys;
    for (const sae::OptionSpec& o : V::options()) {
      INFO(o.key);
      REQUIRE(keys.insert(o.key).second);
      REQUIRE_NOTHROW(sae::check_option(o, o.default_value));
    }
    REQUIRE_NOTHROW(sae::resolve_options<V>(nlohmann::json::object()));
  });
  REQUIRE(saved == static_cast<int>(std::variant_size_v<sae::AnySaeVariant>));
  REQUIRE_THROWS_WITH(sae::canonical_variant_name("gated"),
                      Catch::Contains("unknown architecture 'gated'") && Catch::Contains(sae::variant_names()));
}

TEST_CASE("Variant options: given values are checked; unknown keys refused", "[core][variants]") {
  using sae::OrtSaeVariant;
  const auto o = sae::resolve_options<OrtSaeVariant>({{"chunks", 3}, {"l1", 0.5}});  // l1 is relu's: ignored here
  REQUIRE(o.integer("chunks") == 3);
  REQUIRE(o.real("ortho") == sae::Orthogonality{}.coefficient);
  REQUIRE_THROWS_WITH(sae::resolve_options<OrtSaeVariant>({{"chunks", 0}}),
                      Catch::Contains("--chunks must be positive"));
  REQUIRE_THROWS_WITH(sae::resolve_options<OrtSaeVariant>({{"ortho", "x"}}),
                      Catch::Contains("--ortho must be a number"));
  REQUIRE_THROWS_WITH(sae::resolve_options<OrtSaeVariant>({{"chunkz", 2}}),
                      Catch::Contains("unknown training option 'chunkz'"));
  REQUIRE_THROWS_WITH(sae::resolve_options<sae::JumpReLUVariant>({{"bandwidth", -1.0}}),
                      Catch::Contains("--bandwidth must be positive"));
  REQUIRE_NOTHROW(sae::resolve_options<sae::JumpReLUVariant>({{"target_l0", nullptr}}));
  // The settings' JSON (checkpoints, libsae.train keywords) carries every option, and reads back.
  sae::TrainSettings s;
  s.arch = "ortsae";
  s.options = {{"chunks", 5}, {"matryoshka_widths", {2, 4}}};
  const nlohmann::json j = sae::train_settings_to_json(s);
  REQUIRE(j.at("chunks") == 5);
  REQUIRE(j.at("l1") == 0.3);
  REQUIRE(j.at("matryoshka_widths") == nlohmann::json({2, 4}));
  const sae::TrainSettings back = sae::train_settings_from_json(j);
  REQUIRE(sae::train_settings_to_json(back) == j);
}

namespace {
// A policy missing a hook, or with a misspelled one, is not an ActivationPolicy / LossTerm, so
// SparseAutoencoder<...> / CombinedLoss<...> refuse it at the declaration.
struct MisspelledActivation : sae::TopK {
  void save_state(sae::PolicyState&) const = delete;  // as if it were missing
};
struct TermWithoutHooks {
  static constexpr const char* name = "t";
};
struct TermWithMisspelledHook {
  static constexpr const char* name = "t";
  template <class Codes>
  void after_updat(const Codes&) {}
  void save_state(sae::PolicyState&) const {}
  void load_state(const sae::PolicyState&) {}
};
}  // namespace

TEST_CASE("Policy concepts accept the library's policies and reject incomplete ones", "[core][variants]") {
  STATIC_REQUIRE(sae::ActivationPolicy<sae::ReLU>);
  STATIC_REQUIRE(sae::ActivationPolicy<sae::TopK>);
  STATIC_REQUIRE(sae::ActivationPolicy<sae::BatchTopK>);
  STATIC_REQUIRE(sae::ActivationPolicy<sae::JumpReLU>);
  STATIC_REQUIRE(sae::SparseActivation<sae::TopK>);
  STATIC_REQUIRE(sae::DenseActivation<sae::JumpReLU>);
  STATIC_REQUIRE_FALSE(sae::ActivationPolicy<MisspelledActivation>);
  STATIC_REQUIRE(sae::LossTerm<sae::AuxK>);
  STATIC_REQUIRE(sae::LossTerm<sae::MatryoshkaInner>);
  STATIC_REQUIRE_FALSE(sae::LossTerm<TermWithoutHooks>);
  STATIC_REQUIRE_FALSE(sae::LossTerm<TermWithMisspelledHook>);
  STATIC_REQUIRE(sae::Variant<sae::MatryoshkaBatchTopKVariant>);
}
