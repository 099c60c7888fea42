/// @file sae/core/policies.hpp
/// The two policy interfaces of SparseAutoencoder<Activation, Loss, Scalar> as concepts
/// (ActivationPolicy, LossTerm), and PolicyState, the state a policy keeps in a checkpoint.
///
/// Every hook a policy may need is required, so a misspelled hook is a compile error naming
/// the concept, not a hook silently never called; a policy without state or per-step update
/// writes the hook with an empty body. The interfaces in prose, with an example each, are in
/// activations/relu.hpp (Activation) and losses/reconstruction.hpp (LossTerm).
#pragma once

#include <bit>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "kernels.hpp"
#include "parameters.hpp"
#include "sparse_codes.hpp"

namespace sae {

/// j[key] = v (readable; null if not finite) and j[key + "_bits"] = its IEEE bit pattern, which
/// get_exact() reads back, so a double survives JSON exactly (checkpoints).
inline void put_exact(nlohmann::json& j, const std::string& key, double v) {
  j[key] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
  j[key + "_bits"] = std::bit_cast<std::uint64_t>(v);
}
/// The double put_exact() stored; nlohmann::json::exception if it is missing.
inline double get_exact(const nlohmann::json& j, const std::string& key) {
  return std::bit_cast<double>(j.at(key + "_bits").get<std::uint64_t>());
}

/// What a policy (an activation or a loss term) saves in a training checkpoint and reads back:
/// scalars (a double is kept with its bit pattern, so it round-trips exactly) and per-latent
/// integer arrays (stored as I64 tensors). train/checkpoint.hpp stores an activation's state
/// under "activation" and a loss term's under "loss.<term name>".
struct PolicyState {
  nlohmann::json values = nlohmann::json::object();
  std::map<std::string, std::vector<std::int64_t>> counts;

  void put(const std::string& key, double v) { put_exact(values, key, v); }
  double get(const std::string& key) const { return get_exact(values, key); }
};

/// Base of a LossTerm that keeps nothing between steps: its after_update and checkpoint hooks
/// are empty. A term with state (AuxK) writes all three itself.
struct StatelessTerm {
  template <class Codes>
  void after_update(const Codes&) {}
  void save_state(PolicyState&) const {}
  void load_state(const PolicyState&) {}
};

namespace detail::policy {
/// Stand-ins for the callables the model passes to a sparse activation (see topk.hpp).
struct TopCArchetype {
  void operator()(Index, float*, std::int32_t*, Index*) const {}
};
struct PreactArchetype {
  void operator()(Index, Vec<float>&) const {}
};
}  // namespace detail::policy

/// What every activation has: its traits, its configuration from the SaeConfig, its update
/// after each optimizer step and its checkpoint state.
template <class A>
concept ActivationCommon = std::default_initializable<A> && std::copy_constructible<A> &&
    requires(A a, const A ca, const SaeConfig& cfg, Parameters<float>& p, PolicyState& ps, const PolicyState& cps) {
  { A::family } -> std::convertible_to<std::string_view>;  ///< cfg.json name of the activation family
  { A::sparse } -> std::convertible_to<bool>;              ///< codes are SparseCodes (true) or m x B
  { A::uses_k } -> std::convertible_to<bool>;              ///< reads cfg.k
  { A::unit_norm_decoder } -> std::convertible_to<bool>;
  { A::decoder_init_norm } -> std::convertible_to<double>;
  { A::has_threshold } -> std::convertible_to<bool>;  ///< owns Parameters::threshold
  a.configure(cfg);
  ca.save_state(ps);
  a.load_state(cps);
};

/// A sparse (TopK-family) activation: a selection from the fused encoder's candidates
/// (select_top) or from blocks of pre-activations (select), and backward on the kept values.
template <class A>
concept SparseActivation = ActivationCommon<A> && A::sparse &&
    requires(A a, const A ca, SparseCodes<float>& codes, std::vector<float>& g, Parameters<float>& p,
             const Mat<float>& Z, detail::policy::TopCArchetype top_c) {
  ca.backward(codes, g);
  a.after_update(p, codes);
  requires requires { ca.select_top(Index{}, Index{}, top_c, codes); } || requires {
    ca.select(Z, Index{}, codes, p);
  };
};

/// A dense activation (ReLU, JumpReLU): codes in the pre-activations' m x B buffer, backward
/// tile by tile (kernels::dense_backward).
template <class A>
concept DenseActivation = ActivationCommon<A> &&(!A::sparse) &&
                          requires(A a, const A ca, Mat<float>& ZF, Parameters<float>& p, const Parameters<float>& cp,
                                   kernels::LatentList& below, float* acc) {
  a.after_update(p, ZF);
  ca.finish_backward(Index{}, Index{}, acc, cp, p);
};

/// An Activation policy of SparseAutoencoder.
template <class A>
concept ActivationPolicy = SparseActivation<A> || DenseActivation<A>;

/// A LossTerm (losses/reconstruction.hpp documents the interface): its name, its update after
/// each step and its checkpoint state; accumulate() is checked where the model calls it.
template <class T>
concept LossTerm = std::default_initializable<T> &&
    requires(T t, const T ct, const SparseCodes<float>& sc, const Mat<float>& dc, PolicyState& ps,
             const PolicyState& cps) {
  { T::name } -> std::convertible_to<std::string_view>;
  ct.save_state(ps);
  t.load_state(cps);
  requires requires { t.after_update(sc); } || requires {
    t.after_update(dc);
  };
};

}  // namespace sae
