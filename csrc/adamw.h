/* The AdamW span of csrc/adamw.pyx, for float and double. TG_DISPATCH (kernel_math.h) runs it
   on AVX-512 or AVX2 where the CPU has them: its sqrt and division were the bound of the
   SSE2 build. The module compiles with -ffp-contract=off and -fno-math-errno (setup.py), so
   every operation rounds once, in the reference's order, and sqrt and division round
   correctly at any vector width: every clone gives the reference's bits. Compiles alone with
   -Wall -Wextra. */
#ifndef TINYGPT_ADAMW_H
#define TINYGPT_ADAMW_H

#include <math.h>
#include <stddef.h>

#include "kernel_math.h"

/* p, m, v (n,) updated in place from g and decay (n,), as adamw.pyx's docstring writes it */
#define TG_ADAMW_SPAN(T, NAME, SQRT)                                                          \
    TG_DISPATCH                                                                               \
    static inline void tg_adamw_span_##NAME(T* p, const T* g, T* m, T* v, const T* decay,    \
                                            ptrdiff_t n, T b1, T one_b1, T b2, T one_b2,      \
                                            T lr, T eps_hat, T step) {                        \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            T mi = m[i] * b1 + one_b1 * g[i];                                                 \
            T vi = v[i] * b2 + g[i] * g[i] * one_b2;                                          \
            T pi = p[i] - decay[i] * p[i] * lr;                                               \
            m[i] = mi;                                                                        \
            v[i] = vi;                                                                        \
            p[i] = pi - mi / (SQRT(vi) + eps_hat) * step;                                     \
        }                                                                                     \
    }

TG_ADAMW_SPAN(float, f32, sqrtf)
TG_ADAMW_SPAN(double, f64, sqrt)

#endif
