// sae_one_step: runs training steps of any libsae variant from given weights on one batch and
// writes the gradients of the first step and the weights after the last, so an independent
// implementation (tests/python/test_torch_reference.py, PyTorch) can check every number.
//
//   sae_one_step --arch relu|topk|batchtopk|jumprelu|jumprelu-target|ortsae|matryoshka_batchtopk
//                --weights W.safetensors --data X.npy --out OUT.safetensors
//                [--k K] [every variant option of `sae train`: --l1 C --l0 C --target-l0 T --bandwidth EPS --ortho G --chunks K ...]
//                [--aux-k N] [--aux-coeff A] [--dead-mask M.npy] [--dead-tokens N] [--matryoshka-widths W1,W2,..]
//                [--lr LR] [--beta1 B1] [--beta2 B2] [--eps E] [--apply-b-dec 0|1] [--steps S]
//                [--target Y.npy]   (a transcoder: Y [B, d_out] are the targets of X's rows)
//
// W.safetensors holds SAELens-layout tensors W_enc [d, m], W_dec [m, d], b_enc [m], b_dec [d]
// and, for jumprelu, threshold [m]; for a transcoder W_dec [m, d_out], b_dec [d_out] and, for a
// skip transcoder, W_skip [d_out, d]. Each step is exactly the trainer's: forward_backward,
// projection of the decoder gradient (unit-norm variants), Adam at the fixed lr, after_update.
// OUT holds W_enc ... threshold after the steps and grad_W_enc ... grad_threshold of step 1
// (before the projection). stdout: one JSON line with the first step's loss terms and l0.
#include <sae/sae.hpp>

#include "../../examples/cli/train.hpp"  // sae_cli::add_variant_options

#include <CLI/CLI.hpp>

#include <iostream>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace {

struct Args {
  std::string arch, weights, data, out, target;
  std::optional<std::string> dead_mask;
  sae::Index k = 4;
  nlohmann::json options = nlohmann::json::object();  // the variant options (--l1, --chunks, ...)
  std::int64_t dead_tokens = 10'000'000, steps = 1;
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int apply_b_dec = 1;
};

sae::Parameters<float> read_weights(const std::string& path, bool with_threshold) {
  const auto r = sae::io::SafetensorsReader::open(path);
  const auto& shape = r.info("W_enc").shape;
  const sae::Index d = shape.at(0), m = shape.at(1), d_out = r.info("W_dec").shape.at(1);
  const bool skip = r.contains("W_skip");
  sae::Parameters<float> p(d, m, with_threshold, d_out, skip);
  sae::Mat<float> Wt(m, d);
  r.read_into("W_enc", Wt.data(), static_cast<std::size_t>(d * m));
  p.W_enc = Wt.transpose();
  r.read_into("W_dec", p.W_dec.data(), static_cast<std::size_t>(d_out * m));
  r.read_into("b_enc", p.b_enc.data(), static_cast<std::size_t>(m));
  r.read_into("b_dec", p.b_dec.data(), static_cast<std::size_t>(d_out));
  if (with_threshold) r.read_into("threshold", p.threshold.data(), static_cast<std::size_t>(m));
  if (skip) {
    sae::Mat<float> St(d, d_out);  // C-order [d_out, d]
    r.read_into("W_skip", St.data(), static_cast<std::size_t>(d * d_out));
    p.W_skip = St.transpose();
  }
  return p;
}

void add_params(sae::io::SafetensorsWriter& w, const std::string& prefix, const sae::Parameters<float>& p,
                std::vector<sae::Mat<float>>& keep) {
  const std::int64_t d = p.d_in(), m = p.d_sae(), d_out = p.d_out();
  keep.push_back(p.W_enc.transpose());
  w.add(prefix + "W_enc", {d, m}, std::span<const float>(keep.back().data(), static_cast<std::size_t>(d * m)));
  w.add(prefix + "W_dec", {m, d_out}, std::span<const float>(p.W_dec.data(), static_cast<std::size_t>(d_out * m)));
  w.add(prefix + "b_enc", {m}, std::span<const float>(p.b_enc.data(), static_cast<std::size_t>(m)));
  w.add(prefix + "b_dec", {d_out}, std::span<const float>(p.b_dec.data(), static_cast<std::size_t>(d_out)));
  if (p.has_threshold())
    w.add(prefix + "threshold", {m}, std::span<const float>(p.threshold.data(), static_cast<std::size_t>(m)));
  if (p.has_skip()) {
    keep.push_back(p.W_skip.transpose());
    w.add(prefix + "W_skip", {d_out, d},
          std::span<const float>(keep.back().data(), static_cast<std::size_t>(d * d_out)));
  }
}

