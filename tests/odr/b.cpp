/// @file tests/odr/b.cpp
/// ODR test, second TU (see a.cpp).
#include <sae/sae.hpp>

const char* const* sae_odr_version_address_b() { return &sae::version_string; }
