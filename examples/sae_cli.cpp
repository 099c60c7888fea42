// sae: the libsae command-line tool. One subcommand per header in examples/cli/.
//
//   sae synth  --out toy.npy [--d-in 64] [--features 256] [--samples 100000] [--active-prob 0.016] [--seed 7]
//   sae train  --data X.npy --arch A --d-sae M [--k K] [variant options] [--steps S] [--batch B]
//              [--lr LR] [--seed N] [--threads T] --out DIR
//   sae variants   (the variants --arch accepts and their options, as a markdown table)
//   sae eval   --sae DIR --data X.npy [--features F.npy] [--limit N]
//   sae encode --sae DIR --data X.npy --out codes.npy|codes.npz [--batch B] [--limit N]
//   sae steer  --sae DIR --data X.npy --latent J (--scale S | --clamp V | --add A) --out Y.npy
//   sae convert --in PATH --out DIR [--dtype f32|f16|bf16]
//   sae report --sae DIR --data X.npy [--images 28x28] [--labels L.txt] [--features N] --out report.html
//   sae bench  --arch topk --d-in 768 --d-sae 16384 --k 32 --batch 4096 --steps 5 [--warmup 1] [--threads T]
//              [--gemm auto|eigen|blas] [--no-bound]
//
// Progress goes to stderr; the last line of stdout is one JSON object with the results.
// Errors are one line on stderr ("sae: error: ...") and a non-zero exit code.
#include <new>

#include "cli/bench.hpp"
#include "cli/convert.hpp"
#include "cli/encode.hpp"
#include "cli/eval.hpp"
#include "cli/report.hpp"
#include "cli/steer.hpp"
#include "cli/synth.hpp"
#include "cli/train.hpp"

int main(int argc, char** argv) {
  CLI::App app{"sae: train, evaluate and inspect sparse autoencoders (libsae " + std::string(sae::version_string) +
               ")"};
  app.set_version_flag("--version", std::string(sae::version_string));
  app.require_subcommand(1, 1);

  sae_cli::Command chosen;
  sae_cli::add_synth(app, chosen);
  sae_cli::add_train(app, chosen);
  sae_cli::add_eval(app, chosen);
  sae_cli::add_convert(app, chosen);
  sae_cli::add_encode(app, chosen);
  sae_cli::add_steer(app, chosen);
  sae_cli::add_report(app, chosen);
  sae_cli::add_bench(app, chosen);
  app.add_subcommand("variants", "The SAE variants (--arch) and their options, as a markdown table")
      ->callback([&chosen] {
        chosen = [] {
          std::cout << sae::variants_markdown_table();
          return 0;
        };
      });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::cerr << "sae: error: " << e.what() << " (see sae --help)" << std::endl;
    return 2;
  }
  try {
    return chosen ? chosen() : 1;
  } catch (const sae_cli::UsageError& e) {
    std::cerr << "sae: error: " << e.what() << " (see sae --help)" << std::endl;
    return 2;
  } catch (const sae::SettingsError& e) {  // a training setting that cannot work
    std::cerr << "sae: error: " << e.what() << " (see sae --help)" << std::endl;
    return 2;
  } catch (const std::bad_alloc&) {  // past the up-front estimate (sae::check_training_memory)
    std::cerr << "sae: error: out of memory (use a smaller --d-sae or --batch, or fewer --threads)" << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "sae: error: " << e.what() << std::endl;
    return 1;
  }
}
