#include <sae/sae.hpp>

#include <iostream>

int main() {
  // 20,000 samples of 32-d data built from 64 known unit features (~2 active per sample).
  const sae::SyntheticData data = sae::make_superposition(
      {.d_in = 32, .features = 64, .samples = 20000, .active_prob = 0.03, .seed = 1});

  sae::SaeConfig cfg;
  cfg.d_in = 32;
  cfg.d_sae = 128;
  cfg.k = 2;
  sae::TopKSae<float> model(cfg);  // or ReluSae, BatchTopKSae, JumpReluSae, OrtSae

  sae::ShuffledBatches<float> batches(data.X, /*batch=*/512, /*seed=*/1);
  sae::TrainOptions opt;
  opt.steps = 400;
  opt.lr = 2e-3;
  sae::train(model, batches, opt);

  const sae::EvalMetrics m = sae::evaluate(model, data.X);
  std::cout << "fvu " << m.fvu << "  l0 " << m.l0
            << "  mmcs " << sae::mmcs(model.params().W_dec, data.features) << "\n";
  sae::save_sae("my_sae", model);  // SAELens directory: cfg.json + sae_weights.safetensors
  return m.fvu < 0.3 ? 0 : 1;
}
