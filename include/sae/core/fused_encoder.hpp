/// @file sae/core/fused_encoder.hpp
/// The fused encoder of the TopK family: the encoder product and the per-token top-c selection
/// in one pass over cache-sized tiles, so the dense m x B pre-activations never exist; and its
/// selection is exact: the same codes whichever GEMM backend or precision proposed them.
///
///     for each block of bt tokens (in parallel, one block per thread at a time):
///       for each chunk of mc latents:
///         Z_tile = Ŵ[:, chunk]^T X̂[:, block]          (mc x bt, one product; Ŵ, X̂ = W_enc, X
///                                                      in fp32, or their bf16 roundings)
///         for each token t of the block, each latent j of the chunk (Sieve::scan, vectorised):
///           ẑ = Z_tile(j, t) + c_j;  E = bound on |ẑ - z_tj| (score_bounds.hpp)
///           L_t = the c-th largest lower bound ẑ - E seen so far for t (0 until c are positive)
///           keep j as a candidate of t if ẑ + E > 0 and ẑ + E >= L_t
///       for each token: drop candidates with ẑ + E < the final L_t; for the rest compute
///         z_tj = canonical_dot(W_enc[:, j], x_t) + c_j (canonical_dot.hpp, fp32) and keep the c
///         largest positive ones, ties to the lower latent; write them sorted by latent
///
/// Exact: every lower bound is <= its canonical value, so the final L_t is <= the c-th largest
/// canonical value, and a latent that is not rescored has z <= ẑ + E < L_t: it could never
/// have entered. The result is the top-c of the canonical values, exactly as plain_top_c
/// computes it from all m of them, whichever backend and precision proposed the candidates.
/// With fp32 operands E is ~2γ_d|w||x| (1e-4 relative at d = 768) and about c latents per
/// token are rescored; with bf16 operands (Precision::BFloat16, 2-4x the product speed on
/// AVX512-BF16 or AMX units) E is ~|w||x| 2^-8 and somewhat more. Near-ties only cost
/// rescoring: a token whose candidate list overflows even after pruning (more than 3c + 48
/// latents within reach of L_t) is computed exhaustively, every latent canonically, which is
/// still exact.
///
/// Cost: the product's 2 d m B flops, one vector pass per tile (16 (AVX-512) or 8 (AVX2) values
/// per compare, E included), 2d flops per rescored latent, and per call the norms of W_enc's
/// columns and of the inputs (and their bf16 copies). Memory: one mc x bt tile, bt lower-bound
/// heaps of c entries and bt candidate lists of 4c + 64 entries per thread (FusedScratch), the
/// bound terms (m + B values) and for bf16 a copy of W_enc (2 d m bytes), reused across steps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../detail/omp.hpp"
#include "canonical_dot.hpp"
#include "gemm.hpp"
#include "parameters.hpp"
#include "score_bounds.hpp"

namespace sae::kernels {

/// A bounded min-heap keeping the c largest (value, latent) pairs offered to it, ties going to
/// the lower latent (values must be offered in increasing latent order). Storage is external
/// (c slots), so a thread reuses one buffer for all its tokens.
template <class Scalar>
struct TopCHeap {
  Scalar* val;
  std::int32_t* idx;
  Index cap;
  Index size = 0;

  /// Values one compare may skip where offer_run has no AVX path (double, or a build without
  /// AVX2/AVX-512): a group whose maximum is <= floor() goes nowhere near the heap.
  static constexpr Index kGroup = 32;

  /// The smallest value a new entry must exceed (0 until full: only positive values count).
  Scalar floor() const { return size < cap ? Scalar(0) : val[0]; }

  /// Offers value v of latent j (j larger than every latent offered before).
  void offer(Scalar v, std::int32_t j) {
    if (size < cap) {
      // sift up: the root holds the worst entry (smallest value, then largest latent)
      Index i = size++;
      while (i > 0) {
        const Index parent = (i - 1) / 2;
        if (!worse(v, j, val[parent], idx[parent])) break;
        val[i] = val[parent];
        idx[i] = idx[parent];
        i = parent;
      }
      val[i] = v;
      idx[i] = j;
    } else {
      // replace the root, sift down
      Index i = 0;
      for (;;) {
        const Index l = 2 * i + 1;
        if (l >= size) break;
        Index w = l;
        if (l + 1 < size && worse(val[l + 1], idx[l + 1], val[l], idx[l])) w = l + 1;
        if (!worse(val[w], idx[w], v, j)) break;
        val[i] = val[w];
        idx[i] = idx[w];
        i = w;
      }
      val[i] = v;
      idx[i] = j;
    }
  }

