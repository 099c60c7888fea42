/// @file sae/core/sparse_autoencoder.hpp
/// SparseAutoencoder<Activation, Loss, Scalar>: the one encoder/decoder core of every variant.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "../config.hpp"
#include "../detail/omp.hpp"
#include "../detail/random.hpp"
#include "../losses/combined_loss.hpp"
#include "kernels.hpp"
#include "parameters.hpp"
#include "policies.hpp"
#include "sparse_codes.hpp"
#include "step_state.hpp"

namespace sae {

/// The architecture name (cfg.json, checkpoints, reports) of SparseAutoencoder<Activation, Loss>:
/// the activation's family, unless a variant whose loss makes it another architecture
/// specialises this (OrtSAE = BatchTopK + Orthogonality, variants/ortsae.hpp).
template <class Activation, class Loss>
inline constexpr std::string_view architecture_name_of = Activation::family;

/// A sparse autoencoder with d = d_in inputs and m = d_sae latents.
///
///     z     = W_enc^T (x - b_dec) + b_enc      pre-activations, m values
///     f     = Activation(z)                    codes: dense (ReLU) or SparseCodes (TopK)
///     x_hat = W_dec f + b_dec                  reconstruction
///
/// or, configured as a transcoder (cfg.d_out > 0; Dunefsky et al. 2024), a map from x (d_in
/// values) to a target y of d_out values, with the optional linear skip term of a skip
/// transcoder (cfg.skip; Paulo et al. 2025):
///
///     z     = W_enc^T x + b_enc                 (no b_dec subtraction: b_dec has d_out values)
///     y_hat = W_dec f + b_dec [+ W_skip x]     trained against y (forward_backward(X, Y, ...))
///
/// Batches are d x B column-major matrices, one token per column (a C-order [B, d] array
/// viewed without a copy). The variant is fixed at compile time: @p Activation is an
/// Activation policy (relu.hpp documents the interface), @p Loss a CombinedLoss of LossTerms,
/// @p Scalar float (training) or double (gradient checks).
///
/// The core includes no policy: the variants (activation + loss) are named in
/// sae/variants/, one header each, and listed once in sae/variants/list.hpp.
///
/// Threading: encode/decode/forward_backward use OpenMP and Eigen's threads internally
/// (set_num_threads), each kernel only when its work is worth them (detail::min_parallel_flops:
/// a small model runs on the calling thread); one model must not run two of them concurrently
/// on the same StepState.
template <ActivationPolicy Activation, class Loss, class Scalar = float>
class SparseAutoencoder {
 public:
  using scalar_type = Scalar;
  using activation_type = Activation;
  using loss_type = Loss;
  using Codes = std::conditional_t<Activation::sparse, SparseCodes<Scalar>, Mat<Scalar>>;
  using State = StepState<Scalar, Codes>;
  using Report = typename Loss::Report;

  /// Tokens per block of pre-activations for sparse activations without a fused selection
  /// (BatchTopK at inference).
  static constexpr Index block_tokens = 256;

  SparseAutoencoder() = default;

  /// The architecture this combination of policies is (architecture_name_of).
  static constexpr std::string_view architecture() { return architecture_name_of<Activation, Loss>; }

  /// Zero parameters of the configured shape; call initialize() before training.
  /// Sets cfg.architecture to architecture(), and cfg.k to 0 unless the activation uses k.
  /// Throws std::invalid_argument if cfg is unusable.
  explicit SparseAutoencoder(SaeConfig cfg, Activation act = {}, Loss loss = {})
      : cfg_(std::move(cfg)), act_(std::move(act)), loss_(std::move(loss)) {
    cfg_.architecture = std::string(architecture());
    if (!Activation::uses_k) cfg_.k = 0;
    cfg_.validate();
    if (Activation::uses_k && cfg_.k <= 0)
      throw std::invalid_argument("k must be in [1, d_sae=" + std::to_string(cfg_.d_sae) + "], got " +
                                  std::to_string(cfg_.k));
    act_.configure(cfg_);
    params_ = Parameters<Scalar>(cfg_.d_in, cfg_.d_sae, Activation::has_threshold, cfg_.output_width(), cfg_.skip);
  }

