/// @file sae/core/fused_encoder.hpp
/// The fused encoder of the TopK family: the encoder product and the per-token top-c selection
/// in one pass over cache-sized tiles, so the dense m x B pre-activations never exist.
///
///     for each block of bt tokens (in parallel, one block per thread at a time):
///       for each chunk of mc latents:
///         Z_tile = W_enc[:, chunk]^T X[:, block] + c[chunk]      (mc x bt, one product)
///         for each token of the block: offer Z_tile[:, t] to the token's top-c heap
///       write each token's heap, sorted by latent index
///
/// Cost: the product's 2 d m B flops plus one read of each pre-activation while its tile is hot;
/// the read compares 16 (AVX-512), 8 (AVX2) or TopCHeap::kGroup = 32 (otherwise) values at a
/// time with the token's current c-th largest value, so after the first few hundred latents
/// almost every value costs one vector compare.
/// Memory: one mc x bt tile and bt heaps of c entries per thread (FusedScratch), reused across
/// steps.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../detail/omp.hpp"
#include "gemm.hpp"
#include "parameters.hpp"

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

/// Buffers of the fused encoder, one set per thread; grown on first use, then reused.
template <class Scalar>
struct FusedScratch {
  std::vector<Mat<Scalar>> tiles;  ///< mc x bt pre-activations
  std::vector<Index> sizes;        ///< heap sizes of the block being worked on, bt per thread

  void prepare(int threads, Index mc, Index bt) {
    if (static_cast<int>(tiles.size()) < threads) tiles.resize(static_cast<std::size_t>(threads));
    for (auto& t : tiles)
      if (t.rows() != mc || t.cols() != bt) t.resize(mc, bt);
    if (static_cast<Index>(sizes.size()) < threads * bt) sizes.resize(static_cast<std::size_t>(threads * bt));
  }
};

/// For every token t of X (d x B): the up to @p cap largest positive pre-activations
/// z_tj = W_enc[:, j] . x_t + c_j, written sorted by latent to values[t*cap ..] /
/// indices[t*cap ..] (room for B*cap entries), their number to count[t]. Ties keep the lower
/// latent. @p X must have contiguous columns (a Mat, a Map of one, or middleCols of either).
template <class Scalar, class DerivedX>
void fused_top_c(const Parameters<Scalar>& p, const Vec<Scalar>& c, const Eigen::MatrixBase<DerivedX>& X, Index cap,
                 gemm::Backend backend, const gemm::Tiling& tiling, FusedScratch<Scalar>& scratch, Scalar* values,
                 std::int32_t* indices, Index* count) {
  static_assert(std::is_same_v<typename DerivedX::Scalar, Scalar>, "fused_top_c: X must have the model's Scalar");
  static_assert(!(DerivedX::Flags & Eigen::RowMajorBit), "fused_top_c: X must be column-major");
  const Index d = p.d_in(), m = p.d_sae(), B = X.cols();
  if (cap < 1 || cap > m)
    throw std::invalid_argument("fused_top_c: capacity " + std::to_string(cap) +
                                " outside [1, d_sae=" + std::to_string(m) + "]");
  if (X.rows() != d) throw std::invalid_argument("fused_top_c: batch rows differ from d_in");
  if (B == 0) return;
  const Scalar* Xd = X.derived().data();
  const Index ldx = X.derived().outerStride();
  const Index bt = std::min(tiling.block_tokens, B), mc = std::min(tiling.chunk_latents, m);
  const Index blocks = (B + bt - 1) / bt;
  const int threads = static_cast<int>(std::min<Index>(num_threads(), blocks));
  scratch.prepare(threads, mc, bt);
  if (backend == gemm::Backend::Blas) gemm::set_blas_threads(1);

  SAE_OMP(parallel num_threads(threads)) {
#ifdef _OPENMP
    const int me = omp_get_thread_num();
#else
    const int me = 0;
#endif
    Mat<Scalar>& tile = scratch.tiles[static_cast<std::size_t>(me)];
    Index* sizes = scratch.sizes.data() + me * bt;
    SAE_OMP(for schedule(dynamic, 1))
    for (Index blk = 0; blk < blocks; ++blk) {
      const Index t0 = blk * bt, b = std::min(bt, B - t0);
      std::fill(sizes, sizes + b, Index(0));
      for (Index j0 = 0; j0 < m; j0 += mc) {
        const Index w = std::min(mc, m - j0);
        gemm::product_tn(backend, d, w, b, p.W_enc.data() + j0 * d, d, Xd + t0 * ldx, ldx, tile.data(), mc);
        for (Index t = 0; t < b; ++t) {
          TopCHeap<Scalar> h{values + (t0 + t) * cap, indices + (t0 + t) * cap, cap, sizes[t]};
          h.offer_run(tile.data() + t * mc, c.data() + j0, w, static_cast<std::int32_t>(j0));
          sizes[t] = h.size;
        }
      }
      for (Index t = 0; t < b; ++t) {
        TopCHeap<Scalar> h{values + (t0 + t) * cap, indices + (t0 + t) * cap, cap, sizes[t]};
        h.sort_by_latent();
        count[t0 + t] = sizes[t];
      }
    }
  }
}

/// The result of fused_top_c computed the plain way: the pre-activations of 256 tokens at a time
/// with one Eigen product into @p Z (multi-threaded by Eigen under OpenMP; never the BLAS), plus
/// the bias, then per token, tokens spread over the threads, a partial sort of its positive
/// values by (value descending, latent ascending), the kept ones written sorted by latent. The
/// reference the fused kernel is tested against, and the path EncoderState::fused = false takes
/// (StepState::encoder.fused).
template <class Scalar, class DerivedX>
void plain_top_c(const Parameters<Scalar>& p, const Vec<Scalar>& c, const Eigen::MatrixBase<DerivedX>& X, Index cap,
                 Mat<Scalar>& Z, Scalar* values, std::int32_t* indices, Index* count) {
  const Index m = p.d_sae(), B = X.cols();
  if (cap < 1 || cap > m)
    throw std::invalid_argument("plain_top_c: capacity " + std::to_string(cap) +
                                " outside [1, d_sae=" + std::to_string(m) + "]");
  constexpr Index kBlock = 256;
  for (Index t0 = 0; t0 < B; t0 += kBlock) {
    const Index b = std::min(kBlock, B - t0);
    Z.resize(m, b);
    Z.noalias() = p.W_enc.transpose() * X.middleCols(t0, b);
    Z.colwise() += c;
    SAE_OMP(parallel) {
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

/// Everything the TopK-family encoders keep between steps: the fused kernel's tiles, the
/// candidate buffers of a batch-wide selection, and the switch between the fused kernel and the
/// plain reference.
template <class Scalar>
struct EncoderState {
  bool fused = true;                       ///< fused_top_c (true) or plain_top_c (false, the reference)
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
    if constexpr (direct) {
      if (X.derived().innerStride() == 1)
        return fused_top_c(p, c, X.derived(), cap, backend, tiling, scratch, values, indices, count);
    }
    const Mat<Scalar> Xc = X.template cast<Scalar>();  // an expression or strided view: one copy
    fused_top_c(p, c, Xc, cap, backend, tiling, scratch, values, indices, count);
  }
};

}  // namespace sae::kernels
