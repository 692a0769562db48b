/* The float32 GELU spans of csrc/gelu.pyx (its docstring derives the formulas). Backward, with
   t = tanh(u) and e = exp(-2|u|): big = 2/(1+e) = 1 + |t| and small = big*e = 1 - |t|.
   Compiles alone with -Wall -Wextra. */
#ifndef TINYGPT_GELU_H
#define TINYGPT_GELU_H

#include <math.h>
#include <stddef.h>

#include "kernel_math.h"

static inline float tg_gelu_u(float x) {
    return 0.7978845608028654f * (x + 0.044715f * (x * x * x));
}

/* out[:n] = gelu(x[:n]) = x / (1 + exp(-2u)) */
TG_DISPATCH
static inline void tg_gelu_forward_f32(const float* x, float* out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = x[i] / (1.0f + tg_expf(-2.0f * tg_gelu_u(x[i])));
}

/* dx[:n] = dout[:n] * gelu'(x[:n]) */
TG_DISPATCH
static inline void tg_gelu_backward_f32(const float* dout, const float* x, float* dx,
                                        ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float xi = x[i], u = tg_gelu_u(xi);
        float e = tg_expf_nonpositive(-2.0f * fabsf(u));
        float big = 2.0f / (1.0f + e), small = big * e;
        float dtanh = 0.7978845608028654f * (1.0f + 0.134145f * xi * xi);
        /* 0.5 (1 + t) + 0.5 x (1 - t^2) dtanh, with 1 - t^2 = (1 + t)(1 - t) = big * small */
        dx[i] = dout[i] * (0.5f * tg_selectf(u >= 0.0f, big, small)
                           + 0.5f * xi * (big * small) * dtanh);
    }
}

#endif
