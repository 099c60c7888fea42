/// @file tests/odr/a.cpp
/// ODR test, first TU: <sae/sae.hpp> is included here and in b.cpp, and the two objects are
/// linked together. A header-only library must link cleanly (every function and variable
/// defined in a header is inline or a template) and inline variables must be one object.
#include <sae/sae.hpp>

#include <cstdio>
#include <cstring>

const char* const* sae_odr_version_address_b();

int main() {
  if (&sae::version_string != sae_odr_version_address_b()) {
    std::fprintf(stderr, "sae::version_string has a different address in each TU\n");
    return 1;
  }
  if (std::strlen(sae::version_string) == 0) {
    std::fprintf(stderr, "sae::version_string is empty\n");
    return 1;
  }
  std::printf("libsae %s: two TUs linked\n", sae::version_string);
  return 0;
}
