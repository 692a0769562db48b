/* The squared-ReLU spans of csrc/relu2.pyx, for float and double: r = max(x, 0), with a NaN
   kept as np.maximum keeps it, as a bit-mask select rather than a branch, so that the loops
   vectorize (a branch on the sign mispredicts on about half of the activations: it cost 4 ns a
   value). Compiles alone with -Wall -Wextra. */
#ifndef TINYGPT_RELU2_H
#define TINYGPT_RELU2_H

#include <stddef.h>

#include "kernel_math.h"

/* out[:n] = max(x[:n], 0)^2 and dx[:n] = dout[:n] * 2 max(x[:n], 0), for one element type;
   forward_slope: post[:n] = max(pre[:n], 0)^2, and pre[:n] replaced by the slope 2 max(pre, 0) */
#define TG_RELU2_SPANS(T, NAME, SELECT)                                                        \
    TG_DISPATCH                                                                           \
    static inline void tg_relu2_forward_##NAME(const T* x, T* out, ptrdiff_t n) {       \
        for (ptrdiff_t i = 0; i < n; i++) {                                               \
            T r = SELECT(x[i] <= 0, (T)0, x[i]);                                          \
            out[i] = r * r;                                                               \
        }                                                                                 \
    }                                                                                     \
    TG_DISPATCH                                                                           \
    static inline void tg_relu2_forward_slope_##NAME(T* pre, T* post, ptrdiff_t n) {      \
        for (ptrdiff_t i = 0; i < n; i++) {                                               \
            T r = SELECT(pre[i] <= 0, (T)0, pre[i]);                                      \
            post[i] = r * r;                                                              \
            pre[i] = 2 * r;                                                               \
        }                                                                                 \
    }                                                                                     \
    TG_DISPATCH                                                                           \
    static inline void tg_relu2_backward_##NAME(const T* dout, const T* x, T* dx,        \
                                                ptrdiff_t n) {                            \
        for (ptrdiff_t i = 0; i < n; i++) {                                               \
            T r = SELECT(x[i] <= 0, (T)0, x[i]);                                          \
            dx[i] = 2 * r * dout[i];                                                      \
        }                                                                                 \
    }

TG_RELU2_SPANS(float, f32, tg_selectf)
TG_RELU2_SPANS(double, f64, tg_selectd)

#endif
