// Tests for sae/interp/encode.hpp: batch sources over memory and .npy files, batched encoding,
// and the streamed dense code writer.
#include <catch2/catch.hpp>

#include "helpers.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <vector>

#include <sae/interp/interp.hpp>

using sae::Index;
using sae::Mat;

namespace {

sae::TopKSae<float> small_topk(Index d, Index m, Index k, std::uint64_t seed) {
  sae::SaeConfig cfg;
  cfg.d_in = d;
  cfg.d_sae = m;
  cfg.k = k;
  sae::TopKSae<float> model(cfg);
  model.set_params(sae_test::random_params<float>(d, m, seed));
  return model;
}

}  // namespace

TEST_CASE("NpyBatches: float32 batches are views of the file, float16 batches are converted", "[interp][io]") {
  sae_test::TempDir dir("interp_npy");
  const Index d = 5, N = 103;
  const Mat<float> X = sae_test::random_matrix<float>(d, N, 1);
  sae::io::save_npy_matrix(dir / "x.npy", X);
  std::vector<std::uint16_t> half(static_cast<std::size_t>(d * N));
  sae::detail::float_to_half(X.data(), half.data(), half.size());
  const std::size_t shape[2] = {static_cast<std::size_t>(N), static_cast<std::size_t>(d)};
  sae::io::save_npy_f16(dir / "h.npy", half.data(), shape);

  const sae::interp::NpyBatches f32(dir / "x.npy"), f16(dir / "h.npy");
  CHECK(f32.d_in() == d);
  CHECK(f32.tokens() == N);
  Index next = 0;
  f32.for_each(10, [&](Index t0, const Eigen::Map<const Mat<float>>& B) {
    CHECK(t0 == next);
    CHECK(B.data() == f32.reader().f32_data() + t0 * d);  // no copy
    CHECK((B.array() == X.middleCols(t0, B.cols()).array()).all());
    next += B.cols();
  });
  CHECK(next == N);
  next = 20;
  f16.for_each(
      7,
      [&](Index t0, const Eigen::Map<const Mat<float>>& B) {
        CHECK(t0 == next);
        for (Index t = 0; t < B.cols(); ++t)
          for (Index i = 0; i < d; ++i)
            CHECK(B(i, t) == sae::detail::half_bits_to_float(half[static_cast<std::size_t>((t0 + t) * d + i)]));
        next += B.cols();
      },
      20, 50);
  CHECK(next == 50);

  const std::size_t shape1[1] = {static_cast<std::size_t>(d * N)};
  sae::io::save_npy(dir / "one_d.npy", X.data(), shape1);
  sae_test::require_io_error(
      dir / "one_d.npy", [&] { sae::interp::NpyBatches b(dir / "one_d.npy"); }, "2-D");
  CHECK_THROWS_AS(f32.for_each(0, [](Index, const auto&) {}), std::invalid_argument);
}

TEST_CASE("encode_batches: batch after batch equals one encode of all tokens", "[interp]") {
  const Index d = 9, m = 33, N = 250;
  const auto model = small_topk(d, m, 3, 2);
  const Mat<float> X = sae_test::random_matrix<float>(d, N, 3);
  const Mat<float> want = model.encode(X).to_dense();
  Mat<float> got = Mat<float>::Zero(m, N);
  Index calls = 0;
  sae::interp::encode_batches(model, sae::interp::MatrixBatches(X), 64,
                              [&](Index t0, const sae::SparseCodes<float>& c, const auto& Xb) {
                                ++calls;
                                CHECK(Xb.cols() == c.tokens());
                                got.middleCols(t0, c.tokens()) = c.to_dense();
                              });
  CHECK(calls == 4);
  CHECK((got.array() == want.array()).all());
  CHECK_THROWS_AS(sae::interp::encode_batches(model, sae::interp::MatrixBatches(Mat<float>(Mat<float>::Zero(d + 1, 3))),
                                              4, [](Index, const auto&, const auto&) {}),
                  std::invalid_argument);
}

