/// @file sae/core/kernels.hpp
/// The encoder / decoder / backward kernels shared by every SAE variant.
///
/// Notation: d = d_in, m = d_sae, B = tokens in the batch, k = active latents per token.
/// X is d x B (one token per column), Z (pre-activations) and dense codes F are m x B,
/// parameters are laid out as in Parameters (one length-d column per latent).
///
///     z_t     = W_enc^T (x_t - b_dec) + b_enc  =  W_enc^T x_t + c,   c = b_enc - W_enc^T b_dec
///     x_hat_t = W_dec f_t + b_dec
///
/// Folding b_dec into the bias c means the encoder never forms the d x B matrix X - b_dec.
///
/// Threads: a kernel with less work than sae::detail::min_parallel_flops runs on the calling
/// thread, Eigen's products included (detail/omp.hpp: waking threads costs a small model more
/// than its work).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../detail/omp.hpp"
#include "gemm.hpp"
#include "parameters.hpp"
#include "sparse_codes.hpp"

namespace sae::kernels {

/// c = b_enc - W_enc^T b_dec when b_dec is subtracted from the input, else b_enc.  [m]
template <class Scalar>
void encoder_bias(const Parameters<Scalar>& p, bool apply_b_dec_to_input, Vec<Scalar>& c) {
  c = p.b_enc;
  if (apply_b_dec_to_input) c.noalias() -= p.W_enc.transpose() * p.b_dec;
}

/// Dense products split into independent tiles, one single-threaded product per tile, the tiles
/// spread over the threads (Eigen does not nest its threads inside a parallel region). Measured
/// at d = 768, m = 16384, B = 4096, 2 threads, AVX-512 EPYC: 318-321 GFLOP/s for the m x B
/// products in 1024 x 512 tiles and 294 for the d x m gradient products in 1024-latent chunks,
/// against 272-295 for the same products as one multi-threaded Eigen product. Each tile has a
/// fixed shape, so results do not depend on the number of threads.
namespace tiles {
/// latent rows of an m x B tile / columns of a d x m chunk: the fused encoder's tile shape
inline constexpr Index latents = gemm::Tiling{}.chunk_latents;
inline constexpr Index tokens = gemm::Tiling{}.block_tokens;  ///< token columns of an m x B tile
}  // namespace tiles

/// Mixed precision of the dense variants (`--precision bf16`, like PyTorch's autocast): the five
/// m x B-sized products of a training step take bfloat16 operands and accumulate in fp32; the
/// weights, their gradients, Adam, the biases, the activation and the losses stay fp32.
///
///     Z      = bf16(W_enc)^T bf16(X) + c                   preactivations()
///     X_hat  = bf16(W_dec) bf16(F) + b_dec                 decode()
///     D      = bf16(W_dec)^T bf16(G) + w, then the mask    dense_backward()
///     dW_dec += bf16(G) bf16(F)^T,  dW_enc += bf16(X) bf16(D)^T
///
/// The bf16 copies are made once per step (weights, inputs, codes, dL/dX_hat) and per tile (D).
/// A float model's training step uses it when @p on is set (StepState::mixed); products run on
/// oneDNN's bf16 units when the backend is Dnnl and the CPU has them, else widened to fp32.
struct MixedPrecision {
  bool on = false;
  gemm::Backend backend = gemm::Backend::Eigen;
  std::vector<std::uint16_t> W_enc, W_dec, X, F, G;  ///< bf16 copies (column-major, dense)
  std::vector<std::vector<std::uint16_t>> D;         ///< per thread: a tile of dL/dz
  std::vector<std::vector<float>> wa, wb;            ///< per thread: the software product's buffers