  /// Offers z[j] + bias[j] for j in [0, n) as latents first, first + 1, ...: one vector
  /// compare against floor() per 16 (AVX-512) or 8 (AVX2) values, and only the lanes above it go
  /// to the heap; without those instruction sets, groups of kGroup values whose maximum is
  /// <= floor() are skipped. NaN is never kept.
  void offer_run(const Scalar* z, const Scalar* bias, Index n, std::int32_t first) {
    Index j = 0;
    Scalar fl = floor();
    auto take = [&](Index u) {
      const Scalar v = z[u] + bias[u];
      if (v > fl) {
        offer(v, first + static_cast<std::int32_t>(u));
        fl = floor();
      }
    };
    if constexpr (std::is_same_v<Scalar, float>) {
#if defined(__AVX512F__)
      for (; j + 16 <= n; j += 16) {
        const __m512 v = _mm512_add_ps(_mm512_loadu_ps(z + j), _mm512_loadu_ps(bias + j));
        for (unsigned mask = _mm512_cmp_ps_mask(v, _mm512_set1_ps(fl), _CMP_GT_OQ); mask; mask &= mask - 1)
          take(j + __builtin_ctz(mask));
      }
#elif defined(__AVX2__)
      for (; j + 8 <= n; j += 8) {
        const __m256 v = _mm256_add_ps(_mm256_loadu_ps(z + j), _mm256_loadu_ps(bias + j));
        for (unsigned mask =
                 static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(fl), _CMP_GT_OQ)));
             mask; mask &= mask - 1)
          take(j + __builtin_ctz(mask));
      }
#endif
    }
    using Group = Eigen::Array<Scalar, kGroup, 1>;
    for (; j + kGroup <= n; j += kGroup) {
      if (!((Eigen::Map<const Group>(z + j) + Eigen::Map<const Group>(bias + j)).maxCoeff() > fl)) continue;
      for (Index u = j; u < j + kGroup; ++u) take(u);
    }
    for (; j < n; ++j) take(j);
  }

  /// Sorts the kept entries by latent index (destroys the heap order).
  void sort_by_latent() {
    // insertion sort on (idx, val): c is small (k or 2k + 8)
    for (Index a = 1; a < size; ++a) {
      const Scalar v = val[a];
      const std::int32_t j = idx[a];
      Index b = a;
      for (; b > 0 && idx[b - 1] > j; --b) {
        val[b] = val[b - 1];
        idx[b] = idx[b - 1];
      }
      val[b] = v;
      idx[b] = j;
    }
  }

 private:
  static bool worse(Scalar va, std::int32_t ia, Scalar vb, std::int32_t ib) { return va < vb || (va == vb && ia > ib); }
};

/// One token's candidates while the fused encoder scans its latents (see the file comment):
/// the cap-th largest lower bound seen so far, L (a TopCHeap of lower bounds, floor 0 until
/// full), and the latents whose upper bound reached L when they were seen, with that bound, in
/// increasing latent order. Storage is external. When the list fills up it is compacted to the
/// entries still >= L; if that leaves it more than 3/4 full the token is marked exhaustive (its
/// values are all computed canonically at the end: exact, only slower).
template <class Scalar>
struct Sieve {
  TopCHeap<Scalar> lower;  ///< cap largest positive lower bounds (their latents unused)
  std::int32_t* cand;      ///< candidate latents
  Scalar* up;              ///< their upper bounds
  Index room;              ///< capacity of cand / up
  Index n = 0;             ///< candidates held
  bool exhaustive = false;

  Scalar threshold() const { return lower.floor(); }

