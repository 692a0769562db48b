/* The small GEMM of csrc/attention.pyx. Compiles alone with -Wall -Wextra. */
#ifndef TINYGPT_ATTENTION_H
#define TINYGPT_ATTENTION_H

#include <stddef.h>
#include <string.h>

#include "kernel_math.h"

/* c (m, n) = a (m, k) @ b (k, n). a[i, p] is a[i * ars + p * acs]; b's rows are ldb apart and
   c's ldc apart, both contiguous. MR rows of c at a time, in NR-column blocks of 2 SIMD vectors
   (GCC vector extensions); rows past m read row m - 1 again and are not stored, columns past the
   last whole block are summed one at a time. Each c[i, j] is summed over p in order, so results
   do not depend on how rows are shared out. */
#define TG_MR 6
#define TG_DEFINE_GEMM(NAME, TYPE)                                                            \
typedef TYPE NAME##_vec __attribute__((vector_size(32)));                                    \
TG_DISPATCH                                                                                   \
static inline void NAME(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const TYPE* a, ptrdiff_t ars,  \
                        ptrdiff_t acs, const TYPE* b, ptrdiff_t ldb, TYPE* c, ptrdiff_t ldc) { \
    enum { W = 32 / sizeof(TYPE), NR = 2 * W };                                               \
    for (ptrdiff_t i0 = 0; i0 < m; i0 += TG_MR) {                                             \
        ptrdiff_t rows = m - i0 < TG_MR ? m - i0 : TG_MR;                                     \
        const TYPE* ar[TG_MR];                                                                \
        for (int r = 0; r < TG_MR; r++)                                                       \
            ar[r] = a + (r < rows ? i0 + r : m - 1) * ars;                                    \
        ptrdiff_t j0 = 0;                                                                     \
        for (; j0 + NR <= n; j0 += NR) {                                                      \
            NAME##_vec acc[TG_MR][2];                                                         \
            for (int r = 0; r < TG_MR; r++)                                                   \
                acc[r][0] = acc[r][1] = (NAME##_vec){0};                                      \
            for (ptrdiff_t p = 0; p < k; p++) {                                               \
                NAME##_vec b0, b1;                                                            \
                memcpy(&b0, b + p * ldb + j0, sizeof b0);                                     \
                memcpy(&b1, b + p * ldb + j0 + W, sizeof b1);                                 \
                for (int r = 0; r < TG_MR; r++) {                                             \
                    TYPE x = ar[r][p * acs];                                                  \
                    acc[r][0] += x * b0;                                                      \
                    acc[r][1] += x * b1;                                                      \
                }                                                                             \
            }                                                                                 \
            for (int r = 0; r < rows; r++)                                                    \
                memcpy(c + (i0 + r) * ldc + j0, acc[r], sizeof acc[r]);                       \
        }                                                                                     \
        for (; j0 < n; j0++)                                                                  \
            for (int r = 0; r < rows; r++) {                                                  \
                TYPE sum = 0;                                                                 \
                for (ptrdiff_t p = 0; p < k; p++)                                             \
                    sum += ar[r][p * acs] * b[p * ldb + j0];                                  \
                c[(i0 + r) * ldc + j0] = sum;                                                 \
            }                                                                                 \
    }                                                                                         \
}
TG_DEFINE_GEMM(tg_gemm_f, float)
TG_DEFINE_GEMM(tg_gemm_d, double)

#endif
