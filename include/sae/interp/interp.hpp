/// @file sae/interp/interp.hpp
/// Interpretation and steering: top-activating examples, feature density, steering, reports.
///
///   encode.hpp         batch sources (in-memory, .npy streamed), encode_batches, DenseCodesWriter
///   top_examples.hpp   TopActivations: per-latent top-n examples, mergeable
///   feature_stats.hpp  FeatureDensity (frequency, dead/dense, log10 histogram), ActivationSampler (quantiles)
///   tracker.hpp        FeatureTracker (all three) and analyze(model, source)
///   steering.hpp       steer / clamp_latent / add_direction / apply_steering
///   svg.hpp, image.hpp inline SVG charts, PNG data URIs
///   report.hpp         render_report: one self-contained HTML file
///   token_table.hpp    TokenTable (tokens.tsv of language-model activations), read_vocab
///   logit_effect.hpp   logit_effects: top promoted / suppressed tokens of U · W_dec[:, j]
///   report_run.hpp     write_sae_report: `sae report` as a library call (included by sae.hpp,
///                      not here: it needs any_sae.hpp)
///
/// Everything is in namespace sae::interp; docs/interpretation.md is the user guide.
#pragma once

#include "encode.hpp"
#include "top_examples.hpp"
#include "feature_stats.hpp"
#include "tracker.hpp"
#include "steering.hpp"
#include "svg.hpp"
#include "image.hpp"
#include "token_table.hpp"
#include "logit_effect.hpp"
#include "report.hpp"