  /// Latents first + u, u in [0, count): GEMM values z[u], bias[u], latent bound terms a[u],
  /// b[u], T[u], token terms K1, K2, Tt, r (score_bounds.hpp). Lower bounds above L go to the
  /// heap; latents with upper bound > 0 and >= L become candidates. @p C bounds the token's
  /// bound terms over all latents (a_max K1 + b_max K2 + Tt + T_max), so once L > C a group
  /// whose every ẑ is below (L - C) / (1 + r) is skipped after one add and one compare: its
  /// upper bounds, at most max(ẑ (1 + r), 0) + C, cannot reach L.
  void scan(const Scalar* z, const Scalar* bias, const Scalar* a, const Scalar* b, const Scalar* T, Scalar K1,
            Scalar K2, Scalar Tt, Scalar r, Scalar C, Index count, std::int32_t first) {
    if (exhaustive) return;
    Index j = 0;
    Scalar L = threshold();
    auto skip_below = [&] {  // rounded down (double, a relative margin, then one float step)
      if (!(L > C)) return -std::numeric_limits<Scalar>::infinity();
      const double t = (static_cast<double>(L) - static_cast<double>(C)) / (1.0 + static_cast<double>(r)) * (1 - 1e-6);
      return std::nextafter(static_cast<Scalar>(t), -std::numeric_limits<Scalar>::infinity());
    };
    Scalar thr = skip_below();
    auto take = [&](Index u, Scalar lo, Scalar hi) {
      if (lo > L) {
        lower.offer(lo, first + static_cast<std::int32_t>(u));
        L = threshold();
        thr = skip_below();
      }
      if (hi > Scalar(0) && hi >= L) push(first + static_cast<std::int32_t>(u), hi);
    };
    if constexpr (std::is_same_v<Scalar, float>) {
      alignas(64) float los[16], his[16];
#if defined(__AVX512F__)
      const __m512 k1 = _mm512_set1_ps(K1), k2 = _mm512_set1_ps(K2), tt = _mm512_set1_ps(Tt), rr = _mm512_set1_ps(r);
      const __m512 zero = _mm512_setzero_ps();
      for (; j + 16 <= count && !exhaustive; j += 16) {
        const __m512 zh = _mm512_add_ps(_mm512_loadu_ps(z + j), _mm512_loadu_ps(bias + j));
        if (!_mm512_cmp_ps_mask(zh, _mm512_set1_ps(thr), _CMP_GE_OQ)) continue;
        const __m512 e = _mm512_fmadd_ps(
            _mm512_loadu_ps(a + j), k1,
            _mm512_fmadd_ps(_mm512_loadu_ps(b + j), k2,
                            _mm512_fmadd_ps(rr, _mm512_abs_ps(zh), _mm512_add_ps(tt, _mm512_loadu_ps(T + j)))));
        const __m512 hi = _mm512_add_ps(zh, e);
        unsigned mask =
            _mm512_cmp_ps_mask(hi, _mm512_set1_ps(L), _CMP_GE_OQ) & _mm512_cmp_ps_mask(hi, zero, _CMP_GT_OQ);
        if (!mask) continue;
        _mm512_store_ps(los, _mm512_sub_ps(zh, e));
        _mm512_store_ps(his, hi);
        for (; mask; mask &= mask - 1) {
          const int l = __builtin_ctz(mask);
          take(j + l, los[l], his[l]);
        }
      }
#elif defined(__AVX2__) && defined(__FMA__)
      const __m256 k1 = _mm256_set1_ps(K1), k2 = _mm256_set1_ps(K2), tt = _mm256_set1_ps(Tt), rr = _mm256_set1_ps(r);
      const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
      for (; j + 8 <= count && !exhaustive; j += 8) {
        const __m256 zh = _mm256_add_ps(_mm256_loadu_ps(z + j), _mm256_loadu_ps(bias + j));
        if (!_mm256_movemask_ps(_mm256_cmp_ps(zh, _mm256_set1_ps(thr), _CMP_GE_OQ))) continue;
        const __m256 e = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), k1,
                                         _mm256_fmadd_ps(_mm256_loadu_ps(b + j), k2,
                                                         _mm256_fmadd_ps(rr, _mm256_andnot_ps(sign, zh),
                                                                         _mm256_add_ps(tt, _mm256_loadu_ps(T + j)))));
        const __m256 hi = _mm256_add_ps(zh, e);
        auto mask = static_cast<unsigned>(_mm256_movemask_ps(
            _mm256_and_ps(_mm256_cmp_ps(hi, _mm256_set1_ps(L), _CMP_GE_OQ), _mm256_cmp_ps(hi, zero, _CMP_GT_OQ))));
        if (!mask) continue;
        _mm256_store_ps(los, _mm256_sub_ps(zh, e));
        _mm256_store_ps(his, hi);
        for (; mask; mask &= mask - 1) {
          const int l = __builtin_ctz(mask);
          take(j + l, los[l], his[l]);
        }
      }
#endif
      (void)los;
      (void)his;
    }
    for (; j < count && !exhaustive; ++j) {
      const Scalar zh = z[j] + bias[j];
      if (!(zh >= thr)) continue;
      const Scalar e = std::fma(a[j], K1, std::fma(b[j], K2, std::fma(r, std::abs(zh), Tt + T[j])));
      const Scalar hi = zh + e;
      if (hi > Scalar(0) && hi >= L) take(j, zh - e, hi);
    }
  }

  /// Drops the candidates whose upper bound fell below the final L.
  void prune() {
    const Scalar L = threshold();
    Index k = 0;
    for (Index i = 0; i < n; ++i)
      if (up[i] >= L) {
        cand[k] = cand[i];
        up[k] = up[i];
        ++k;
      }
    n = k;
  }

 private:
  void push(std::int32_t j, Scalar hi) {
    if (n == room) {
      prune();
      if (4 * n > 3 * room) {
        exhaustive = true;
        return;
      }
    }
    cand[n] = j;
    up[n] = hi;
    ++n;
  }
};

