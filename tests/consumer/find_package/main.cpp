// Consumer of libsae through find_package(sae): include the umbrella header, use the API.
#include <sae/sae.hpp>

#include <cstdio>

int main() {
  std::printf("libsae %s via find_package\n", sae::version_string);
  return 0;
}