  /// Per-thread buffers for @p threads threads.
  void threads(int n) {
    if (static_cast<int>(wa.size()) < n) {
      wa.resize(static_cast<std::size_t>(n));
      wb.resize(static_cast<std::size_t>(n));
      D.resize(static_cast<std::size_t>(n));
    }
  }
  static void copy(const float* src, Index n, std::vector<std::uint16_t>& dst) {
    dst.resize(static_cast<std::size_t>(n));
    gemm::to_bf16(src, dst.data(), n);
  }
};

namespace detail {
inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
}  // namespace detail

/// Z = W_enc^T X + c, then @p epilogue(Z_tile) on each tile while it is in cache (e.g. the
/// ReLU in place).  X: d x B, Z: m x B (resized).
template <class Scalar, class DerivedX, class Epilogue>
void preactivations(const Parameters<Scalar>& p, const Vec<Scalar>& c, const Eigen::MatrixBase<DerivedX>& X,
                    Mat<Scalar>& Z, Epilogue&& epilogue, MixedPrecision* mixed = nullptr) {
  const Index m = p.d_sae(), B = X.cols(), d = p.d_in();
  Z.resize(m, B);
  const sae::detail::SerialBelow serial(sae::detail::product_flops(m, B, d));
  const Index nj = (m + tiles::latents - 1) / tiles::latents, nt = (B + tiles::tokens - 1) / tiles::tokens;
  const bool bf16 = std::is_same_v<Scalar, float> && mixed != nullptr && mixed->on;
  if constexpr (std::is_same_v<Scalar, float>) {
    if (bf16) {
      MixedPrecision::copy(p.W_enc.data(), d * m, mixed->W_enc);
      const Mat<float> Xc = X.template cast<float>();  // an expression or view: one copy
      MixedPrecision::copy(Xc.data(), d * B, mixed->X);
      mixed->threads(num_threads());
      if (mixed->backend == gemm::Backend::Blas) gemm::set_blas_threads(1);
    }
  }
  SAE_OMP(parallel for schedule(dynamic, 1) if (nj * nt > 1))
  for (Index q = 0; q < nj * nt; ++q) {
    const Index j0 = (q % nj) * tiles::latents, t0 = (q / nj) * tiles::tokens;
    const Index mj = std::min(tiles::latents, m - j0), bt = std::min(tiles::tokens, B - t0);
    auto Zt = Z.block(j0, t0, mj, bt);
    if constexpr (std::is_same_v<Scalar, float>) {
      if (bf16) {
        const auto me = static_cast<std::size_t>(detail::thread_id());
        gemm::product_bf16(mixed->backend, mj, bt, d, mixed->W_enc.data() + j0 * d, d, 1, mixed->X.data() + t0 * d, 1,
                           d, Z.data() + j0 + t0 * m, m, false, mixed->wa[me], mixed->wb[me]);
      }
    }
    if (!bf16) Zt.noalias() = p.W_enc.middleCols(j0, mj).transpose() * X.middleCols(t0, bt);
    Zt.colwise() += c.segment(j0, mj);
    epilogue(Zt);
  }
}

/// Z = W_enc^T X + c.  X: d x B, Z: m x B (resized).
template <class Scalar, class DerivedX>
void preactivations(const Parameters<Scalar>& p, const Vec<Scalar>& c, const Eigen::MatrixBase<DerivedX>& X,
                    Mat<Scalar>& Z, MixedPrecision* mixed = nullptr) {
  preactivations(
      p, c, X, Z, [](auto&) {}, mixed);
}

/// Dense decode: X_hat = W_dec F + b_dec, in blocks of tokens.  F: m x B, X_hat: d x B. With
/// @p mixed on, from bf16 copies of W_dec and F (made here; dense_backward reuses them).
template <class Scalar>
void decode(const Parameters<Scalar>& p, const Mat<Scalar>& F, Mat<Scalar>& X_hat, MixedPrecision* mixed = nullptr) {
  const Index B = F.cols(), nt = (B + tiles::tokens - 1) / tiles::tokens, m = F.rows(), dout = p.d_out();
  X_hat.resize(dout, B);
  const sae::detail::SerialBelow serial(sae::detail::product_flops(dout, B, m));
  const bool bf16 = std::is_same_v<Scalar, float> && mixed != nullptr && mixed->on;
  if constexpr (std::is_same_v<Scalar, float>) {
    if (bf16) {
      MixedPrecision::copy(p.W_dec.data(), dout * m, mixed->W_dec);
      MixedPrecision::copy(F.data(), m * B, mixed->F);
      mixed->threads(num_threads());
      if (mixed->backend == gemm::Backend::Blas) gemm::set_blas_threads(1);
    }
  }
  SAE_OMP(parallel for schedule(dynamic, 1) if (nt > 1))
  for (Index q = 0; q < nt; ++q) {
    const Index t0 = q * tiles::tokens, bt = std::min(tiles::tokens, B - t0);
    auto Xt = X_hat.middleCols(t0, bt);
    if constexpr (std::is_same_v<Scalar, float>) {
      if (bf16) {
        const auto me = static_cast<std::size_t>(detail::thread_id());
        gemm::product_bf16(mixed->backend, dout, bt, m, mixed->W_dec.data(), 1, dout, mixed->F.data() + t0 * m, 1, m,
                           X_hat.data() + t0 * dout, dout, false, mixed->wa[me], mixed->wb[me]);
      }
    }
    if (!bf16) Xt.noalias() = p.W_dec * F.middleCols(t0, bt);
    Xt.colwise() += p.b_dec;
  }
}

/// Sparse decode: x_hat_t = b_dec + sum_{j active in t} f_tj W_dec[:, j]  (k gathers of
/// contiguous columns per token, O(B k d)).  X_hat: d x B.
template <class Scalar>
void decode(const Parameters<Scalar>& p, const SparseCodes<Scalar>& codes, Mat<Scalar>& X_hat) {
  const Index B = codes.tokens();
  X_hat.resize(p.d_out(), B);
  const bool parallel = sae::detail::parallel_worth(sae::detail::streamed((B + codes.nnz()) * p.d_out()));
  SAE_OMP(parallel for schedule(static) if (parallel))
  for (Index t = 0; t < B; ++t) {
    auto x = X_hat.col(t);
    x = p.b_dec;
    for (Index i = codes.offsets[t]; i < codes.offsets[t + 1]; ++i)
      x.noalias() += codes.values[i] * p.W_dec.col(codes.indices[i]);
  }
}

/// Per-latent sums over tokens, s_j = sum_t f_tj.  [m]
template <class Scalar>
void latent_sums(const Mat<Scalar>& F, Vec<Scalar>& s) {
  s.noalias() = F.rowwise().sum();
}
template <class Scalar>
void latent_sums(const SparseCodes<Scalar>& codes, Vec<Scalar>& s) {
  s.setZero(codes.d_sae);
  for (Index i = 0; i < codes.nnz(); ++i) s[codes.indices[i]] += codes.values[i];
}

/// Number of nonzero codes (sum over tokens of the L0 of each token).
template <class Scalar>
Index count_active(const Mat<Scalar>& F) {
  return (F.array() != Scalar(0)).count();
}
template <class Scalar>
Index count_active(const SparseCodes<Scalar>& codes) {
  Index n = 0;
  for (const Scalar v : codes.values) n += (v != Scalar(0));
  return n;
}

/// Dead-latent bookkeeping: adds the batch's B tokens to every latent's count of tokens since
/// it last fired, then zeroes the count of every latent active in @p codes.
template <class Scalar>
void update_since_fired(const SparseCodes<Scalar>& codes, std::vector<std::int64_t>& since_fired) {
  since_fired.resize(static_cast<std::size_t>(codes.d_sae), 0);
  for (auto& v : since_fired) v += codes.tokens();
  for (Index i = 0; i < codes.nnz(); ++i)
    if (codes.values[i] != Scalar(0)) since_fired[codes.indices[i]] = 0;
}
template <class Scalar>
void update_since_fired(const Mat<Scalar>& F, std::vector<std::int64_t>& since_fired) {
  const Index m = F.rows(), B = F.cols();
  since_fired.resize(static_cast<std::size_t>(m), 0);
  // Column by column (F is column-major: a row walk would stride by m): a latent fired if any
  // token's code is nonzero.
  for (auto& v : since_fired) v += B;
  for (Index t = 0; t < B; ++t) {
    const Scalar* f = F.data() + t * m;
    for (Index j = 0; j < m; ++j)
      if (f[j] != Scalar(0)) since_fired[static_cast<std::size_t>(j)] = 0;
  }
}

/// Gradient with respect to the codes, in the codes' own structure: one value per stored entry
/// for sparse codes; for dense codes only what the loss terms add on top of the decoder's
/// W_dec^T G, which for every dense term is one value per latent, the same for every token
/// (L1's lambda ||W_dec[:, j]||). dense_backward() adds W_dec^T G tile by tile, so the m x B
/// gradient never exists.
template <class Scalar>
struct DenseCodeGradient {
  Vec<Scalar> per_latent;  ///< m values added to dL/df_tj for every token t
};
template <class Codes>
struct CodeGradient;
template <class Scalar>
struct CodeGradient<Mat<Scalar>> {
  using type = DenseCodeGradient<Scalar>;
};
template <class Scalar>
struct CodeGradient<SparseCodes<Scalar>> {
  using type = std::vector<Scalar>;
};
template <class Codes>
using code_gradient_t = typename CodeGradient<Codes>::type;

/// grad_f_tj += w_j for every code entry (dense: all entries; sparse: stored entries).
template <class Scalar>
void add_latent_weights(const Mat<Scalar>& /*F*/, const Vec<Scalar>& w, DenseCodeGradient<Scalar>& grad) {
  grad.per_latent += w;
}
template <class Scalar>
void add_latent_weights(const SparseCodes<Scalar>& codes, const Vec<Scalar>& w, std::vector<Scalar>& grad) {
  for (Index i = 0; i < codes.nnz(); ++i) grad[i] += w[codes.indices[i]];
}

/// Per token, a sorted list of latents (CSC without values): JumpReLU's record of the
/// pre-activations just below their threshold, theta - eps/2 < z <= theta, which the
/// straight-through gradients need after the codes have overwritten the pre-activations.
struct LatentList {
  std::vector<Index> offsets{0};      ///< B + 1
  std::vector<std::int32_t> latents;  ///< latents of token t: latents[offsets[t] .. offsets[t+1])