/// Buffers of the fused encoder, one set per thread, and the bound terms of the call; grown on
/// first use, then reused.
template <class Scalar>
struct FusedScratch {
  std::vector<Mat<Scalar>> tiles;                       ///< mc x bt pre-activations
  std::vector<std::vector<Sieve<Scalar>>> sieves;       ///< bt per thread
  std::vector<std::vector<Scalar>> lower_val, cand_up;  ///< sieve storage: bt * cap, bt * room
  std::vector<std::vector<std::int32_t>> lower_idx, cand;
  std::vector<std::int32_t> surv_idx;              ///< B * room: each token's surviving candidates, by latent
  std::vector<Scalar> surv_val;                    ///< B * room: their canonical values
  std::vector<Index> surv_n;                       ///< B: survivors per token (-1: computed exhaustively)
  std::vector<Index> lat_start;                    ///< m + 1: survivors grouped by latent (counting sort)
  std::vector<Index> pairs;                        ///< B * room: token * room + slot, by latent
  std::vector<std::vector<float>> wide_w, wide_x;  ///< software bf16 product: widened operands
  ScoreBounds<Scalar> bounds;                      ///< per-latent and per-token bound terms, bf16 operands
  Index last_rescored = 0;                         ///< latents rescored by the last call (all tokens)
  Index last_exhaustive = 0;                       ///< tokens computed exhaustively by the last call

  /// Candidate room per token for a selection of @p cap.
  static Index room_for(Index cap) { return 4 * cap + 64; }

  void prepare(int threads, Index m, Index B, Index mc, Index bt, Index cap) {
    const auto T = static_cast<std::size_t>(threads);
    if (tiles.size() < T) {
      tiles.resize(T);
      sieves.resize(T);
      lower_val.resize(T);
      lower_idx.resize(T);
      cand.resize(T);
      cand_up.resize(T);
      wide_w.resize(T);
      wide_x.resize(T);
    }
    const auto nl = static_cast<std::size_t>(bt * cap), nc = static_cast<std::size_t>(bt * room_for(cap));
    for (std::size_t i = 0; i < T; ++i) {
      if (tiles[i].rows() != mc || tiles[i].cols() != bt) tiles[i].resize(mc, bt);
      sieves[i].resize(static_cast<std::size_t>(bt));
      if (lower_val[i].size() < nl) {
        lower_val[i].resize(nl);
        lower_idx[i].resize(nl);
      }
      if (cand[i].size() < nc) {
        cand[i].resize(nc);
        cand_up[i].resize(nc);
      }
    }
    const auto nb = static_cast<std::size_t>(B * room_for(cap));
    if (surv_idx.size() < nb) {
      surv_idx.resize(nb);
      surv_val.resize(nb);
      pairs.resize(nb);
    }
    surv_n.resize(static_cast<std::size_t>(B));
    lat_start.resize(static_cast<std::size_t>(m) + 1);
  }
};

