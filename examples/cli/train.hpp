// sae train: train an SAE on activations from .npy files (one, several, or directories; streamed
// through a shuffle buffer), with optional normalisation, checkpoints and resume, and save an
// SAELens directory.
#pragma once

#include "common.hpp"
#include "mpi_session.hpp"

#include <csignal>

#include <sae/train/run.hpp>

namespace sae_cli {

/// `sae train`'s settings are the library's (sae/train/run.hpp); the CLI only parses and prints.
using TrainArgs = sae::TrainSettings;

/// The signal that asked a run to stop (0: none). Set by the SIGINT/SIGTERM handler; the run
/// stops after the step in progress, writes a checkpoint when checkpointing is on, and exits
/// 128 + the signal number (130, 143). A second signal of the same kind ends the process at once.
inline volatile std::sig_atomic_t stop_signal = 0;
inline void on_stop_signal(int sig) {
  stop_signal = sig;
  std::signal(sig, SIG_DFL);
}

inline int run_train(TrainArgs a) {
  stop_signal = 0;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  sae::TrainHooks hooks;
  hooks.stop = [] { return stop_signal != 0; };
  // Under mpirun / srun: data-parallel over the ranks (mpi_session.hpp); only rank 0 speaks.
  MpiSession mpi;
  hooks.collectives = mpi.collectives();
  const bool quiet = mpi.rank() != 0;
  if (quiet) {
    hooks.progress = [](const sae::TrainProgress&, const std::string&) {};
    hooks.message = [](const std::string&) {};
  }
  if (mpi.size() > 1 && a.threads == 0 && !std::getenv("OMP_NUM_THREADS"))  // the cores shared by this machine's ranks
    a.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / local_ranks());
  try {
    sae::TrainRun run = sae::run_training(std::move(a), hooks);
    if (mpi.size() > 1)
      run.result["mpi"] = {
          {"ranks", mpi.size()}, {"comm_seconds", mpi.comm_seconds()}, {"comm_bytes_sent", mpi.comm_bytes()}};
    if (!quiet) print_result(run.result);
    return 0;
  } catch (const sae::TrainingInterrupted& e) {
    const int sig = stop_signal != 0 ? static_cast<int>(stop_signal) : SIGINT;
    if (!quiet) std::cerr << "sae train: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT") << ": " << e.what() << std::endl;
    return 128 + sig;
  } catch (const sae::SettingsError& e) {
    if (mpi.size() > 1) mpi.fail(std::string(e.what()) + " (see sae --help)", 2);  // one report, every rank ends
    throw;
  } catch (const std::bad_alloc&) {
    if (mpi.size() > 1) mpi.fail("out of memory (use a smaller --d-sae or --batch, or fewer --threads)", 1);
    throw;
  } catch (const std::exception& e) {
    if (mpi.size() > 1) mpi.fail(e.what(), 1);
    throw;
  }
}

/// `--arch`, its choices the variants' names and aliases (sae/variants/list.hpp).
inline CLI::Option* add_arch_option(CLI::App* c, std::string& arch) {
  return c->add_option("--arch", arch, "Architecture: " + sae::variant_names(", "))
      ->capture_default_str()
      ->check(CLI::IsMember(sae::variant_name_list()));
}

/// Every variant's own options (sae::all_variant_options: `--l1`, `--chunks` ...) as flags that
/// store what is given into @p options by key; the library checks the values
/// (sae::check_option), so the CLI and libsae.train refuse the same things.
inline void add_variant_options(CLI::App* c, nlohmann::json& options) {
  for (const sae::DeclaredOption& d : sae::all_variant_options()) {
    std::string users;
    for (const auto& u : d.used_by) users += (users.empty() ? "" : ", ") + u;
    const std::string help = std::string(d.spec.help) + " (" + users + ")";
    const std::string key = d.spec.key;
    CLI::Option* o = nullptr;
    switch (d.spec.type) {
      case sae::OptionType::Real:
      case sae::OptionType::OptionalReal:
        o = c->add_option_function<double>(
            d.spec.flag(), [&options, key](const double& v) { options[key] = v; }, help);
        break;
      case sae::OptionType::Integer:
        o = c->add_option_function<std::int64_t>(
            d.spec.flag(), [&options, key](const std::int64_t& v) { options[key] = v; }, help);
        break;
      case sae::OptionType::IntegerList:
        o = c->add_option_function<std::vector<std::int64_t>>(
                 d.spec.flag(), [&options, key](const std::vector<std::int64_t>& v) { options[key] = v; }, help)
                ->delimiter(',');
        break;
    }
    if (!d.spec.default_value.is_null() && !(d.spec.default_value.is_array() && d.spec.default_value.empty()))
      o->default_str(d.spec.default_value.dump());
  }
}

