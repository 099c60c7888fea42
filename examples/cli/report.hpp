// sae report: one self-contained HTML report of an SAE on activations (training curves,
// feature density, top features with their top activating examples; text contexts and logit
// effects for language-model data). The work is the library's sae::interp::write_sae_report
// (include/sae/interp/report_run.hpp), which the Python binding calls too; this file parses
// the flags and prints the result.
#pragma once

#include "common.hpp"

namespace sae_cli {

struct ReportArgs {
  fs::path sae_dir, data;
  sae::interp::ReportSettings s;  // everything else: the library's write_sae_report() settings
  std::string order = "mass";
  int threads = 0;
};

/// "28x28" -> (28, 28) (the library's parser, kept under its old name).
using sae::interp::parse_image_shape;

inline int run_report(ReportArgs a) {
  sae::set_num_threads(a.threads);
  a.s.order = a.order;
  const json r = sae::interp::write_sae_report(a.sae_dir, a.data, a.s,
                                               [](const std::string& m) { std::cerr << "sae report: " << m << "\n"; });
  print_result(r);
  return 0;
}

inline CLI::App* add_report(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<ReportArgs>();
  auto* c = app.add_subcommand("report", "Write a self-contained HTML report of an SAE on activations (.npy)");
  add_sae_and_data(c, a->sae_dir, a->data,
                   "SAE (any supported format; its directory may hold the train_log.jsonl that sae train writes)");
  c->add_option("--out", a->s.out, "Output .html")->required();
  auto* images =
      c->add_option("--images", a->s.images, "Show examples and decoder directions as HxW images (e.g. 28x28)");
  c->add_option("--labels", a->s.labels, "Text file with one label per example (shown with the examples)")
      ->check(CLI::ExistingFile);
  c->add_option("--features", a->s.opt.features, "Number of top features shown")->capture_default_str();
  c->add_option("--feature-ids", a->s.opt.feature_ids, "Show these latents instead (e.g. --feature-ids 3 17 42)");
  c->add_option("--order", a->order, "Top features by: mass (sum of activations), frequency, max")
      ->capture_default_str()
      ->check(CLI::IsMember({"mass", "frequency", "max"}));
  c->add_flag("--include-dense", a->s.opt.include_dense, "Let dense latents (frequency > 0.1) into the top features");
  c->add_option("--examples", a->s.opt.examples, "Top activating examples per feature")->capture_default_str();
  c->add_option("--intervals", a->s.opt.intervals, "Quantile intervals sampled per feature (0: none)")
      ->capture_default_str();
  auto* tokens =
      c->add_option("--tokens", a->s.tokens,
                    "Token table (TSV: row, ctx, pos, token_id, doc, text) of language-model activations: show each "
                    "example as its text context, shaded by the feature's activation")
          ->check(CLI::ExistingFile);
  c->add_option("--context-before", a->s.opt.context_before, "Text view: tokens shown before the example token")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--context-after", a->s.opt.context_after, "Text view: tokens shown after it")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  auto* unembed =
      c->add_option("--unembed", a->s.unembed,
                    "Unembedding .npy [vocab, d_in] (final norm weight folded in): show each feature's logit effect")
          ->check(CLI::ExistingFile);
  auto* vocab =
      c->add_option("--vocab", a->s.vocab, "Vocabulary, one (escaped) entry per unembedding row (with --unembed)")
          ->check(CLI::ExistingFile);
  tokens->excludes(images);
  unembed->needs(vocab);
  vocab->needs(unembed);
  c->add_option("--title", a->s.opt.title, "Page title");
  c->add_option("--batch", a->s.batch, "Tokens per batch")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--limit", a->s.limit, "Analyse only the first N tokens")->check(CLI::NonNegativeNumber);
  c->add_option("--threads", a->threads, "Threads")->check(CLI::NonNegativeNumber);
  c->callback([a, &chosen] { chosen = [a] { return run_report(*a); }; });
  return c;
}

}  // namespace sae_cli
