// Link check of the BLAS (SaeOptionalDependency.cmake): the Fortran sgemm_ and dgemm_ that sae/core/gemm.hpp
// declares and calls, and with OpenBLAS its thread setter. Exit 0 when the product is right.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
#ifdef SAE_BLAS_IS_OPENBLAS
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
#endif
}

int main() {
#ifdef SAE_BLAS_IS_OPENBLAS
  openblas_set_num_threads(1);
  if (openblas_get_num_threads() != 1) return 1;
#endif
  const int n = 2;
  const float one = 1, zero = 0;
  float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {0, 0, 0, 0};
  sgemm_("N", "N", &n, &n, &n, &one, a, &n, b, &n, &zero, c, &n);
  const double done = 1, dzero = 0;
  double da[4] = {1, 2, 3, 4}, db[4] = {1, 0, 0, 1}, dc[4] = {0, 0, 0, 0};
  dgemm_("N", "N", &n, &n, &n, &done, da, &n, db, &n, &dzero, dc, &n);
  return (c[0] == 1 && c[1] == 2 && c[2] == 3 && c[3] == 4 && dc[3] == 4) ? 0 : 1;
}