template <class Model>
int run(Model& model, const Args& a) {
  using Act = typename Model::activation_type;
  model.set_params(read_weights(a.weights, Act::has_threshold));
  auto reader = sae::io::NpyReader::open(a.data);
  const sae::Mat<float> X = reader.matrix();
  const sae::Mat<float> Y = a.target.empty() ? X : sae::io::NpyReader::open(a.target).matrix();
  if constexpr (Model::loss_type::template has<sae::AuxK>()) {
    auto& aux = model.loss().template get<sae::AuxK>();  // k_aux, coefficient, dead_tokens: set by the variant
    aux.since_fired.assign(static_cast<std::size_t>(model.d_sae()), 0);
    if (a.dead_mask) {
      auto mask = sae::io::NpyReader::open(*a.dead_mask);
      for (sae::Index j = 0; j < model.d_sae(); ++j)
        if (mask.f32_data()[j] != 0.0f) aux.since_fired[j] = a.dead_tokens;
    }
  }
  sae::AdamOptions o;
  o.beta1 = a.beta1;
  o.beta2 = a.beta2;
  o.eps = a.eps;
  sae::Adam<float> adam(o, model.params());
  typename Model::State s;
  sae::Parameters<float> grads, first_grads;
  nlohmann::json out;
  for (std::int64_t step = 0; step < a.steps; ++step) {
    const auto r = model.forward_backward(X, Y, grads, s, step);
    if (step == 0) {
      first_grads = grads;
      out["loss"] = r.total;
      const auto names = Model::loss_type::names();
      for (std::size_t i = 0; i < names.size(); ++i) out["terms"][names[i]] = r.terms[i];
      out["l0"] = static_cast<double>(sae::kernels::count_active(s.codes)) / static_cast<double>(X.cols());
    }
    if constexpr (Act::unit_norm_decoder) model.project_decoder_gradient(grads);
    adam.step(model.params(), grads, a.lr);
    model.after_update(s);
  }
  if constexpr (std::is_same_v<Act, sae::BatchTopK>) out["batchtopk_threshold"] = model.activation().threshold;
  sae::io::SafetensorsWriter w;
  std::vector<sae::Mat<float>> keep;
  keep.reserve(4);
  add_params(w, "", model.params(), keep);
  add_params(w, "grad_", first_grads, keep);
  w.write(a.out);
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sae_one_step: training steps from given weights (for reference checks)"};
  Args a;
  std::vector<std::string> archs = sae::variant_name_list();
  archs.push_back("jumprelu-target");  // jumprelu with --target-l0 (plain jumprelu ignores it)
  app.add_option("--arch", a.arch)->required()->check(CLI::IsMember(archs));
  app.add_option("--weights", a.weights)->required();
  app.add_option("--data", a.data)->required();
  app.add_option("--out", a.out)->required();
  app.add_option("--k", a.k);
  sae_cli::add_variant_options(&app, a.options);  // every variant's options, as `sae train` has them
  app.add_option("--dead-mask", a.dead_mask);
  app.add_option("--dead-tokens", a.dead_tokens);
  app.add_option("--lr", a.lr);
  app.add_option("--beta1", a.beta1);
  app.add_option("--beta2", a.beta2);
  app.add_option("--eps", a.eps);
  app.add_option("--apply-b-dec", a.apply_b_dec);
  app.add_option("--steps", a.steps);
  app.add_option("--target", a.target);
  CLI11_PARSE(app, argc, argv);
  sae::set_num_threads(1);
  try {
    const auto r = sae::io::SafetensorsReader::open(a.weights);
    // The model `sae train` builds for the variant (sae/variants/list.hpp), with the given
    // options and no coefficient warm-up unless one is given.
    sae::TrainSettings t;
    t.arch = a.arch == "jumprelu-target" ? "jumprelu" : a.arch;
    t.d_sae = r.info("W_enc").shape.at(1);
    t.k = a.k;
    t.dead_tokens = a.dead_tokens;
    t.opt.steps = a.steps;
    t.options = a.options;
    if (a.arch == "jumprelu") t.options.erase("target_l0");
    for (const char* warm : {"l1_warmup", "l0_warmup"})
      if (!t.options.contains(warm)) t.options[warm] = 0;
    sae::SaeConfig cfg;
    cfg.d_in = r.info("W_enc").shape.at(0);
    cfg.d_sae = t.d_sae;
    cfg.architecture = sae::canonical_variant_name(t.arch);
    cfg.k = sae::variant_name_uses_k(t.arch) ? a.k : 0;
    cfg.apply_b_dec_to_input = a.apply_b_dec != 0;
    if (!a.target.empty()) {  // a transcoder: d_out from the weights, W_skip if they hold one
      cfg.d_out = r.info("W_dec").shape.at(1);
      cfg.skip = r.contains("W_skip");
      cfg.apply_b_dec_to_input = false;
    }
    nlohmann::json tr;
    return sae::with_training_model(t, cfg, tr, [&](auto& m) { return run(m, a); });
  } catch (const std::exception& e) {
    std::cerr << "sae_one_step: error: " << e.what() << std::endl;
    return 1;
  }
}
