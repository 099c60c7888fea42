/// @file sae/sae.hpp
/// libsae umbrella header: the only header a user needs to include.
///
/// @code
/// #include <sae/sae.hpp>
/// sae::TopKSae<float> model(cfg);           // see README.md for a full example
/// @endcode
#pragma once

#if __cplusplus < 202002L
#error "libsae needs C++20 (compile with -std=c++20 or link the CMake target sae::sae)"
#endif

#include "version.hpp"
#include "config.hpp"
#include "core/parameters.hpp"
#include "core/sparse_codes.hpp"
#include "core/kernels.hpp"
#include "activations/relu.hpp"
#include "activations/topk.hpp"
#include "losses/reconstruction.hpp"
#include "losses/l1_sparsity.hpp"
#include "losses/combined_loss.hpp"
#include "optim/adam.hpp"
#include "optim/schedule.hpp"
#include "core/sparse_autoencoder.hpp"
#include "metrics/metrics.hpp"
#include "io/npy.hpp"
#include "io/safetensors.hpp"
#include "io/saelens.hpp"
#include "any_sae.hpp"
#include "io/formats.hpp"
#include "interp/interp.hpp"
#include "interp/report_run.hpp"
#include "train/synthetic.hpp"
#include "train/batches.hpp"
#include "train/trainer.hpp"
#include "train/streaming.hpp"
#include "train/checkpoint.hpp"
#include "train/run.hpp"