TEST_CASE("DenseCodesWriter: streamed [N, m] codes read back as the dense codes; incomplete files never appear",
          "[interp][io]") {
  sae_test::TempDir dir("interp_codes");
  const Index d = 7, m = 20, N = 90;
  const auto model = small_topk(d, m, 4, 5);
  const Mat<float> X = sae_test::random_matrix<float>(d, N, 6);
  {
    sae::interp::DenseCodesWriter w(dir / "codes.npy", N, m);
    sae::interp::encode_batches(model, sae::interp::MatrixBatches(X), 32,
                                [&](Index, const auto& c, const auto&) { w.add(c); });
    w.commit();
  }
  const auto r = sae::io::NpyReader::open(dir / "codes.npy");
  REQUIRE(r.shape() == std::vector<std::size_t>{static_cast<std::size_t>(N), static_cast<std::size_t>(m)});
  CHECK(r.data_offset() % 64 == 0);
  CHECK((r.matrix().array() == model.encode(X).to_dense().array()).all());

  // Dense codes (ReLU) are written as they are.
  sae::SaeConfig cfg = model.config();
  sae::ReluSae<float> relu(cfg);
  relu.set_params(sae_test::random_params<float>(d, m, 8));
  {
    sae::interp::DenseCodesWriter w(dir / "relu.npy", N, m);
    w.add(relu.encode(X));
    w.commit();
  }
  CHECK((sae::io::NpyReader::open(dir / "relu.npy").matrix().array() == relu.encode(X).array()).all());

  // Too few or too many tokens: an IoError, and no file at the path.
  {
    sae::interp::DenseCodesWriter w(dir / "short.npy", N, m);
    w.add(relu.encode(X.leftCols(10)));
    sae_test::require_io_error(
        dir / "short.npy", [&] { w.commit(); }, "10 of 90 rows");
    sae_test::require_io_error(
        dir / "short.npy", [&] { w.add(relu.encode(X)); }, "more than");
  }
  CHECK(!std::filesystem::exists(dir / "short.npy"));
  CHECK(dir.entries() == 2);  // codes.npy, relu.npy: no temporary files left behind
}

TEST_CASE("NpyStreamWriter: the streamed file is byte for byte the one save_npy writes", "[interp][io]") {
  sae_test::TempDir dir("interp_stream");
  for (const Index rows : {0, 1, 5, 40}) {
    const Mat<float> X = sae_test::random_matrix<float>(3, rows, 9);  // rows of 3 values, one per column
    sae::interp::NpyStreamWriter w(dir / "s.npy", rows, 3);
    for (Index t = 0; t < rows; t += 16) w.add(X.middleCols(t, std::min<Index>(16, rows - t)));
    w.commit();
    sae::io::save_npy_matrix(dir / "m.npy", X);
    CHECK(sae_test::read_all(dir / "s.npy") == sae_test::read_all(dir / "m.npy"));
  }
}

TEST_CASE("SparseCodesWriter: .npz with offsets, indices, values, shape reads back as the codes", "[interp][io]") {
  sae_test::TempDir dir("interp_npz");
  const Index d = 7, m = 20, N = 90;
  const auto model = small_topk(d, m, 4, 9);
  const Mat<float> X = sae_test::random_matrix<float>(d, N, 10);
  for (bool compress : {true, false}) {
    const auto path = dir / (compress ? "c.npz" : "s.npz");
    sae::interp::SparseCodesWriter w(path, m, compress);
    sae::interp::encode_batches(model, sae::interp::MatrixBatches(X), 25,
                                [&](Index, const auto& c, const auto&) { w.add(c); });
    CHECK(w.tokens() == N);
    CHECK(!std::filesystem::exists(path));
    w.commit();
    const auto r = sae::io::NpzReader::open(path);
    const auto offsets = r.read_i64("offsets"), shape = r.read_i64("shape");
    const auto indices = r.read_i64("indices");
    const auto values = r.read_f32("values");
    REQUIRE(shape.data == std::vector<std::int64_t>{N, m});
    REQUIRE(offsets.shape == std::vector<std::size_t>{static_cast<std::size_t>(N) + 1});
    REQUIRE(static_cast<Index>(values.data.size()) == w.nnz());
    Mat<float> F = Mat<float>::Zero(m, N);
    for (Index t = 0; t < N; ++t)
      for (auto i = offsets.data[static_cast<std::size_t>(t)]; i < offsets.data[static_cast<std::size_t>(t) + 1]; ++i)
        F(indices.data[static_cast<std::size_t>(i)], t) = values.data[static_cast<std::size_t>(i)];
    CHECK((F.array() == model.encode(X).to_dense().array()).all());
  }
  // Dense codes are stored by their nonzeros.
  sae::ReluSae<float> relu(model.config());
  relu.set_params(sae_test::random_params<float>(d, m, 11));
  const Mat<float> Fr = relu.encode(X);
  sae::interp::SparseCodesWriter w(dir / "relu.npz", m);
  w.add(Fr);
  CHECK(w.nnz() == (Fr.array() != 0).count());
  sae_test::require_io_error(
      dir / "relu.npz", [&] { w.add(Mat<float>(Mat<float>::Zero(m + 1, 1))); }, "d_sae=21");
}
