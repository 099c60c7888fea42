/// @file sae/interp/logit_effect.hpp
/// The direct logit effect of SAE features: the vocabulary logits a feature's decoder
/// direction writes,
///
///     s = U · W_dec[:, j]        (U: [V, d] unembedding, final-norm weight folded in; s: V values)
///
/// and its `top` most promoted (largest s) and most suppressed (smallest s) tokens.
#pragma once

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/parameters.hpp"
#include "../io/error.hpp"
#include "../io/npy.hpp"

namespace sae::interp {

/// One vocabulary entry and its logit s_v.
struct LogitToken {
  Index id = 0;
  float value = 0;
};

/// The logit effect of one feature: promoted (s descending) and suppressed (s ascending),
/// ties broken by the lower token id.
struct LogitEffect {
  Index feature = 0;
  std::vector<LogitToken> promoted, suppressed;
};

/// Logit effects of @p features (columns of the d x m decoder @p W_dec) through the unembedding
/// @p U ([V, d] .npy, float32 mapped or float16 converted 16384 rows at a time). IoError naming
/// U's file when it is not 2-D or its d differs from W_dec's. Cost: V·d·|features| multiply-adds.
/// (A template only so that translation units that never call it do not compile its products.)
template <class Reader = io::NpyReader>
std::vector<LogitEffect> logit_effects(const Reader& U, const Eigen::Ref<const Mat<float>>& W_dec,
                                       const std::vector<Index>& features, Index top = 10) {
  if (U.shape().size() != 2) throw io::IoError(U.path(), "expected a 2-D unembedding [vocab, d_in]");
  const Index V = static_cast<Index>(U.rows()), d = static_cast<Index>(U.cols());
  if (d != W_dec.rows())
    throw io::IoError(U.path(), "unembedding has d_in=" + std::to_string(d) +
                                    " but the SAE has d_in=" + std::to_string(W_dec.rows()));
  const Index F = static_cast<Index>(features.size());
  Mat<float> W(d, F);  // the selected decoder columns
  for (Index i = 0; i < F; ++i) W.col(i) = W_dec.col(features[static_cast<std::size_t>(i)]);
  Mat<float> S(V, F);  // S = U W: one column of vocabulary logits per feature
  if (U.dtype() == io::NpyDtype::F32) {
    S.noalias() = U.matrix().transpose() * W;
  } else {
    const Index chunk = 16384;
    Mat<float> buf;
    for (Index v0 = 0; v0 < V; v0 += chunk) {
      const Index b = std::min(chunk, V - v0);
      buf.resize(d, b);
      U.copy_rows_f32(static_cast<std::size_t>(v0), static_cast<std::size_t>(b), buf.data());
      S.middleRows(v0, b).noalias() = buf.transpose() * W;
    }
  }
  std::vector<LogitEffect> out;
  const Index n = std::min(top, V);
  std::vector<Index> ids(static_cast<std::size_t>(V));
  for (Index i = 0; i < F; ++i) {
    LogitEffect e;
    e.feature = features[static_cast<std::size_t>(i)];
    auto pick = [&](bool largest, std::vector<LogitToken>& dst) {
      std::iota(ids.begin(), ids.end(), Index{0});
      std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](Index a, Index b) {
        const float x = S(a, i), y = S(b, i);
        return largest ? (x > y || (x == y && a < b)) : (x < y || (x == y && a < b));
      });
      for (Index k = 0; k < n; ++k)
        dst.push_back({ids[static_cast<std::size_t>(k)], S(ids[static_cast<std::size_t>(k)], i)});
    };
    pick(true, e.promoted);
    pick(false, e.suppressed);
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace sae::interp
