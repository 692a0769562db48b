/* The LayerNorm rows for one element type: included by layernorm.h once per type, with
     TG_T        the element type (float, double)
     TG_F(name)  name with the type's suffix (name##_f32, name##_f64)
     TG_SQRT     the type's sqrt
   (defaults below let the file compile alone). Sums run in kernel_math.h's fixed order
   (row_sum_impl.h): the same bits for any thread count and from every clone (layernorm's
   module compiles with -ffp-contract=off). */
#ifndef TG_T
#include <math.h>
#include "kernel_math.h"
#define TG_T float
#define TG_F(name) name##_f32
#define TG_SQRT sqrtf
#endif

#include <stddef.h>
#include <string.h>

/* sum((dy * w) * xhat) over n, xhat = (x - m) * r, in tg_row_sum's order */
static inline TG_T TG_F(tg_ln_dot_xhat)(const TG_T* dy, const TG_T* w, const TG_T* x, TG_T m,
                                        TG_T r, ptrdiff_t n) {
    TG_F(tg_lanes8) acc = {0}, a, b, c;
    TG_T tail[8];
    ptrdiff_t i = 0, j;
    for (; i + 8 <= n; i += 8) {
        memcpy(&a, dy + i, sizeof a);
        memcpy(&b, w + i, sizeof b);
        memcpy(&c, x + i, sizeof c);
        acc += (a * b) * ((c - m) * r);
    }
    for (j = 0; i + j < n; j++)
        tail[j] = (dy[i + j] * w[i + j]) * ((x[i + j] - m) * r);
    return TG_F(tg_lanes8_total)(&acc, tail, n - i);
}

/* rows of x, out (rows, C); w, b (C,) -> out = (x - mean) * rstd * w + b, mean, rstd (rows,) */
TG_DISPATCH
static inline void TG_F(tg_layernorm_forward_rows)(const TG_T* x, const TG_T* w,
                                                   const TG_T* b, TG_T eps, ptrdiff_t rows,
                                                   ptrdiff_t C, TG_T* out, TG_T* mean,
                                                   TG_T* rstd) {
    for (ptrdiff_t i = 0; i < rows; i++) {
        const TG_T* xi = x + i * C;
        TG_T* o = out + i * C;
        TG_T m = TG_F(tg_row_sum)(xi, NULL, C) / C, r;
        ptrdiff_t c;
        for (c = 0; c < C; c++)
            o[c] = xi[c] - m;  /* the centered row, kept in out until the last pass */
        r = 1 / TG_SQRT(TG_F(tg_row_sum)(o, o, C) / C + eps);
        for (c = 0; c < C; c++)
            o[c] = o[c] * r * w[c] + b[c];
        mean[i] = m;
        rstd[i] = r;
    }
}

/* A chunk of rows: dout, x, dx and residual (or NULL) (rows, C); mean, rstd (rows,);
   dw_part, db_part (C,) receive this chunk's sums of dout * xhat and dout. With dxhat = dout * w:
   dx = residual + (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) * rstd. xhat is computed
   where it is used, never stored, so that dx may be residual itself. */
TG_DISPATCH
static inline void TG_F(tg_layernorm_backward_rows)(const TG_T* dout, const TG_T* x,
                                                    const TG_T* w, const TG_T* mean,
                                                    const TG_T* rstd, const TG_T* residual,
                                                    ptrdiff_t rows, ptrdiff_t C, TG_T* dx,
                                                    TG_T* dw_part, TG_T* db_part) {
    ptrdiff_t i, c;
    for (c = 0; c < C; c++) {
        dw_part[c] = 0;
        db_part[c] = 0;
    }
    for (i = 0; i < rows; i++) {
        const TG_T* dy = dout + i * C;
        const TG_T* xi = x + i * C;
        TG_T* g = dx + i * C;
        TG_T m = mean[i], r = rstd[i], mean_g, mean_gx;
        for (c = 0; c < C; c++) {
            db_part[c] += dy[c];
            dw_part[c] += dy[c] * ((xi[c] - m) * r);
        }
        mean_g = TG_F(tg_row_sum)(dy, w, C) / C;
        mean_gx = TG_F(tg_ln_dot_xhat)(dy, w, xi, m, r, C) / C;
        if (residual) {
            const TG_T* res = residual + i * C;
            for (c = 0; c < C; c++)
                g[c] = res[c] + (dy[c] * w[c] - mean_g - ((xi[c] - m) * r) * mean_gx) * r;
        } else {
            for (c = 0; c < C; c++)
                g[c] = (dy[c] * w[c] - mean_g - ((xi[c] - m) * r) * mean_gx) * r;
        }
    }
}
