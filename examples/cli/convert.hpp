// sae convert: read an SAE in any supported format, write it as an SAELens directory.
#pragma once

#include "common.hpp"

namespace sae_cli {

struct ConvertArgs {
  fs::path in, out;
  std::string dtype = "f32";
};

inline sae::io::StDtype parse_convert_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return sae::io::StDtype::F32;
  if (s == "f16" || s == "float16") return sae::io::StDtype::F16;
  if (s == "bf16" || s == "bfloat16") return sae::io::StDtype::BF16;
  throw std::invalid_argument("--dtype must be f32, f16 or bf16, got '" + s + "'");
}

inline int run_convert(const ConvertArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  const sae::io::StDtype dtype = parse_convert_dtype(a.dtype);
  sae::io::SaeFormat format{};
  const sae::AnySae model = sae::load_sae(a.in, &format);
  std::cerr << "sae convert: " << a.in.string() << " (" << sae::io::sae_format_name(format) << ") -> "
            << a.out.string() << " (saelens, " << sae::io::st_dtype_name(dtype) << ")\n";
  json j;
  std::visit(
      [&](const auto& m) {
        sae::SaeConfig cfg = m.config();
        if (!cfg.metadata.is_object()) cfg.metadata = json::object();
        if (format != sae::io::SaeFormat::SAELens) cfg.metadata["converted_from"] = sae::io::sae_format_name(format);
        sae::io::save_saelens(a.out, cfg, m.params(), dtype);
        j["architecture"] = std::string(sae::architecture_name(cfg.architecture));
        j["d_in"] = cfg.d_in;
        j["d_sae"] = cfg.d_sae;
        if (sae::architecture_uses_k(cfg.architecture)) j["k"] = cfg.k;
        j["apply_b_dec_to_input"] = cfg.apply_b_dec_to_input;
      },
      model);
  j["in"] = a.in.string();
  j["format"] = sae::io::sae_format_name(format);
  j["out"] = a.out.string();
  j["dtype"] = sae::io::detail_saelens::torch_dtype_name(dtype);
  j["seconds"] = seconds_since(t0);
  print_result(j);
  return 0;
}

inline CLI::App* add_convert(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<ConvertArgs>();
  auto* c = app.add_subcommand(
      "convert", "Convert an SAE (SAELens dir, Gemma Scope params.npz / params.safetensors, sparsify dir) to an SAELens directory");
  c->add_option("--in", a->in, "SAE directory or weights file (format detected)")->required();
  c->add_option("--out", a->out, "Output SAELens directory (cfg.json + sae_weights.safetensors)")->required();
  c->add_option("--dtype", a->dtype, "Storage dtype of the weights: f32, f16 or bf16")->capture_default_str();
  c->callback([a, &chosen] { chosen = [a] { return run_convert(*a); }; });
  return c;
}

}  // namespace sae_cli
