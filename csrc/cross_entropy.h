/* The softmax cross-entropy rows of csrc/cross_entropy.pyx, for float and double. TG_DISPATCH
   (kernel_math.h) runs them on AVX-512 or AVX2 where the CPU has them, with the float exp of
   kernel_math.h inlined (called from a plain loop, each row went through the dispatch).
   The row's maximum is exact in any order, and its exps are summed in tg_row_sum's fixed
   order, so any thread count gives the same bits; the float exp has FMA in the AVX-512 and
   AVX2 clones, so the baseline's last bits may differ. Compiles alone with -Wall -Wextra. */
#ifndef TINYGPT_CROSS_ENTROPY_H
#define TINYGPT_CROSS_ENTROPY_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "kernel_math.h"

/* Rows [r0, r1) of logits, dlogits (N, V), targets (N,) in [-1, V): loss[r] = the row's loss
   (0 where the target is -1), dlogits = (softmax - onehot) * inv_n (0 where it is -1). The
   maximum runs in TG_ROW_SUM_LANES running maxima, x > m ? x : m each (a max instruction). */
#define TG_XENT_ROWS(T, NAME, EXP, LOG)                                                       \
    TG_DISPATCH                                                                               \
    static inline void tg_softmax_xent_rows_##NAME(const T* logits, const int64_t* targets,   \
                                                   ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t V,   \
                                                   T inv_n, T* dlogits, T* loss) {            \
        for (ptrdiff_t r = r0; r < r1; r++) {                                                 \
            const T* z = logits + r * V;                                                      \
            T* g = dlogits + r * V;                                                           \
            int64_t target = targets[r];                                                      \
            T acc[TG_ROW_SUM_LANES], m, s, e_target, scale;                                   \
            ptrdiff_t i, j;                                                                   \
            if (target < 0) {                                                                 \
                for (i = 0; i < V; i++)                                                       \
                    g[i] = 0;                                                                 \
                loss[r] = 0;                                                                  \
                continue;                                                                     \
            }                                                                                 \
            for (j = 0; j < TG_ROW_SUM_LANES; j++)                                            \
                acc[j] = z[0];                                                                \
            for (i = 0; i + TG_ROW_SUM_LANES <= V; i += TG_ROW_SUM_LANES)                     \
                for (j = 0; j < TG_ROW_SUM_LANES; j++)                                        \
                    acc[j] = z[i + j] > acc[j] ? z[i + j] : acc[j];                           \
            for (j = 0; i + j < V; j++)                                                       \
                acc[j] = z[i + j] > acc[j] ? z[i + j] : acc[j];                               \
            m = acc[0];                                                                       \
            for (j = 1; j < TG_ROW_SUM_LANES; j++)                                            \
                m = acc[j] > m ? acc[j] : m;                                                  \
            for (i = 0; i < V; i++)                                                           \
                g[i] = EXP(z[i] - m);                                                         \
            s = tg_row_sum_##NAME(g, NULL, V);                                                \
            e_target = g[target];                                                             \
            scale = inv_n / s;                                                                \
            for (i = 0; i < V; i++)                                                           \
                g[i] = g[i] * scale;                                                          \
            g[target] = (T)((e_target / s - 1.0) * inv_n); /* in double, as it always was */  \
            loss[r] = (m + LOG(s)) - z[target];                                               \
        }                                                                                     \
    }

TG_XENT_ROWS(float, f32, tg_expf, logf)
TG_XENT_ROWS(double, f64, exp, log)

#endif