  /// The configuration (read-only: k and the architecture are fixed at construction, and the
  /// activation holds its own copy of what it reads; the metadata may change).
  const SaeConfig& config() const { return cfg_; }
  /// Replaces cfg.json's metadata (training settings, provenance).
  void set_metadata(nlohmann::json metadata) { cfg_.metadata = std::move(metadata); }
  const Parameters<Scalar>& params() const { return params_; }
  Parameters<Scalar>& params() { return params_; }
  const Activation& activation() const { return act_; }
  Activation& activation() { return act_; }
  const Loss& loss() const { return loss_; }
  Loss& loss() { return loss_; }
  Index d_in() const { return params_.d_in(); }
  /// Width of the reconstruction: d_in for an SAE, d_out for a transcoder.
  Index d_out() const { return params_.d_out(); }
  Index d_sae() const { return params_.d_sae(); }
  bool is_transcoder() const { return cfg_.is_transcoder(); }

  /// Replaces the parameters (shapes must match the config).
  void set_params(Parameters<Scalar> p) {
    p.check_shapes();
    if (p.d_in() != cfg_.d_in || p.d_sae() != cfg_.d_sae || p.d_out() != cfg_.output_width() ||
        p.has_skip() != cfg_.skip)
      throw std::invalid_argument("parameters are " + std::to_string(p.d_in()) + "x" + std::to_string(p.d_sae()) +
                                  " (d_out " + std::to_string(p.d_out()) + (p.has_skip() ? ", W_skip" : "") +
                                  "), config says d_in=" + std::to_string(cfg_.d_in) +
                                  ", d_sae=" + std::to_string(cfg_.d_sae) + " (d_out " +
                                  std::to_string(cfg_.output_width()) + (cfg_.skip ? ", W_skip" : "") + ")");
    if (p.has_threshold() != Activation::has_threshold)
      throw std::invalid_argument(std::string("parameters ") + (p.has_threshold() ? "have" : "lack") +
                                  " a threshold, which architecture '" + std::string(architecture()) +
                                  (Activation::has_threshold ? "' needs" : "' does not use"));
    params_ = std::move(p);
  }

  /// Initialisation: decoder columns are random unit directions scaled to
  /// Activation::decoder_init_norm, W_enc = W_dec (SAELens's W_enc = W_dec^T in its layout),
  /// b_enc = 0, b_dec = mean of @p sample (d x n, any n >= 1). For SAEs only.
  template <class Derived>
  void initialize(const Eigen::MatrixBase<Derived>& sample, std::uint64_t seed) {
    if (is_transcoder())
      throw std::invalid_argument("initialize: a transcoder is initialised from inputs and targets (X, Y)");
    initialize(sample, sample, seed);
  }

  /// Initialisation from inputs @p X (d_in x n) and targets @p Y (d_out x n, the same n >= 1):
  /// for an SAE (Y = X) as above; for a transcoder the decoder columns likewise (in the d_out
  /// space), the encoder columns independent random directions of the same norm (input and
  /// output spaces differ, so tying them means nothing), b_dec = mean of Y, W_skip = 0.
  template <class DerivedX, class DerivedY>
  void initialize(const Eigen::MatrixBase<DerivedX>& X, const Eigen::MatrixBase<DerivedY>& Y, std::uint64_t seed) {
    if (X.rows() != d_in() || X.cols() < 1)
      throw std::invalid_argument("initialize: sample must be d_in x n with n >= 1");
    if (Y.rows() != d_out() || Y.cols() != X.cols())
      throw std::invalid_argument("initialize: targets must be d_out x n, the n of the inputs");
    detail::Rng rng(seed);
    const Scalar norm = static_cast<Scalar>(Activation::decoder_init_norm);
    auto random_columns = [&](Mat<Scalar>& W) {
      for (Index j = 0; j < W.cols(); ++j) {
        auto w = W.col(j);
        for (Index i = 0; i < W.rows(); ++i) w[i] = static_cast<Scalar>(rng.normal());
        w *= norm / w.norm();
      }
    };
    random_columns(params_.W_dec);
    if (is_transcoder())
      random_columns(params_.W_enc);
    else
      params_.W_enc = params_.W_dec;
    params_.b_enc.setZero();
    params_.b_dec = Y.template cast<Scalar>().rowwise().mean();
    params_.W_skip.setZero();
    if constexpr (Activation::has_threshold) params_.threshold.setConstant(static_cast<Scalar>(act_.initial_threshold));
  }