/// For every token t of X (d x B): the up to @p cap largest positive pre-activations
/// z_tj = canonical_dot(W_enc[:, j], x_t) + c_j, written sorted by latent to values[t*cap ..] /
/// indices[t*cap ..] (room for B*cap entries), their number to count[t]. Ties keep the lower
/// latent. The product that proposes candidates runs on @p backend in @p precision (BFloat16:
/// float models only); the result does not depend on either. @p X must have contiguous columns
/// (a Mat, a Map of one, or middleCols of either).
template <class Scalar, class DerivedX>
void fused_top_c(const Parameters<Scalar>& p, const Vec<Scalar>& c, const Eigen::MatrixBase<DerivedX>& X, Index cap,
                 gemm::Backend backend, Precision precision, const gemm::Tiling& tiling, FusedScratch<Scalar>& scratch,
                 Scalar* values, std::int32_t* indices, Index* count) {
  static_assert(std::is_same_v<typename DerivedX::Scalar, Scalar>, "fused_top_c: X must have the model's Scalar");
  static_assert(!(DerivedX::Flags & Eigen::RowMajorBit), "fused_top_c: X must be column-major");
  const Index d = p.d_in(), m = p.d_sae(), B = X.cols();
  if (cap < 1 || cap > m)
    throw std::invalid_argument("fused_top_c: capacity " + std::to_string(cap) +
                                " outside [1, d_sae=" + std::to_string(m) + "]");
  if (X.rows() != d) throw std::invalid_argument("fused_top_c: batch rows differ from d_in");
  const bool bf16 = precision == Precision::BFloat16;
  if (bf16 && !std::is_same_v<Scalar, float>)
    throw std::invalid_argument("fused_top_c: a bf16 product needs a float model");
  scratch.last_rescored = 0;
  scratch.last_exhaustive = 0;
  if (B == 0) return;
  const Scalar* Xd = X.derived().data();
  const Index ldx = X.derived().outerStride();
  const Index bt = std::min(tiling.block_tokens, B), mc = std::min(tiling.chunk_latents, m);
  const Index blocks = (B + bt - 1) / bt;
  const sae::detail::SerialBelow serial(sae::detail::product_flops(m, B, d));
  const int threads = static_cast<int>(std::min<Index>(num_threads(), blocks));
  scratch.prepare(threads, m, B, mc, bt, cap);
  auto& bd = scratch.bounds;
  bd.prepare_latents(p.W_enc, precision);
  bd.prepare_tokens(Xd, d, B, ldx, precision);
  if (backend == gemm::Backend::Blas) gemm::set_blas_threads(1);

  SAE_OMP(parallel num_threads(threads)) {
#ifdef _OPENMP
    const int me = omp_get_thread_num();
#else
    const int me = 0;
#endif
    const auto mine = static_cast<std::size_t>(me);
    Mat<Scalar>& tile = scratch.tiles[mine];
    auto& sieves = scratch.sieves[mine];
    const Index room = FusedScratch<Scalar>::room_for(cap);
    SAE_OMP(for schedule(dynamic, 1))
    for (Index blk = 0; blk < blocks; ++blk) {
      const Index t0 = blk * bt, b = std::min(bt, B - t0);
      for (Index t = 0; t < b; ++t)
        sieves[static_cast<std::size_t>(t)] = Sieve<Scalar>{
            TopCHeap<Scalar>{scratch.lower_val[mine].data() + t * cap, scratch.lower_idx[mine].data() + t * cap, cap},
            scratch.cand[mine].data() + t * room, scratch.cand_up[mine].data() + t * room, room};
      for (Index j0 = 0; j0 < m; j0 += mc) {
        const Index w = std::min(mc, m - j0);
        if constexpr (std::is_same_v<Scalar, float>) {
          if (bf16)
            gemm::product_tn_bf16(backend, d, w, b, bd.W16.data() + j0 * d, d, bd.X16.data() + t0 * d, d, tile.data(),
                                  mc, scratch.wide_w[mine], scratch.wide_x[mine]);
        }
        if (!bf16) gemm::product_tn(backend, d, w, b, p.W_enc.data() + j0 * d, d, Xd + t0 * ldx, ldx, tile.data(), mc);
        for (Index t = 0; t < b; ++t) {
          const auto tok = static_cast<std::size_t>(t0 + t);
          sieves[static_cast<std::size_t>(t)].scan(tile.data() + t * mc, c.data() + j0, bd.a.data() + j0,
                                                   bd.b.data() + j0, bd.T.data() + j0, bd.K1[tok], bd.K2[tok],
                                                   bd.Tt[tok], bd.r, bd.C[tok], w, static_cast<std::int32_t>(j0));
        }
      }
      // Keep the survivors (pruned to the final L_t) for the batch-wide rescoring below.
      for (Index t = 0; t < b; ++t) {
        auto& sv = sieves[static_cast<std::size_t>(t)];
        const Index tok = t0 + t;
        if (sv.exhaustive) {
          scratch.surv_n[static_cast<std::size_t>(tok)] = -1;
          continue;
        }
        sv.prune();
        scratch.surv_n[static_cast<std::size_t>(tok)] = sv.n;
        std::copy(sv.cand, sv.cand + sv.n, scratch.surv_idx.data() + tok * room);
      }
    }
  }

  // Rescore every survivor canonically, grouped by latent over the whole batch (a counting sort
  // of the (token, candidate) pairs), so each W_enc column is read once per call, then take
  // each token's exact top-cap from its survivors in latent order (ties keep the lower latent).
  const Index room = FusedScratch<Scalar>::room_for(cap);
  Index* start = scratch.lat_start.data();
  Index* pair = scratch.pairs.data();
  std::fill(start, start + m + 1, Index(0));
  for (Index t = 0; t < B; ++t)
    for (Index i = 0; i < scratch.surv_n[static_cast<std::size_t>(t)]; ++i) ++start[scratch.surv_idx[t * room + i] + 1];
  for (Index j = 0; j < m; ++j) start[j + 1] += start[j];
  for (Index t = 0; t < B; ++t)
    for (Index i = 0; i < scratch.surv_n[static_cast<std::size_t>(t)]; ++i)
      pair[start[scratch.surv_idx[t * room + i]]++] = t * room + i;
  // start[j] is now the end of latent j's pairs (start[j - 1] their beginning)
  Scalar* val = scratch.surv_val.data();
  SAE_OMP(parallel for schedule(dynamic, 64) num_threads(threads))
  for (Index j = 0; j < m; ++j)
    for (Index q = j == 0 ? 0 : start[j - 1]; q < start[j]; ++q)
      val[pair[q]] = canonical_score(p.W_enc, Xd + (pair[q] / room) * ldx, static_cast<Index>(j), c[j]);
  Index rescored = 0, exhaustive = 0;
  SAE_OMP(parallel for schedule(dynamic, 16) num_threads(threads) reduction(+ : rescored, exhaustive))
  for (Index t = 0; t < B; ++t) {
    TopCHeap<Scalar> h{values + t * cap, indices + t * cap, cap};
    const Index n = scratch.surv_n[static_cast<std::size_t>(t)];
    if (n < 0) {  // exhaustive: every latent
      const Scalar* x = Xd + t * ldx;
      ++exhaustive;
      rescored += m;
      for (Index j = 0; j < m; ++j) {
        const Scalar v = canonical_score(p.W_enc, x, j, c[j]);
        if (v > h.floor()) h.offer(v, static_cast<std::int32_t>(j));
      }
    } else {
      rescored += n;
      const std::int32_t* idx = scratch.surv_idx.data() + t * room;
      for (Index i = 0; i < n; ++i)
        if (val[t * room + i] > h.floor()) h.offer(val[t * room + i], idx[i]);
    }
    h.sort_by_latent();
    count[t] = h.size;
  }
  scratch.last_rescored = rescored;
  scratch.last_exhaustive = exhaustive;
}

