// Link check of zlib (SaeOptionalDependency.cmake): the header sae/io/npz.hpp includes and a
// deflate/inflate round trip. Exit 0 when the bytes come back.
#include <zlib.h>

#include <cstring>

int main() {
  const char text[] = "libsae zlib check";
  Bytef packed[128], unpacked[128];
  uLongf packed_len = sizeof packed, unpacked_len = sizeof unpacked;
  if (compress(packed, &packed_len, reinterpret_cast<const Bytef*>(text), sizeof text) != Z_OK) return 1;
  if (uncompress(unpacked, &unpacked_len, packed, packed_len) != Z_OK) return 1;
  return unpacked_len == sizeof text && std::memcmp(unpacked, text, sizeof text) == 0 ? 0 : 1;
}
