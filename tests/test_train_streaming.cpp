// Streaming training data (NpyDataset, StreamingBatches), activation normalisation and its
// fold into the saved weights, and the trainer's checks for non-finite input and loss.
#include "helpers.hpp"

#include <sae/train/checkpoint.hpp>
#include <sae/train/streaming.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <vector>

using sae::Index;
using sae::Mat;
using sae_test::TempDir;

namespace {

/// Writes @p X (d x N, one token per column) as a C-order [N, d] .npy, float32 or float16.
void write_tokens(const std::filesystem::path& p, const Mat<float>& X, bool f16 = false) {
  if (!f16) {
    sae::io::save_npy_matrix(p, X);
    return;
  }
  std::vector<std::uint16_t> h(static_cast<std::size_t>(X.size()));
  sae::detail::float_to_half(X.data(), h.data(), h.size());
  const std::size_t shape[2] = {static_cast<std::size_t>(X.cols()), static_cast<std::size_t>(X.rows())};
  sae::io::save_npy_f16(p, h.data(), shape);
}

/// Four files (the third float16) whose tokens identify themselves: x = (id, file, row, -id).
struct FourFiles {
  TempDir dir{"stream"};
  std::vector<Index> rows{137, 250, 91, 322};
  Index total = 0;
  FourFiles() {
    for (std::size_t f = 0; f < rows.size(); ++f) {
      Mat<float> X(4, rows[f]);
      for (Index r = 0; r < rows[f]; ++r) {
        const auto id = static_cast<float>(total + r);
        X.col(r) << id, static_cast<float>(f), static_cast<float>(r), -id;
      }
      write_tokens(dir / ("part" + std::to_string(f) + ".npy"), X, /*f16=*/f == 2);
      total += rows[f];
    }
    sae_test::write_all(dir / "notes.txt", "not an array");  // ignored: not *.npy
  }
};

std::vector<std::int64_t> draw_ids(sae::StreamingBatches<float>& s, Index batches) {
  std::vector<std::int64_t> ids;
  for (Index i = 0; i < batches; ++i) {
    const Mat<float>& x = s.next();
    for (Index t = 0; t < x.cols(); ++t) ids.push_back(static_cast<std::int64_t>(x(0, t)));
  }
  return ids;
}

}  // namespace

TEST_CASE("StreamingBatches: 4 files, buffer < data: each token once per pass, mixed across files, seeded",
          "[train][io][streaming]") {
  FourFiles ff;
  const sae::NpyDataset ds = sae::NpyDataset::open({ff.dir.path()});
  REQUIRE(ds.files() == 4);
  REQUIRE(ds.d_in() == 4);
  REQUIRE(ds.tokens() == 800);
  REQUIRE(ds.file(2).dtype() == sae::io::NpyDtype::F16);

  for (std::int64_t chunk : {std::int64_t{0}, std::int64_t{8}, std::int64_t{64}}) {
    INFO("chunk " << chunk);
    sae::StreamingOptions o;
    o.batch = 32;
    o.shuffle_buffer = 100;  // one eighth of the data
    o.chunk = chunk;
    o.seed = 5;
    sae::StreamingBatches<float> a(ds, o), b(ds, o);
    REQUIRE(a.shuffle_buffer() == 100);
    // 50 batches of 32 = exactly two passes over the 800 tokens.
    std::vector<std::int64_t> seen;
    for (int i = 0; i < 50; ++i) {
      const Mat<float> x = a.next();
      REQUIRE(x == b.next());  // same seed, same batches
      for (Index t = 0; t < x.cols(); ++t) {
        const auto id = static_cast<std::int64_t>(x(0, t));
        REQUIRE(x(3, t) == -x(0, t));  // columns are whole tokens
        REQUIRE(a.token_id(t) == id);
        const auto [f, row] = ds.locate(id);
        REQUIRE(x(1, t) == static_cast<float>(f));
        REQUIRE(x(2, t) == static_cast<float>(row));
        if (i == 0 && t == 0)
          REQUIRE(a.origin(t) ==
                  (ff.dir / ("part" + std::to_string(f) + ".npy")).string() + " row " + std::to_string(row));
        seen.push_back(id);
      }
    }
    REQUIRE(a.position() == 1600);
    REQUIRE(a.epoch() == 2);
    for (int pass = 0; pass < 2; ++pass) {
      std::vector<std::int64_t> p(seen.begin() + 800 * pass, seen.begin() + 800 * (pass + 1));
      std::sort(p.begin(), p.end());
      std::vector<std::int64_t> all(800);
      std::iota(all.begin(), all.end(), 0);
      REQUIRE(p == all);  // every token exactly once per pass
    }
    REQUIRE(!std::equal(seen.begin(), seen.begin() + 800, seen.begin() + 800));  // a new order each pass
    // The first shuffle buffer already mixes tokens of several files.
    std::set<std::size_t> files_in_first_buffer;
    for (int t = 0; t < 100; ++t) files_in_first_buffer.insert(ds.locate(seen[t]).first);
    REQUIRE(files_in_first_buffer.size() >= 3);
    // ... and it is not the files' own order.
    REQUIRE(!std::is_sorted(seen.begin(), seen.begin() + 100));

    // seek(p) continues exactly as the uninterrupted source, across windows and epochs.
    for (std::int64_t pos : {0, 1, 31, 99, 100, 101, 555, 799, 800, 801, 1234}) {
      sae::StreamingBatches<float> c(ds, o);
      c.seek(pos);
      const Mat<float>& x = c.next();
      for (Index t = 0; t < x.cols(); ++t) REQUIRE(static_cast<std::int64_t>(x(0, t)) == seen[pos + t]);
      REQUIRE(c.position() == pos + 32);
    }
  }

  // Another seed, another order; the same seed through a file list instead of the directory.
  sae::StreamingOptions o;
  o.batch = 40;
  o.shuffle_buffer = 100;
  o.seed = 5;
  sae::StreamingBatches<float> s5(ds, o);
  o.seed = 6;
  sae::StreamingBatches<float> s6(ds, o);
  REQUIRE(draw_ids(s5, 20) != draw_ids(s6, 20));
  std::vector<std::filesystem::path> list;
  for (int f = 0; f < 4; ++f) list.push_back(ff.dir / ("part" + std::to_string(f) + ".npy"));
  const sae::NpyDataset ds2 = sae::NpyDataset::open(list);
  o.seed = 5;
  sae::StreamingBatches<float> l5(ds2, o);
  sae::StreamingBatches<float> s5b(ds, o);
  REQUIRE(draw_ids(l5, 20) == draw_ids(s5b, 20));
}