  Index tokens() const { return static_cast<Index>(offsets.size()) - 1; }
  Index size() const { return static_cast<Index>(latents.size()); }
  /// The entries of token t with latent in [j0, j1), as [first, last) positions.
  std::pair<Index, Index> range(Index t, Index j0, Index j1) const {
    const auto* b = latents.data() + offsets[t];
    const auto* e = latents.data() + offsets[t + 1];
    const auto* lo = std::lower_bound(b, e, static_cast<std::int32_t>(j0));
    const auto* hi = std::lower_bound(lo, e, static_cast<std::int32_t>(j1));
    return {lo - latents.data(), hi - latents.data()};
  }
};

/// Entries of sparse codes grouped by latent (a CSR transpose built by counting sort), so
/// per-latent gradient columns can be accumulated in parallel without two threads writing
/// the same column.  For latent j, entries entry[start[j] .. start[j+1]) are positions in
/// codes.indices / codes.values, and token[...] the token each belongs to.
struct LatentGroups {
  std::vector<Index> start;  ///< m + 1
  std::vector<Index> entry;  ///< nnz
  std::vector<Index> token;  ///< nnz

  template <class Scalar>
  void build(const SparseCodes<Scalar>& codes) {
    const Index m = codes.d_sae, nnz = codes.nnz(), B = codes.tokens();
    start.assign(static_cast<std::size_t>(m) + 1, 0);
    entry.resize(static_cast<std::size_t>(nnz));
    token.resize(static_cast<std::size_t>(nnz));
    for (Index i = 0; i < nnz; ++i) ++start[codes.indices[i] + 1];
    for (Index j = 0; j < m; ++j) start[j + 1] += start[j];
    std::vector<Index>& next = scratch_;
    next.assign(start.begin(), start.end() - 1);
    for (Index t = 0; t < B; ++t)
      for (Index i = codes.offsets[t]; i < codes.offsets[t + 1]; ++i) {
        const Index slot = next[codes.indices[i]]++;
        entry[slot] = i;
        token[slot] = t;
      }
  }

