/// @file sae/version.hpp
/// The library version, in one place (CMake reads it from here).
#pragma once

#define SAE_VERSION_MAJOR 0
#define SAE_VERSION_MINOR 1
#define SAE_VERSION_PATCH 0

namespace sae {
/// "MAJOR.MINOR.PATCH", e.g. for `sae --version` and file metadata.
inline constexpr const char* version_string = "0.1.0";
}  // namespace sae