TEST_CASE("StreamingBatches: a buffer of at least the whole data is a full shuffle; scale multiplies",
          "[train][io][streaming]") {
  FourFiles ff;
  const sae::NpyDataset ds = sae::NpyDataset::open({ff.dir.path()});
  sae::StreamingOptions o;
  o.batch = 800;
  o.shuffle_buffer = 5000;  // clamped to N
  o.scale = 0.5;
  sae::StreamingBatches<double> s(ds, o);
  REQUIRE(s.shuffle_buffer() == 800);
  const Mat<double>& x = s.next();
  std::vector<std::int64_t> ids;
  for (Index t = 0; t < x.cols(); ++t) {
    REQUIRE(x(3, t) == -x(0, t));
    REQUIRE(x(0, t) == 0.5 * static_cast<double>(s.token_id(t)));
    ids.push_back(s.token_id(t));
  }
  std::sort(ids.begin(), ids.end());
  REQUIRE(std::adjacent_find(ids.begin(), ids.end()) == ids.end());
  REQUIRE(ids.size() == 800);
}

TEST_CASE("NpyDataset: files whose d_in differ, empty directories, wrong ranks are named in the error",
          "[train][io][streaming]") {
  TempDir dir("stream_err");
  write_tokens(dir / "a.npy", Mat<float>::Ones(8, 10));
  write_tokens(dir / "b.npy", Mat<float>::Ones(6, 10));
  sae_test::require_io_error(
      dir / "b.npy",
      [&] {
        sae::NpyDataset::open({dir / "a.npy", dir / "b.npy"});
      },
      "d_in is 6, but " + (dir / "a.npy").string() + " has d_in 8");
  sae_test::require_io_error(
      dir / "b.npy", [&] { sae::NpyDataset::open({dir.path()}); }, "d_in is 6");
  std::filesystem::create_directories(dir / "empty");
  sae_test::require_io_error(
      dir / "empty", [&] { sae::NpyDataset::open({dir / "empty"}); }, "no .npy files");
  sae_test::require_io_error(
      dir / "missing.npy", [&] { sae::NpyDataset::open({dir / "missing.npy"}); }, "not found");
  const float v[3] = {1, 2, 3};
  const std::size_t shape1[1] = {3};
  sae::io::save_npy(dir / "flat.npy", v, shape1);
  sae_test::require_io_error(
      dir / "flat.npy", [&] { sae::NpyDataset::open({dir / "flat.npy"}); }, "2-D");
}

