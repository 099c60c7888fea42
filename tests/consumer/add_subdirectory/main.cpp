// Consumer of libsae through add_subdirectory(): include the umbrella header, use the API.
#include <sae/sae.hpp>

#include <cstdio>

int main() {
  std::printf("libsae %s via add_subdirectory\n", sae::version_string);
  return 0;
}
