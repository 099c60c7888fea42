// sae convert: read an SAE in any supported format, write it as an SAELens directory.
#pragma once

#include "common.hpp"

namespace sae_cli {

struct ConvertArgs {
  fs::path in, out;
  std::string dtype = "f32";
  int threads = 0;
};

inline int run_convert(const ConvertArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  sae::io::StDtype dtype{};
  try {
    dtype = sae::parse_weights_dtype(a.dtype);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("--") + e.what());
  }
  sae::io::SaeFormat format{};
  const sae::AnySae model = sae::load_sae(a.in, &format);
  std::cerr << "sae convert: " << a.in.string() << " (" << sae::io::sae_format_name(format) << ") -> " << a.out.string()
            << " (saelens, " << sae::io::st_dtype_name(dtype) << ")\n";
  sae::save_sae_as(a.out, model, dtype, format);
  json j;
  const sae::SaeConfig& cfg = model.config();
  j["architecture"] = cfg.architecture;
  j["d_in"] = cfg.d_in;
  j["d_sae"] = cfg.d_sae;
  if (cfg.k > 0) j["k"] = cfg.k;
  j["apply_b_dec_to_input"] = cfg.apply_b_dec_to_input;
  j["in"] = a.in.string();
  j["format"] = sae::io::sae_format_name(format);
  j["out"] = a.out.string();
  j["dtype"] = sae::io::detail::saelens::torch_dtype_name(dtype);
  j["seconds"] = seconds_since(t0);
  print_result(j);
  return 0;
}

inline CLI::App* add_convert(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<ConvertArgs>();
  auto* c = app.add_subcommand("convert",
                               "Convert an SAE (SAELens dir, Gemma Scope params.npz / params.safetensors, sparsify "
                               "dir) to an SAELens directory");
  c->add_option("--in", a->in, "SAE directory or weights file (format detected)")->required();
  c->add_option("--out", a->out, "Output SAELens directory (cfg.json + sae_weights.safetensors)")->required();
  c->add_option("--dtype", a->dtype, "Storage dtype of the weights: f32, f16 or bf16")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            try {
              sae::parse_weights_dtype(v);
              return {};
            } catch (const std::invalid_argument& e) {
              return e.what();
            }
          },
          "f32|f16|bf16"));
  c->add_option("--threads", a->threads, "Threads (accepted for symmetry; conversion is not parallel)")
      ->check(CLI::NonNegativeNumber);
  c->callback([a, &chosen] { chosen = [a] { return run_convert(*a); }; });
  return c;
}

}  // namespace sae_cli
