// sae encode: encode activations with an SAE, streamed in batches, and write the codes.
#pragma once

#include "common.hpp"

namespace sae_cli {

struct EncodeArgs {
  fs::path sae_dir, data, out;
  sae::Index batch = 4096;
  sae::Index limit = 0;
  bool no_compress = false;
  int threads = 0;
};

inline int run_encode(const EncodeArgs& a) {
  sae::set_num_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();
  if (a.batch <= 0) throw std::invalid_argument("--batch must be positive");
  const std::string ext = a.out.extension().string();
  if (ext != ".npy" && ext != ".npz")
    throw UsageError(a.out.string() + ": output must be .npy (dense [tokens, d_sae]) or .npz (sparse)");
  const bool sparse = ext == ".npz";
  const sae::AnySae model = sae::load_sae(a.sae_dir);
  const sae::interp::NpyBatches X(a.data);
  const sae::Index d_sae = model.d_sae();
  model.check_d_in(X.d_in(), a.data.string(), a.sae_dir);
  const sae::Index n = a.limit > 0 ? std::min(a.limit, X.tokens()) : X.tokens();
  std::cerr << "sae encode: " << n << " tokens of " << a.data.string() << " -> " << a.out.string() << " ("
            << (sparse ? "sparse" : "dense") << " [" << n << ", " << d_sae << "])\n";
  double active = 0;
  std::optional<sae::interp::DenseCodesWriter> dense_out;
  std::optional<sae::interp::SparseCodesWriter> sparse_out;
  if (sparse)
    sparse_out.emplace(a.out, d_sae, !a.no_compress);
  else
    dense_out.emplace(a.out, n, d_sae);
  sae::Index last_report = 0;
  std::visit(
      [&](const auto& m) {
        sae::interp::encode_batches(
            m, X, a.batch,
            [&](sae::Index t, const auto& codes, const auto& Xb) {
              active += static_cast<double>(sae::kernels::count_active(codes));
              if (sparse)
                sparse_out->add(codes);
              else
                dense_out->add(codes);
              if (t + Xb.cols() - last_report >= 100000 || t + Xb.cols() == n) {
                last_report = t + Xb.cols();
                std::cerr << "sae encode: " << last_report << "/" << n << " tokens\n";
              }
            },
            0, n);
      },
      model);
  if (sparse)
    sparse_out->commit();
  else
    dense_out->commit();
  print_result({{"out", a.out.string()},
                {"format", sparse ? "sparse" : "dense"},
                {"tokens", n},
                {"d_sae", d_sae},
                {"nnz", static_cast<std::int64_t>(active)},
                {"l0", active / static_cast<double>(n)},
                {"seconds", seconds_since(t0)}});
  return 0;
}

inline CLI::App* add_encode(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<EncodeArgs>();
  auto* c =
      app.add_subcommand("encode", "Encode activations (.npy) with an SAE; write the codes (.npy dense, .npz sparse)");
  add_sae_and_data(c, a->sae_dir, a->data);
  c->add_option("--out", a->out,
                "Output codes: .npy float32 [tokens, d_sae], or .npz with offsets, indices, values, shape")
      ->required();
  c->add_flag("--no-compress", a->no_compress, ".npz members stored instead of deflated");
  c->add_option("--batch", a->batch, "Tokens per batch")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--limit", a->limit, "Encode only the first N tokens")->check(CLI::NonNegativeNumber);
  c->add_option("--threads", a->threads, "Threads")->check(CLI::NonNegativeNumber);
  c->callback([a, &chosen] { chosen = [a] { return run_encode(*a); }; });
  return c;
}

}  // namespace sae_cli
