/// @file sae/io/formats.hpp
/// Reading SAEs written by other tools (format detection, Gemma Scope, sparsify, npz).
#pragma once
