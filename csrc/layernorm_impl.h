/* The LayerNorm rows for one element type: included by layernorm.h once per type, with
     TG_T        the element type (float, double)
     TG_F(name)  name with the type's suffix (name##_f32, name##_f64)
     TG_SQRT     the type's sqrt
   (defaults below let the file compile alone). Sums run in 8 interleaved partial sums,
   combined pairwise in one fixed order (kernel_math.pxd's row_sum): the same bits for any
   thread count, and for the AVX-512 and AVX2 clones; the baseline clone has no FMA, so its
   last bits may differ. */
#ifndef TG_T
#include <math.h>
#include "kernel_math.h"
#define TG_T float
#define TG_F(name) name##_f32
#define TG_SQRT sqrtf
#endif

#include <stddef.h>
#include <string.h>

typedef TG_T TG_F(tg_ln_v8) __attribute__((vector_size(8 * sizeof(TG_T))));

/* The 8 partial sums, combined in kernel_math.pxd's order. */
static inline TG_T TG_F(tg_ln_combine)(const TG_F(tg_ln_v8)* v, const TG_T* tail,
                                       ptrdiff_t n_tail) {
    TG_T acc[8];
    memcpy(acc, v, sizeof acc);
    for (ptrdiff_t j = 0; j < n_tail; j++)
        acc[j] += tail[j];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* sum(x[:n] * y[:n]) (y NULL: sum(x[:n])); lane j sums the entries i with i % 8 == j, in order
   (written with GCC's vector extension: spelled out as 8 scalar sums, GCC vectorized them with
   shuffles between every add, 1.5x slower than the baseline build) */
static inline TG_T TG_F(tg_ln_sum)(const TG_T* x, const TG_T* y, ptrdiff_t n) {
    TG_F(tg_ln_v8) acc = {0}, a, b;
    TG_T tail[8];
    ptrdiff_t i = 0, j;
    for (; i + 8 <= n; i += 8) {
        memcpy(&a, x + i, sizeof a);
        if (y) {
            memcpy(&b, y + i, sizeof b);
            acc += a * b;
        } else {
            acc += a;
        }
    }
    for (j = 0; i + j < n; j++)
        tail[j] = y ? x[i + j] * y[i + j] : x[i + j];
    return TG_F(tg_ln_combine)(&acc, tail, n - i);
}

/* sum((dy * w) * xhat) over n, xhat = (x - m) * r, in tg_ln_sum's order */
static inline TG_T TG_F(tg_ln_dot_xhat)(const TG_T* dy, const TG_T* w, const TG_T* x, TG_T m,
                                        TG_T r, ptrdiff_t n) {
    TG_F(tg_ln_v8) acc = {0}, a, b, c;
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
    return TG_F(tg_ln_combine)(&acc, tail, n - i);
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
        TG_T m = TG_F(tg_ln_sum)(xi, NULL, C) / C, r;
        ptrdiff_t c;
        for (c = 0; c < C; c++)
            o[c] = xi[c] - m;  /* the centered row, kept in out until the last pass */
        r = 1 / TG_SQRT(TG_F(tg_ln_sum)(o, o, C) / C + eps);
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
        mean_g = TG_F(tg_ln_sum)(dy, w, C) / C;
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