/// The result of fused_top_c computed the plain way: all m canonical pre-activations of 256
/// tokens at a time into @p Z (canonical_dot, tokens spread over the threads), then per token a
/// partial sort of its positive values by (value descending, latent ascending), the kept ones
/// written sorted by latent. No GEMM and no bound: the reference the fused kernel is tested
/// against, and the path EncoderState::fused = false takes (StepState::encoder.fused).
template <class Scalar, class DerivedX>
void plain_top_c(const Parameters<Scalar>& p, const Vec<Scalar>& c, const Eigen::MatrixBase<DerivedX>& X, Index cap,
                 Mat<Scalar>& Z, Scalar* values, std::int32_t* indices, Index* count) {
  const Index m = p.d_sae(), B = X.cols();
  if (cap < 1 || cap > m)
    throw std::invalid_argument("plain_top_c: capacity " + std::to_string(cap) +
                                " outside [1, d_sae=" + std::to_string(m) + "]");
  const Mat<Scalar> Xc = X.template cast<Scalar>();
  constexpr Index kBlock = 256;
  for (Index t0 = 0; t0 < B; t0 += kBlock) {
    const Index b = std::min(kBlock, B - t0);
    Z.resize(m, b);
    SAE_OMP(parallel for schedule(static) if (sae::detail::parallel_worth(sae::detail::streamed(b * p.W_enc.size()))))
    for (Index t = 0; t < b; ++t)
      for (Index j = 0; j < m; ++j) Z(j, t) = canonical_score(p.W_enc, Xc.data() + (t0 + t) * Xc.rows(), j, c[j]);
    SAE_OMP(parallel if (sae::detail::parallel_worth(sae::detail::streamed(b * m)))) {
      std::vector<std::pair<Scalar, std::int32_t>> pos;
      SAE_OMP(for schedule(static))
      for (Index t = 0; t < b; ++t) {
        pos.clear();
        for (Index j = 0; j < m; ++j)
          if (Z(j, t) > Scalar(0)) pos.emplace_back(Z(j, t), static_cast<std::int32_t>(j));
        const Index n = std::min<Index>(cap, static_cast<Index>(pos.size()));
        std::partial_sort(pos.begin(), pos.begin() + n, pos.end(), [](const auto& a, const auto& e) {
          return a.first > e.first || (a.first == e.first && a.second < e.second);
        });
        std::sort(pos.begin(), pos.begin() + n, [](const auto& a, const auto& e) { return a.second < e.second; });
        for (Index i = 0; i < n; ++i) {
          values[(t0 + t) * cap + i] = pos[static_cast<std::size_t>(i)].first;
          indices[(t0 + t) * cap + i] = pos[static_cast<std::size_t>(i)].second;
        }
        count[t0 + t] = n;
      }
    }
  }
}

