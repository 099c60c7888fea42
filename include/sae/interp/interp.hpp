/// @file sae/interp/interp.hpp
/// Interpretation and steering: top-activating examples, feature density, steering, reports.
#pragma once