inline CLI::App* add_train(CLI::App& app, Command& chosen) {
  auto a = std::make_shared<TrainArgs>();
  auto* c = app.add_subcommand("train", "Train an SAE on activations from .npy files, save an SAELens directory");
  c->add_option("--data", a->data,
                "Activations: .npy files [tokens, d_in] (float32 or float16) and/or directories of them")
      ->check(CLI::ExistingPath);
  c->add_option("--target", a->target,
                "Train a transcoder: the activations to predict from --data's (e.g. an MLP's outputs for its inputs), "
                ".npy files pairing row by row with --data's (one per input file, same rows)")
      ->check(CLI::ExistingPath);
  c->add_flag("--skip", a->skip, "With --target: a skip transcoder (adds a learned linear term W_skip x)");
  add_arch_option(c, a->arch);
  c->add_option("--d-sae", a->d_sae, "Number of latents")->check(CLI::PositiveNumber);
  c->add_option("--k", a->k,
                "Active latents per token (topk; the mean per token for the batch variants; see sae variants)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  add_variant_options(c, a->options);
  c->add_option("--dead-tokens", a->dead_tokens, "Tokens without firing after which a latent is dead")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--steps", a->opt.steps, "Training steps")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--batch", a->opt.batch, "Tokens per step")->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--lr", a->lr, "Peak learning rate (default 2e-4/sqrt(d_sae/16384))")->check(finite_positive);
  c->add_option("--warmup", a->opt.warmup_steps, "Steps of linear lr warm-up (default min(100, steps/10))")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--decay", a->opt.decay_steps, "Final steps of linear lr decay (default steps/5)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--seed", a->opt.seed, "Seed for initialisation and batch order")->capture_default_str();
  c->add_option("--threads", a->threads, "Threads (default: all cores / OMP_NUM_THREADS)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--log-every", a->opt.log_every, "Progress line every N steps")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--gemm", a->gemm,
                "Encoder GEMM backend: auto ($SAE_GEMM, else the one measured faster when libsae was "
                "configured), eigen, blas or dnnl; --resume uses the checkpoint's")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "eigen", "blas", "dnnl"}));
  c->add_option("--precision", a->precision,
                "Precision of the products. TopK family (encoder): auto (bf16 where oneDNN has bf16 units on this "
                "CPU, $SAE_PRECISION), fp32 or bf16, the same codes and weights in all three (bf16 only proposes "
                "candidates, rescored in fp32). relu, jumprelu: bf16 is mixed precision like autocast (bf16 "
                "products, fp32 accumulation and weights; different weights), auto = fp32. docs/performance.md")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fp32", "bf16"}));
  c->add_option("--out", a->out, "Output SAE directory (SAELens layout)");
  c->add_option("--shuffle-buffer", a->shuffle_buffer,
                "Tokens held in the shuffle buffer (streams the files; default with several files: 256 MiB of tokens)")
      ->check(CLI::PositiveNumber);
  c->add_option("--normalize", a->normalize,
                "Scale activations: none, expected-norm (mean norm sqrt(d_in)) or unit-mean-square (mean squared "
                "norm 1); folded into the saved weights")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "expected-norm", "unit-mean-square"}));
  c->add_option("--checkpoint-every", a->checkpoint_every, "Write a checkpoint every N steps (0: never)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--checkpoint-dir", a->checkpoint_dir, "Checkpoint directory (default OUT/checkpoint)");
  c->add_option("--resume", a->resume,
                "Continue the run whose checkpoint is in this directory (its --out or --checkpoint-dir) or file")
      ->check(CLI::ExistingPath);
  c->callback([a, c, &chosen] {
    a->given.clear();
    for (const CLI::Option* o : c->get_options())
      if (o->count() > 0 && !o->get_lnames().empty()) a->given.insert("--" + o->get_lnames().front());
    if (a->resume.empty())
      for (const char* flag : {"--data", "--d-sae", "--out"})
        if (!a->given.count(flag)) throw CLI::RequiredError(flag);
    chosen = [a] { return run_train(*a); };
  });
  return c;
}

}  // namespace sae_cli