/// "fp32" (Native) or "bf16"; "auto" gives nullopt.
inline std::optional<Precision> parse_precision(std::string_view s) {
  if (s == "auto") return std::nullopt;
  if (s == "fp32" || s == "float32") return Precision::Native;
  if (s == "bf16" || s == "bfloat16") return Precision::BFloat16;
  throw std::invalid_argument("unknown precision '" + std::string(s) + "' (auto, fp32, bf16)");
}
inline const char* precision_name(Precision p) { return p == Precision::BFloat16 ? "bf16" : "fp32"; }

namespace detail {
struct PrecisionChoice {
  std::mutex mutex;
  std::optional<Precision> fixed;  ///< set_encoder_precision
  bool read_env = false;
};
inline PrecisionChoice& precision_choice() {
  static PrecisionChoice c;
  return c;
}
}  // namespace detail

/// Fixes the precision of the TopK family's proposing product for the rest of the process
/// (nullopt: back to automatic, $SAE_PRECISION included).
inline void set_encoder_precision(std::optional<Precision> p) {
  auto& c = detail::precision_choice();
  std::lock_guard lock(c.mutex);
  c.fixed = p;
  c.read_env = p.has_value();
}

/// The precision the TopK family's encoder product runs in: what set_encoder_precision() fixed
/// (`--precision` of `sae train` and `sae bench`), else SAE_PRECISION=fp32|bf16 from the
/// environment, else bf16 for float models when the encoder backend is oneDNN and it runs bf16
/// on this CPU's units (gemm::bf16_hardware()), fp32 otherwise. A speed choice only: the codes
/// are identical.
/// The precision fixed by set_encoder_precision() or $SAE_PRECISION; nullopt for automatic.
inline std::optional<Precision> explicit_precision() {
  auto& c = detail::precision_choice();
  std::lock_guard lock(c.mutex);
  if (!c.read_env) {
    c.read_env = true;
    if (const char* env = std::getenv("SAE_PRECISION"); env && *env) c.fixed = parse_precision(env);
  }
  return c.fixed;
}

