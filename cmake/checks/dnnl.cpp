// Link check of oneDNN (SaeOptionalDependency.cmake): the header libsae includes, a CPU engine
// and a 2x2 f32 matmul, the primitive sae/core/gemm.hpp builds. Exit 0 when the product is right.
#include <oneapi/dnnl/dnnl.hpp>

int main() {
  using namespace dnnl;
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const memory::desc md({2, 2}, memory::data_type::f32, memory::format_tag::ab);
  float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {0, 0, 0, 0};
  memory A(md, eng, a), B(md, eng, b), C(md, eng, c);
  // The oneDNN 2.x API of Debian 12 (libdnnl-dev 2.7), as sae/core/gemm.hpp uses it.
  matmul(matmul::primitive_desc(matmul::desc(md, md, md), eng)).execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
  s.wait();
  return (c[0] == 1 && c[1] == 2 && c[2] == 3 && c[3] == 4) ? 0 : 1;
}