  /// Codes of the tokens X (d x B) for inference, using s.Z / s.c as scratch.
  template <class Derived>
  void encode(const Eigen::MatrixBase<Derived>& X, Codes& codes, State& s) const {
    encode_impl(X, codes, s, /*training=*/false);
  }

  /// Codes of X (d x B) with temporary scratch.
  template <class Derived>
  Codes encode(const Eigen::MatrixBase<Derived>& X) const {
    State s;
    Codes codes;
    encode(X, codes, s);
    return codes;
  }

  /// X_hat = W_dec f + b_dec (d_out x B): the reconstruction without a skip transcoder's
  /// W_skip x (output() adds it).
  void decode(const Codes& codes, Mat<Scalar>& X_hat) const { kernels::decode(params_, codes, X_hat); }

  /// The model's output for inputs @p X (d_in x B) and their codes: W_dec f + b_dec, plus
  /// W_skip x for a skip transcoder (d_out x B).
  template <class Derived>
  void output(const Eigen::MatrixBase<Derived>& X, const Codes& codes, Mat<Scalar>& Y_hat) const {
    decode(codes, Y_hat);
    add_skip(X, Y_hat);
  }

  /// One forward and backward pass on the batch X (d x B) at 0-based training step @p step.
  /// Fills @p grads (resized and zeroed here) with dL/dtheta and returns the loss terms.
  /// SAEs only (the target is X itself); a transcoder takes its targets (overload below).
  template <class Derived>
  Report forward_backward(const Eigen::MatrixBase<Derived>& X, Parameters<Scalar>& grads, State& s,
                          std::int64_t step = 0) const {
    if (is_transcoder())
      throw std::invalid_argument("forward_backward: a transcoder needs its targets Y (d_out x B) beside X");
    return forward_backward(X, X, grads, s, step);
  }

