/// @file sae/train/options.hpp
/// The training options a variant owns (`--l1` for ReLU, `--chunks` for OrtSAE ...): each
/// variant declares them (sae/variants/, `options`) with their type, default, check and help;
/// `sae train` turns them into flags, libsae.train into keywords, checkpoints store them, and
/// check_option() validates them, all from that one declaration.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sae {

/// The type of an option's value.
enum class OptionType {
  Real,          ///< double
  OptionalReal,  ///< double or unset (null): the variant derives a default
  Integer,       ///< std::int64_t
  IntegerList,   ///< std::vector<std::int64_t> (`--flag 1,2,3`)
};

/// What a value must satisfy (checked by check_option, the same for every front end).
enum class OptionCheck {
  Any,
  NonNegative,  ///< >= 0 (every element of a list)
  Positive,     ///< > 0 (every element of a list)
};

/// One option: its key (TrainSettings::options key, libsae.train keyword, `--key` with '_' as
/// '-'), type, default (null: unset), check, and a one-line help.
struct OptionSpec {
  const char* key;
  OptionType type;
  nlohmann::json default_value;
  OptionCheck check;
  const char* help;

  /// The `sae train` flag: "--" + key with '_' as '-'.
  std::string flag() const {
    std::string f = std::string("--") + key;
    for (char& c : f)
      if (c == '_') c = '-';
    return f;
  }
};

/// std::invalid_argument "--flag must be ..." unless @p v has @p spec's type and passes its
/// check (null is allowed for OptionalReal).
inline void check_option(const OptionSpec& spec, const nlohmann::json& v) {
  const std::string flag = spec.flag();
  auto fail = [&](const std::string& why) { throw std::invalid_argument(flag + " " + why); };
  auto check_number = [&](double x) {
    if (!std::isfinite(x)) fail("must be a finite number, got " + nlohmann::json(x).dump());
    if (spec.check == OptionCheck::NonNegative && !(x >= 0)) fail("must be >= 0, got " + nlohmann::json(x).dump());
    if (spec.check == OptionCheck::Positive && !(x > 0)) fail("must be positive, got " + nlohmann::json(x).dump());
  };
  switch (spec.type) {
    case OptionType::OptionalReal:
      if (v.is_null()) return;
      [[fallthrough]];
    case OptionType::Real:
      if (!v.is_number()) fail("must be a number, got " + v.dump());
      check_number(v.get<double>());
      return;
    case OptionType::Integer:
      if (!v.is_number_integer()) fail("must be an integer, got " + v.dump());
      check_number(static_cast<double>(v.get<std::int64_t>()));
      return;
    case OptionType::IntegerList:
      if (!v.is_array()) fail("must be a list of integers, got " + v.dump());
      for (const auto& e : v) {
        if (!e.is_number_integer()) fail("must be a list of integers, got " + v.dump());
        check_number(static_cast<double>(e.get<std::int64_t>()));
      }
      return;
  }
}

/// A variant's options with every value resolved (given, else the default), read by type.
/// nlohmann::json::exception for a key the variant did not declare.
class OptionValues {
 public:
  OptionValues() = default;
  explicit OptionValues(nlohmann::json values) : v_(std::move(values)) {}

  double real(const char* key) const { return v_.at(key).get<double>(); }
  std::optional<double> optional_real(const char* key) const {
    const auto& x = v_.at(key);
    return x.is_null() ? std::optional<double>() : x.get<double>();
  }
  std::int64_t integer(const char* key) const { return v_.at(key).get<std::int64_t>(); }
  std::vector<std::int64_t> integers(const char* key) const { return v_.at(key).get<std::vector<std::int64_t>>(); }
  const nlohmann::json& json() const { return v_; }

 private:
  nlohmann::json v_ = nlohmann::json::object();
};

}  // namespace sae