 private:
  std::vector<Index> scratch_;
};

/// Backward through a sparse decoder, given G = dL/dX_hat (d x B):
///
///     grad_codes_i    += G_t . W_dec[:, j]                (entry i = (t, j))
///     grad_W_dec[:,j] += sum_{t active} f_tj G_t
///     grad_b_dec      += sum_t G_t
///
/// Like every backward kernel here it accumulates (+=) into `grads`, which the caller zeroes
/// once per step; loss terms that act on parameters directly add their part the same way.
template <class Scalar>
void decoder_backward(const Parameters<Scalar>& p, const SparseCodes<Scalar>& codes, const LatentGroups& groups,
                      const Mat<Scalar>& G, std::vector<Scalar>& grad_codes, Parameters<Scalar>& grads) {
  const Index B = codes.tokens(), m = codes.d_sae;
  const bool parallel = sae::detail::parallel_worth(sae::detail::streamed(codes.nnz() * G.rows()));  // per loop
  SAE_OMP(parallel for schedule(static) if (parallel))
  for (Index t = 0; t < B; ++t)
    for (Index i = codes.offsets[t]; i < codes.offsets[t + 1]; ++i)
      grad_codes[i] += G.col(t).dot(p.W_dec.col(codes.indices[i]));
  SAE_OMP(parallel for schedule(dynamic, 64) if (parallel))
  for (Index j = 0; j < m; ++j) {
    auto g = grads.W_dec.col(j);
    for (Index s = groups.start[j]; s < groups.start[j + 1]; ++s)
      g.noalias() += codes.values[groups.entry[s]] * G.col(groups.token[s]);
  }
  grads.b_dec.noalias() += G.rowwise().sum();
}

/// Backward through a sparse encoder, given dL/dz at the stored entries (grad_z, aligned with
/// codes.values; entries outside the codes have zero gradient):
///
///     grad_W_enc[:,j] += sum_t dz_tj (x_t - b_dec)  = sum_t dz_tj x_t - (sum_t dz_tj) b_dec
///     grad_b_enc[j]   += sum_t dz_tj
///     grad_b_dec      -= W_enc s,   s_j = sum_t dz_tj  (only when b_dec is subtracted)
///
/// s is this call's own sum (@p dz_sum, scratch of m values), not grads.b_enc, so other terms
/// (AuxK) may add their own encoder gradients before or after.
template <class Scalar, class DerivedX>
void encoder_backward(const Parameters<Scalar>& p, bool apply_b_dec_to_input, const SparseCodes<Scalar>& codes,
                      const LatentGroups& groups, const Eigen::MatrixBase<DerivedX>& X,
                      const std::vector<Scalar>& grad_z, Parameters<Scalar>& grads, Vec<Scalar>& dz_sum) {
  const Index m = codes.d_sae;
  dz_sum.resize(m);
  const bool parallel = sae::detail::parallel_worth(sae::detail::streamed(codes.nnz() * X.rows()));
  SAE_OMP(parallel for schedule(dynamic, 64) if (parallel))
  for (Index j = 0; j < m; ++j) {
    auto g = grads.W_enc.col(j);
    Scalar sum = 0;
    for (Index s = groups.start[j]; s < groups.start[j + 1]; ++s) {
      const Scalar dz = grad_z[groups.entry[s]];
      g.noalias() += dz * X.col(groups.token[s]);
      sum += dz;
    }
    if (apply_b_dec_to_input) g.noalias() -= sum * p.b_dec;
    grads.b_enc[j] += sum;
    dz_sum[j] = sum;
  }
  if (apply_b_dec_to_input) grads.b_dec.noalias() -= p.W_enc * dz_sum;
}

/// Per-thread tiles of dense_backward, kept between steps.
template <class Scalar>
struct DenseScratch {
  std::vector<Mat<Scalar>> tiles;  ///< one latents x tokens tile of dL/dz per thread
  std::vector<Scalar> acc;         ///< per-latent accumulators of the activation (m)
};

/// The whole dense backward pass below the reconstruction, one chunk of latents at a time, so
/// neither dL/df nor dL/dz is ever an m x B matrix. With G = dL/dX_hat (d x B), dense codes F
/// (m x B) and the loss terms' per-latent part w of dL/df:
///
///     D      = W_dec[:, c]^T G + w[c]          dL/df for the chunk c, one token block at a time
///     D     <- act.backward_tile(D)            dL/dz (mask; the activation's own parameter
///                                              gradients, e.g. JumpReLU's thresholds)
///     grad_W_dec[:, c] += G F[c, :]^T
///     grad_W_enc[:, c] += (X - b_dec) D^T,  grad_b_enc[c] += s_c,  s_c = rowsum(D)
///     grad_b_dec      += sum_t G_t - W_enc s     (the second term when b_dec is subtracted)
///
/// Threads own whole chunks of latents (no two write the same column); within a chunk the
/// token blocks run in order, so sums do not depend on the thread count. @p act provides
/// backward_tile(j0, t0, F_tile, D_tile, acc, p, below) (acc: the chunk's per-latent
/// accumulators, zeroed before the first block) and finish_backward(j0, n, acc, p, grads)
/// (relu.hpp describes the interface); @p below is what its forward recorded.
template <class Scalar, class DerivedX, class Activation>
void dense_backward(const Parameters<Scalar>& p, bool apply_b_dec_to_input, const Eigen::MatrixBase<DerivedX>& X,
                    const Mat<Scalar>& F, const Mat<Scalar>& G, const Vec<Scalar>& w, const Activation& act,
                    const LatentList& below, Parameters<Scalar>& grads, Vec<Scalar>& dz_sum,
                    DenseScratch<Scalar>& scratch, MixedPrecision* mixed = nullptr) {
  const Index m = F.rows(), B = F.cols(), d = p.d_in(), dout = p.d_out();
  const sae::detail::SerialBelow serial(sae::detail::product_flops(m, B, d + 2 * dout));  // its three products
  // mixed precision: decode() made the bf16 copies of W_dec and F, preactivations() those of
  // W_enc and X; G is converted here, each tile of D in its loop
  const bool bf16 = std::is_same_v<Scalar, float> && mixed != nullptr && mixed->on;
  if constexpr (std::is_same_v<Scalar, float>) {
    if (bf16) {
      MixedPrecision::copy(G.data(), dout * B, mixed->G);
      mixed->threads(num_threads());
      if (mixed->backend == gemm::Backend::Blas) gemm::set_blas_threads(1);
    }
  }
  const Index nj = (m + tiles::latents - 1) / tiles::latents;
  const Index bt = std::min(tiles::tokens, B);
  const int threads = static_cast<int>(std::min<Index>(num_threads(), nj));
  if (static_cast<int>(scratch.tiles.size()) < threads) scratch.tiles.resize(static_cast<std::size_t>(threads));
  for (auto& t : scratch.tiles)
    if (t.rows() != std::min(tiles::latents, m) || t.cols() != bt) t.resize(std::min(tiles::latents, m), bt);
  scratch.acc.assign(static_cast<std::size_t>(m), Scalar(0));
  dz_sum.setZero(m);
  SAE_OMP(parallel num_threads(threads)) {
#ifdef _OPENMP
    Mat<Scalar>& tile = scratch.tiles[static_cast<std::size_t>(omp_get_thread_num())];
#else
    Mat<Scalar>& tile = scratch.tiles[0];
#endif
    SAE_OMP(for schedule(dynamic, 1))
    for (Index q = 0; q < nj; ++q) {
      const Index j0 = q * tiles::latents, mj = std::min(tiles::latents, m - j0);
      Scalar* acc = scratch.acc.data() + j0;
      auto s = dz_sum.segment(j0, mj);
      auto gWe = grads.W_enc.middleCols(j0, mj);
      for (Index t0 = 0; t0 < B; t0 += bt) {
        const Index b = std::min(bt, B - t0);
        auto D = tile.topLeftCorner(mj, b);
        if constexpr (std::is_same_v<Scalar, float>) {
          if (bf16) {
            const auto me = static_cast<std::size_t>(detail::thread_id());
            gemm::product_bf16(mixed->backend, mj, b, dout, mixed->W_dec.data() + j0 * dout, dout, 1,
                               mixed->G.data() + t0 * dout, 1, dout, tile.data(), tile.rows(), false, mixed->wa[me],
                               mixed->wb[me]);
          }
        }
        if (!bf16) D.noalias() = p.W_dec.middleCols(j0, mj).transpose() * G.middleCols(t0, b);
        D.colwise() += w.segment(j0, mj);
        act.backward_tile(j0, t0, F.block(j0, t0, mj, b), D, acc, p, below);
        s.noalias() += D.rowwise().sum();
        if constexpr (std::is_same_v<Scalar, float>) {
          if (bf16) {
            const auto me = static_cast<std::size_t>(detail::thread_id());
            auto& D16 = mixed->D[me];
            D16.resize(static_cast<std::size_t>(mj * b));
            for (Index t = 0; t < b; ++t) gemm::to_bf16(tile.data() + t * tile.rows(), D16.data() + t * mj, mj);
            // dW_enc[:, chunk] += X_block D^T: A = X (d x b), B = D^T (b x mj)
            gemm::product_bf16(mixed->backend, d, mj, b, mixed->X.data() + t0 * d, 1, d, D16.data(), mj, 1,
                               grads.W_enc.data() + j0 * d, d, true, mixed->wa[me], mixed->wb[me]);
          }
        }
        if (!bf16) gWe.noalias() += X.middleCols(t0, b) * D.transpose();
      }
      if constexpr (std::is_same_v<Scalar, float>) {
        if (bf16) {
          const auto me = static_cast<std::size_t>(detail::thread_id());
          // dW_dec[:, chunk] += G F[chunk, :]^T: A = G (dout x B), B = F^T (B x mj)
          gemm::product_bf16(mixed->backend, dout, mj, B, mixed->G.data(), 1, dout, mixed->F.data() + j0, m, 1,
                             grads.W_dec.data() + j0 * dout, dout, true, mixed->wa[me], mixed->wb[me]);
        }
      }
      if (!bf16) grads.W_dec.middleCols(j0, mj).noalias() += G * F.middleRows(j0, mj).transpose();
      if (apply_b_dec_to_input) gWe.noalias() -= p.b_dec * s.transpose();
      act.finish_backward(j0, mj, acc, p, grads);
    }
  }
  grads.b_enc += dz_sum;
  grads.b_dec.noalias() += G.rowwise().sum();
  if (apply_b_dec_to_input) grads.b_dec.noalias() -= p.W_enc * dz_sum;
}

}  // namespace sae::kernels