  /// One forward and backward pass on inputs @p X (d_in x B) against targets @p Y (d_out x B;
  /// Y = X for an SAE): the loss terms compare the output with Y.
  template <class DerivedX, class DerivedY>
  Report forward_backward(const Eigen::MatrixBase<DerivedX>& X, const Eigen::MatrixBase<DerivedY>& Y,
                          Parameters<Scalar>& grads, State& s, std::int64_t step = 0) const {
    static_assert(
        std::is_same_v<typename DerivedX::Scalar, Scalar> && std::is_same_v<typename DerivedY::Scalar, Scalar>,
        "forward_backward: the batch must have the model's Scalar type");
    if (Y.rows() != d_out() || Y.cols() != X.cols())
      throw std::invalid_argument("targets are " + std::to_string(Y.rows()) + " x " + std::to_string(Y.cols()) +
                                  ", the model needs d_out=" + std::to_string(d_out()) + " x " +
                                  std::to_string(X.cols()) + " tokens");
    s.step = step;
    s.apply_b_dec_to_input = cfg_.apply_b_dec_to_input;
    if constexpr (requires { act_.bandwidth; }) s.bandwidth = static_cast<double>(act_.bandwidth);
    if constexpr (!Activation::sparse) {
      s.mixed.on = kernels::dense_bf16<Scalar>();
      s.mixed.backend = gemm::encoder_backend();
    }
    encode_impl(X, s.codes, s, /*training=*/true);
    if constexpr (Activation::sparse) {
      output(X, s.codes, s.X_hat);
    } else {  // output() with the mixed-precision decode
      kernels::decode(params_, s.codes, s.X_hat, &s.mixed);
      add_skip(X, s.X_hat);
    }

    if (!grads.same_shape(params_))
      grads = Parameters<Scalar>::zeros_like(params_);
    else
      grads.set_zero();
    s.grad_xhat.setZero(d_out(), X.cols());
    if constexpr (Activation::sparse)
      s.grad_codes.assign(s.codes.values.size(), Scalar(0));
    else
      s.grad_codes.per_latent.setZero(d_sae());

    s.input.emplace(X.derived());
    Report r = loss_.accumulate(Y, params_, s, grads);
    s.input.reset();
    if (params_.has_skip()) {  // y_hat += W_skip x
      const detail::SerialBelow serial(detail::product_flops(d_out(), d_in(), X.cols()));
      grads.W_skip.noalias() += s.grad_xhat * X.transpose();
    }

    if constexpr (Activation::sparse) {
      s.groups.build(s.codes);
      kernels::decoder_backward(params_, s.codes, s.groups, s.grad_xhat, s.grad_codes, grads);
      act_.backward(s.codes, s.grad_codes);
      kernels::encoder_backward(params_, cfg_.apply_b_dec_to_input, s.codes, s.groups, X, s.grad_codes, grads,
                                s.dz_sum);
    } else {
      kernels::dense_backward(params_, cfg_.apply_b_dec_to_input, X, s.codes, s.grad_xhat, s.grad_codes.per_latent,
                              act_, s.below, grads, s.dz_sum, s.dense, &s.mixed);
    }
    return r;
  }

  /// Loss of the batch X without gradients (for checks; allocates).
  template <class Derived>
  Report loss_value(const Eigen::MatrixBase<Derived>& X, std::int64_t step = 0) const {
    State s;
    Parameters<Scalar> g;
    return forward_backward(X, g, s, step);
  }
  /// Loss of inputs X against targets Y without gradients (for checks; allocates).
  template <class DerivedX, class DerivedY>
  Report loss_value(const Eigen::MatrixBase<DerivedX>& X, const Eigen::MatrixBase<DerivedY>& Y,
                    std::int64_t step = 0) const {
    State s;
    Parameters<Scalar> g;
    return forward_backward(X, Y, g, s, step);
  }

  /// For unit-norm decoders: removes from each decoder-column gradient its component along
  /// the column, g_j <- g_j - (g_j . w_j) w_j / ||w_j||^2, so a step moves along the sphere.
  void project_decoder_gradient(Parameters<Scalar>& grads) const {
    SAE_OMP(parallel for schedule(static) if (detail::parallel_worth(detail::streamed(params_.W_dec.size()))))
    for (Index j = 0; j < d_sae(); ++j) {
      const auto w = params_.W_dec.col(j);
      const Scalar nn = w.squaredNorm();
      if (nn > Scalar(0)) grads.W_dec.col(j) -= (grads.W_dec.col(j).dot(w) / nn) * w;
    }
  }

  /// After an optimizer step: renormalise the decoder (unit-norm variants) and let the
  /// activation update its own state (e.g. keep thresholds positive, track a threshold) from
  /// the step's codes in @p s.
  void after_update(const State& s) {
    if constexpr (Activation::unit_norm_decoder) normalize_decoder();
    act_.after_update(params_, s.codes);
    loss_.after_update(s.codes);
  }