TEST_CASE("Normalisation: the estimated factor matches its definition", "[train][io][streaming]") {
  TempDir dir("norm");
  const Mat<float> X1 = sae_test::random_matrix<float>(16, 300, 1, 3.0);
  const Mat<float> X2 = sae_test::random_matrix<float>(16, 200, 2, 5.0);
  write_tokens(dir / "a.npy", X1);
  write_tokens(dir / "b.npy", X2);
  const sae::NpyDataset ds = sae::NpyDataset::open({dir.path()});
  Mat<float> all(16, 500);
  all << X1, X2;
  double sn = 0, sq = 0;
  for (Index t = 0; t < 500; ++t) {
    sq += all.col(t).cast<double>().squaredNorm();
    sn += all.col(t).cast<double>().norm();
  }
  const double s_norm = sae::estimate_scale(ds, sae::Normalization::ExpectedNorm, 1'000'000);
  const double s_ms = sae::estimate_scale(ds, sae::Normalization::UnitMeanSquare, 1'000'000);
  REQUIRE(s_norm == Approx(std::sqrt(16.0) / (sn / 500)).epsilon(1e-12));
  REQUIRE(s_ms == Approx(1.0 / std::sqrt(sq / 500)).epsilon(1e-12));
  REQUIRE(s_norm == Approx(sae::estimate_scale(all, sae::Normalization::ExpectedNorm)).epsilon(1e-12));
  // After scaling: mean norm sqrt(d), mean squared norm 1.
  double n2 = 0, q2 = 0;
  for (Index t = 0; t < 500; ++t) {
    n2 += (s_norm * all.col(t).cast<double>()).norm() / 500;
    q2 += (s_ms * all.col(t).cast<double>()).squaredNorm() / 500;
  }
  REQUIRE(n2 == Approx(4.0).epsilon(1e-9));
  REQUIRE(q2 == Approx(1.0).epsilon(1e-9));
  // A sample of 50 evenly spaced tokens is close to, not equal to, the full estimate.
  const double s50 = sae::estimate_scale(ds, sae::Normalization::ExpectedNorm, 50);
  REQUIRE(s50 == Approx(s_norm).epsilon(0.1));
  REQUIRE(sae::estimate_scale(ds, sae::Normalization::None) == 1.0);
  REQUIRE(sae::parse_normalization("unit-mean-square") == sae::Normalization::UnitMeanSquare);
  REQUIRE_THROWS_WITH(sae::parse_normalization("l2"), Catch::Contains("expected-norm"));
  // A non-finite sampled token is named.
  Mat<float> bad = X1;
  bad(3, 150) = std::numeric_limits<float>::infinity();
  write_tokens(dir / "a.npy", bad);
  const sae::NpyDataset dsb = sae::NpyDataset::open({dir / "a.npy"});
  REQUIRE_THROWS_WITH(sae::estimate_scale(dsb, sae::Normalization::ExpectedNorm),
                      Catch::Contains((dir / "a.npy").string() + " row 150"));
}

namespace {

/// Trains @p model a few steps on s X, folds s into a saved SAE and checks the loaded SAE on raw X
/// against the trained model on s X: identical codes, reconstruction / s. Exact (bit for bit)
/// when s is a power of two, to float rounding otherwise.
template <class Model>
void check_fold(Model model, double s, bool exact) {
  const Mat<float> X = sae_test::random_matrix<float>(model.d_in(), 512, 21, 2.0);
  sae::ShuffledBatches<float> batches(X, 128, 3);
  batches.set_scale(s);
  sae::TrainOptions t;
  t.steps = 15;
  t.lr = 3e-3;
  t.seed = 4;
  sae::train(model, batches, t);
  const Mat<float> sX = X * static_cast<float>(s);
  // Trained model (inference form) on s X.
  const auto [cfg, p] = sae::inference_form(model);
  sae::AnySae trained = sae::make_sae(cfg);
  std::visit([&](auto& m) { m.set_params(p); }, trained);
  // Folded, saved, loaded; on raw X.
  TempDir dir("fold");
  Model folded = model;
  sae::fold_input_scale(folded.params(), s);
  sae::save_sae(dir.path(), folded);
  const sae::AnySae loaded = sae::load_sae(dir.path());
  REQUIRE(trained.index() == loaded.index());
  std::visit(
      [&](const auto& a) {
        using M = std::decay_t<decltype(a)>;
        const M& b = std::get<M>(loaded);
        Mat<float> fa, fb, xa, xb;
        const auto ca = a.encode(sX), cb = b.encode(X);
        a.decode(ca, xa);
        b.decode(cb, xb);
        if constexpr (std::is_same_v<std::decay_t<decltype(ca)>, Mat<float>>) {
          fa = ca;
          fb = cb;
        } else {
          fa = ca.to_dense();
          fb = cb.to_dense();
        }
        REQUIRE(fa.cols() == X.cols());
        REQUIRE((fa.array() != 0).count() > 0);
        const Mat<float> xa_raw = xa / static_cast<float>(s);
        if (exact) {
          REQUIRE(fa == fb);      // the same codes, bit for bit
          REQUIRE(xb == xa_raw);  // the reconstruction in raw units, bit for bit
        } else {
          REQUIRE((fa - fb).cwiseAbs().maxCoeff() <= 1e-4 * (1 + fa.cwiseAbs().maxCoeff()));
          REQUIRE((xb - xa_raw).norm() <= 1e-5 * xa_raw.norm());
        }
      },
      trained);
}

}  // namespace