template <class Scalar>
Precision encoder_precision() {
  if constexpr (!std::is_same_v<Scalar, float>) {
    return Precision::Native;
  } else {
    if (const auto p = explicit_precision()) return *p;
    return gemm::encoder_backend() == gemm::Backend::Dnnl && gemm::bf16_hardware() ? Precision::BFloat16
                                                                                   : Precision::Native;
  }
}

/// Whether the dense variants (ReLU, JumpReLU) train in mixed precision (kernels::MixedPrecision):
/// only for float models, and only when bf16 was asked for explicitly (`--precision bf16`,
/// set_encoder_precision, $SAE_PRECISION): unlike the TopK family's exact selection it changes
/// the results, so `auto` keeps fp32.
template <class Scalar>
bool dense_bf16() {
  if constexpr (!std::is_same_v<Scalar, float>) {
    return false;
  } else {
    const auto p = explicit_precision();
    return p && *p == Precision::BFloat16;
  }
}

/// Everything the TopK-family encoders keep between steps: the fused kernel's tiles, the
/// candidate buffers of a batch-wide selection, and the switch between the fused kernel and the
/// plain reference.
template <class Scalar>
struct EncoderState {
  bool fused = true;                       ///< fused_top_c (true) or plain_top_c (false, the reference)
  std::optional<Precision> precision;      ///< of the proposing product; unset: encoder_precision<Scalar>()
  gemm::Tiling tiling;                     ///< tile shape of the fused kernel
  FusedScratch<Scalar> scratch;            ///< fused kernel tiles
  std::vector<Scalar> cand_values;         ///< B x cap candidate values (batch-wide selections)
  std::vector<std::int32_t> cand_indices;  ///< B x cap candidate latents
  std::vector<Index> cand_count;           ///< B candidate counts
  std::vector<Scalar> cut;                 ///< scratch for the batch-wide cut

  /// Top-cap positive pre-activations of every token of X (d x B) into the given slots, by
  /// the fused kernel or the plain reference. @p Z is the plain path's block buffer.
  template <class DerivedX>
  void top_c(const Parameters<Scalar>& p, const Vec<Scalar>& c, const Eigen::MatrixBase<DerivedX>& X, Index cap,
             Mat<Scalar>& Z, Scalar* values, std::int32_t* indices, Index* count) {
    if (!fused) return plain_top_c(p, c, X, cap, Z, values, indices, count);
    constexpr bool direct = (Eigen::internal::traits<DerivedX>::Flags & Eigen::DirectAccessBit) != 0 &&
                            !(DerivedX::Flags & Eigen::RowMajorBit) &&
                            std::is_same_v<typename DerivedX::Scalar, Scalar>;
    const gemm::Backend backend = gemm::encoder_backend();
    const Precision prec = precision ? *precision : encoder_precision<Scalar>();
    if constexpr (direct) {
      if (X.derived().innerStride() == 1)
        return fused_top_c(p, c, X.derived(), cap, backend, prec, tiling, scratch, values, indices, count);
    }
    const Mat<Scalar> Xc = X.template cast<Scalar>();  // an expression or strided view: one copy
    fused_top_c(p, c, Xc, cap, backend, prec, tiling, scratch, values, indices, count);
  }
};

}  // namespace sae::kernels