  /// Rescales every decoder column to unit norm (columns of norm 0 are left alone).
  void normalize_decoder() {
    SAE_OMP(parallel for schedule(static) if (detail::parallel_worth(detail::streamed(params_.W_dec.size()))))
    for (Index j = 0; j < d_sae(); ++j) {
      auto w = params_.W_dec.col(j);
      const Scalar n = w.norm();
      if (n > Scalar(0)) w /= n;
    }
  }

 private:
  /// Pre-activations and codes. TopK-family activations get their candidates from the fused
  /// encoder (fused_encoder.hpp: product and per-token selection tile by tile, the dense m x B
  /// pre-activations never exist); a training-time batch selection (`select_batch`, BatchTopK)
  /// also gets a callback that recomputes one token's pre-activations. Activations without
  /// `select_top` (BatchTopK's threshold at inference) see 256-token blocks of pre-activations.
  template <class Derived>
  void encode_impl(const Eigen::MatrixBase<Derived>& X, Codes& codes, State& s, bool training) const {
    check_batch(X.rows());
    kernels::encoder_bias(params_, cfg_.apply_b_dec_to_input, s.c);
    if constexpr (Activation::sparse) {
      const Index B = X.cols(), m = d_sae();
      auto top_c = [&](Index cap, Scalar* values, std::int32_t* indices, Index* count) {
        s.encoder.top_c(params_, s.c, X, cap, s.Z, values, indices, count);
      };
      auto token = [&](Index t, Vec<Scalar>& z) {  // all m canonical pre-activations of token t
        const Vec<Scalar> x = X.col(t).template cast<Scalar>();
        z.resize(m);
        SAE_OMP(parallel for schedule(static) if (detail::parallel_worth(detail::streamed(params_.W_enc.size()))))
        for (Index j = 0; j < m; ++j) z[j] = kernels::canonical_score(params_.W_enc, x.data(), j, s.c[j]);
      };
      if constexpr (requires { act_.select_batch(B, m, top_c, token, codes, s.encoder); }) {
        if (training) {
          act_.select_batch(B, m, top_c, token, codes, s.encoder);
          return;
        }
      }
      if constexpr (requires { act_.select_top(B, m, top_c, codes); }) {
        act_.select_top(B, m, top_c, codes);
      } else {
        codes.reset(m, B, select_capacity_hint());
        for (Index t0 = 0; t0 < B; t0 += block_tokens) {
          const Index b = std::min(block_tokens, B - t0);
          kernels::preactivations(params_, s.c, X.middleCols(t0, b), s.Z);
          act_.select(s.Z, t0, codes, params_);
        }
      }
    } else {
      kernels::MixedPrecision* mixed = training ? &s.mixed : nullptr;  // training steps only
      if constexpr (requires { act_.forward_in_place(codes, params_, s.below); }) {
        kernels::preactivations(params_, s.c, X, codes, mixed);
        act_.forward_in_place(codes, params_, s.below);
      } else {
        kernels::preactivations(
            params_, s.c, X, codes, [&](auto& tile) { act_.forward_in_place(tile, params_); }, mixed);
      }
    }
  }

  /// Y_hat += W_skip x for a skip transcoder (on one thread when small).
  template <class Derived>
  void add_skip(const Eigen::MatrixBase<Derived>& X, Mat<Scalar>& Y_hat) const {
    if (!params_.has_skip()) return;
    const detail::SerialBelow serial(detail::product_flops(d_out(), X.cols(), d_in()));
    Y_hat.noalias() += params_.W_skip * X.template cast<Scalar>();
  }

  Index select_capacity_hint() const {
    if constexpr (requires { act_.k; }) return act_.k;
    return 0;
  }

  void check_batch(Index rows) const {
    if (rows != d_in())
      throw std::invalid_argument("batch has " + std::to_string(rows) +
                                  " rows, the SAE has d_in=" + std::to_string(d_in()));
  }

  SaeConfig cfg_;
  Activation act_;
  Loss loss_;
  Parameters<Scalar> params_;
};

}  // namespace sae