TEST_CASE("Normalisation: the factor folded into saved weights gives the same codes on raw input",
          "[train][io][streaming]") {
  sae::SaeConfig cfg;
  cfg.d_in = 12;
  cfg.d_sae = 40;
  cfg.k = 3;
  for (double s : {4.0, 0.125}) {
    INFO("s = " << s);
    check_fold(sae::TopKSae<float>(cfg), s, true);
    check_fold(sae::BatchTopKSae<float>(cfg), s, true);
    check_fold(sae::JumpReluSae<float>(cfg), s, true);
    check_fold(sae::ReluSae<float>(cfg), s, true);
  }
  check_fold(sae::TopKSae<float>(cfg), 0.37, false);
  check_fold(sae::JumpReluSae<float>(cfg), 2.9, false);
  cfg.apply_b_dec_to_input = false;
  check_fold(sae::JumpReluSae<float>(cfg), 8.0, true);
}

TEST_CASE("Trainer: NaN or Inf in the input stops training, naming the step, file and row", "[train][io][streaming]") {
  FourFiles ff;
  // Replace part1.npy with a copy holding an Inf at row 77.
  Mat<float> X(4, 250);
  for (Index r = 0; r < 250; ++r)
    X.col(r) << static_cast<float>(137 + r), 1.0f, static_cast<float>(r), -static_cast<float>(137 + r);
  X(2, 77) = -std::numeric_limits<float>::infinity();
  write_tokens(ff.dir / "part1.npy", X);
  const sae::NpyDataset ds = sae::NpyDataset::open({ff.dir.path()});
  sae::StreamingOptions o;
  o.batch = 32;
  o.shuffle_buffer = 100;
  o.seed = 9;
  // Where does token 137 + 77 come? Ask an identical source.
  sae::StreamingBatches<float> probe(ds, o);
  std::int64_t bad_step = 0;
  for (std::int64_t step = 1; bad_step == 0; ++step) {
    probe.next();
    for (Index t = 0; t < 32; ++t)
      if (probe.token_id(t) == 137 + 77) bad_step = step;
  }
  sae::StreamingBatches<float> source(ds, o);
  sae::SaeConfig cfg;
  cfg.d_in = 4;
  cfg.d_sae = 8;
  cfg.k = 2;
  sae::TopKSae<float> model(cfg);
  sae::TrainOptions t;
  t.steps = 100;
  std::int64_t last_ok = 0;
  sae::TrainState<float> st;
  try {
    sae::train_from(
        model, source, t, st, [](const sae::TrainProgress&) {},
        [&](const sae::TrainState<float>& s) { last_ok = s.step; });
    FAIL("no error");
  } catch (const sae::NumericalError& e) {
    const std::string msg = e.what();
    INFO(msg);
    REQUIRE(msg.find("step " + std::to_string(bad_step) + ": input activation is -inf at " +
                     (ff.dir / "part1.npy").string() + " row 77, dimension 2") != std::string::npos);
    REQUIRE(msg.find('\n') == std::string::npos);
  }
  REQUIRE(last_ok == bad_step - 1);  // the bad step changed nothing
  REQUIRE(st.step == bad_step - 1);

  // ShuffledBatches names the row (and the data, when given a name).
  Mat<float> M = Mat<float>::Random(4, 64);
  M(1, 40) = std::numeric_limits<float>::quiet_NaN();
  sae::ShuffledBatches<float> sb(M, 64, 1);
  sb.set_name("mem");
  sae::TopKSae<float> m2(cfg);
  REQUIRE_THROWS_WITH(sae::train(m2, sb, t),
                      Catch::Contains("step 1: input activation is nan at mem row 40, dimension 1"));
}

TEST_CASE("Trainer: a loss that overflows stops training with the step", "[train]") {
  sae::SaeConfig cfg;
  cfg.d_in = 4;
  cfg.d_sae = 8;
  cfg.k = 2;
  sae::TopKSae<float> model(cfg);
  Mat<float> X = Mat<float>::Random(4, 64);
  X.col(5) *= 1e30f;  // finite input, infinite squared error
  sae::ShuffledBatches<float> b(X, 16, 1);
  sae::TrainOptions t;
  t.steps = 10;
  t.initialize = true;
  REQUIRE_THROWS_WITH(sae::train(model, b, t),
                      Catch::Contains("training diverged at step") && Catch::Contains("loss is"));
}
