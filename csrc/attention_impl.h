/* One head of causal attention, forward and backward, for one element type and vector width:
   included by attention.h once per pair, with
     TG_T        the element type (float, double)
     TG_VBYTES   bytes of a SIMD vector (64: AVX-512, 32: AVX2, 16: SSE2)
     TG_F(name)  name with the pair's suffix (e.g. name##_f32_512)
     TG_EXP, TG_LOG  the type's exp and log
   (defaults below let the file compile alone). Every function is always_inline: attention.h's
   entry points, each compiled for the ISA of its width, inline it all with their tile shape
   as constants.

   Products are tiles of MR rows x NV vectors of the output held in registers (W elements a
   vector). Each output entry sums its products in order, so the bits depend on the ISA (its
   MR, W and whether it has FMA), never on the thread count. */
#ifndef TG_T
#include <math.h>
#define TG_T float
#define TG_VBYTES 16
#define TG_F(name) name##_f32_128
#define TG_EXP expf
#define TG_LOG logf
#endif

#include <stddef.h>
#include <string.h>

#ifndef TG_INLINE
#define TG_INLINE static inline __attribute__((always_inline))
#endif

enum { TG_F(TG_W) = TG_VBYTES / sizeof(TG_T) };  /* elements per vector */
typedef TG_T TG_F(tg_vec) __attribute__((vector_size(TG_VBYTES)));

#define W TG_F(TG_W)
#define V TG_F(tg_vec)

/* Columns of score rows (and of k^T, v^T): T rounded up to whole vectors. */
TG_INLINE ptrdiff_t TG_F(tg_att_cols)(ptrdiff_t T) { return (T + W - 1) / W * W; }

/* c (m <= mr rows, nv vectors from column j) = a (m, k) @ b (k, ...): a[i, p] = ar[i][p * acs],
   b's rows ldb apart. Rows past m read row m - 1 again and are not stored. */
TG_INLINE void TG_F(tg_att_tile)(const int mr, const int nv, ptrdiff_t m, ptrdiff_t k,
                                 const TG_T* const* ar, ptrdiff_t acs, const TG_T* b,
                                 ptrdiff_t ldb, TG_T* c, ptrdiff_t ldc) {
    V acc[12][2];
    ptrdiff_t p;
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++)
            acc[r][v] = (V){0};
    for (p = 0; p < k; p++) {
        V bv[2];
        for (int v = 0; v < nv; v++)
            memcpy(&bv[v], b + p * ldb + v * W, sizeof(V));
        for (int r = 0; r < mr; r++) {
            TG_T x = ar[r][p * acs];
            for (int v = 0; v < nv; v++)
                acc[r][v] += x * bv[v];
        }
    }
    for (int r = 0; r < m; r++)
        memcpy(c + r * ldc, acc[r], nv * sizeof(V));
}

/* c (m, n) = a (m, k) @ b (k, n), a[i, p] = a[i * ars + p * acs], rows of b and c ldb and ldc
   apart; mr rows at a time, columns in tiles of nv vectors, then one vector, then one by one. */
TG_INLINE void TG_F(tg_att_gemm)(const int mr, const int nv, ptrdiff_t m, ptrdiff_t n,
                                 ptrdiff_t k, const TG_T* a, ptrdiff_t ars, ptrdiff_t acs,
                                 const TG_T* b, ptrdiff_t ldb, TG_T* c, ptrdiff_t ldc) {
    for (ptrdiff_t i0 = 0; i0 < m; i0 += mr) {
        ptrdiff_t rows = m - i0 < mr ? m - i0 : mr, j = 0;
        const TG_T* ar[12];
        for (int r = 0; r < mr; r++)
            ar[r] = a + (r < rows ? i0 + r : m - 1) * ars;
        TG_T* ci = c + i0 * ldc;
        for (; j + nv * W <= n; j += nv * W)
            TG_F(tg_att_tile)(mr, nv, rows, k, ar, acs, b + j, ldb, ci + j, ldc);
        for (; nv > 1 && j + W <= n; j += W)
            TG_F(tg_att_tile)(mr, 1, rows, k, ar, acs, b + j, ldb, ci + j, ldc);
        for (; j < n; j++)
            for (int r = 0; r < rows; r++) {
                TG_T sum = 0;
                for (ptrdiff_t p = 0; p < k; p++)
                    sum += ar[r][p * acs] * b[p * ldb + j];
                ci[r * ldc + j] = sum;
            }
    }
}

/* y (T, D) = x (T, D), rows of x ldx apart: a head's rows made contiguous. Read where they lie,
   3C apart, the rows of one head fall in a few cache sets and evict each other. */
TG_INLINE void TG_F(tg_att_copy)(const TG_T* x, ptrdiff_t ldx, ptrdiff_t T, ptrdiff_t D,
                                 TG_T* y) {
    for (ptrdiff_t t = 0; t < T; t++)
        memcpy(y + t * D, x + t * ldx, D * sizeof(TG_T));
}

/* xt (D, ldt) = alpha * x (T, D)^T, rows of x ldx apart; columns T..ldt of xt set to 0. */
TG_INLINE void TG_F(tg_att_transpose)(const TG_T* x, ptrdiff_t ldx, ptrdiff_t T, ptrdiff_t D,
                                      TG_T alpha, TG_T* xt, ptrdiff_t ldt) {
    for (ptrdiff_t d = 0; d < D; d++) {
        for (ptrdiff_t t = 0; t < T; t++)
            xt[d * ldt + t] = alpha * x[t * ldx + d];
        for (ptrdiff_t t = T; t < ldt; t++)
            xt[d * ldt + t] = 0;
    }
}

/* x[:n] = exp(x[:n] - shift) for the first `valid` entries and 0 after (n a multiple of W);
   returns their sum: W lanes, added pairwise in a fixed order. */
TG_INLINE TG_T TG_F(tg_att_exp_row)(TG_T* x, ptrdiff_t n, ptrdiff_t valid, TG_T shift) {
    TG_T acc[W] = {0};
    for (ptrdiff_t j = 0; j < n; j++) {
        TG_T y = TG_EXP(x[j] - shift);
        x[j] = j < valid ? y : 0;
    }
    for (ptrdiff_t j = 0; j < n; j += W)
        for (int i = 0; i < W; i++)
            acc[i] += x[j + i];
    for (int half = W / 2; half >= 1; half /= 2)
        for (int i = 0; i < half; i++)
            acc[i] += acc[i + half];
    return acc[0];
}

/* max(x[:valid]) for valid >= 1, x readable to a multiple of W: W running maxima. */
TG_INLINE TG_T TG_F(tg_att_row_max)(const TG_T* x, ptrdiff_t valid) {
    TG_T m[W];
    for (int i = 0; i < W; i++)
        m[i] = x[0];
    for (ptrdiff_t j = 0; j < valid; j += W)
        for (int i = 0; i < W; i++) {
            TG_T c = j + i < valid ? x[j + i] : m[i];  /* select, then compare: no branch */
            m[i] = c > m[i] ? c : m[i];
        }
    for (int i = 1; i < W; i++)
        m[0] = m[i] > m[0] ? m[i] : m[0];
    return m[0];
}

TG_INLINE TG_T TG_F(tg_att_dot)(const TG_T* x, const TG_T* y, ptrdiff_t n) {
    TG_T sum = 0;
    for (ptrdiff_t i = 0; i < n; i++)
        sum += x[i] * y[i];
    return sum;
}

/* Scratch elements of one head: forward, a block of (at most 12) score rows, k^T and v;
   backward, P, dS, k^T, v^T, q, k and dout. */
TG_INLINE ptrdiff_t TG_F(tg_att_scratch)(int backward, ptrdiff_t T, ptrdiff_t D) {
    ptrdiff_t Tp = TG_F(tg_att_cols)(T);
    return backward ? 2 * (T + D) * Tp + 3 * T * D : (12 + D) * Tp + T * D;
}

/* One head: q, and k = q + C, v = q + 2C, (T, D) with rows ldq apart -> out (T, D) with rows
   ldo apart, lse (T,). Query rows in blocks of mr: the block's scores up to its last key
   (rounded up to whole vectors), their softmax in place (unnormalized: exp(s - max)), then
   out = exp(S) @ v divided by each row's sum. */
TG_INLINE void TG_F(tg_att_forward)(const int mr, const int nv, const TG_T* q, ptrdiff_t ldq,
                                    ptrdiff_t T, ptrdiff_t C, ptrdiff_t D, TG_T scale,
                                    TG_T* out, ptrdiff_t ldo, TG_T* lse, TG_T* scratch) {
    ptrdiff_t Tp = TG_F(tg_att_cols)(T);
    TG_T* s = scratch;
    TG_T* kt = scratch + mr * Tp;
    TG_T* v = kt + D * Tp;
    TG_T z[12];
    TG_F(tg_att_copy)(q + 2 * C, ldq, T, D, v);
    TG_F(tg_att_transpose)(q + C, ldq, T, D, scale, kt, Tp);
    for (ptrdiff_t i0 = 0; i0 < T; i0 += mr) {
        ptrdiff_t rows = T - i0 < mr ? T - i0 : mr, end = i0 + rows;
        ptrdiff_t cols = TG_F(tg_att_cols)(end);
        TG_F(tg_att_gemm)(mr, nv, rows, cols, D, q + i0 * ldq, ldq, 1, kt, Tp, s, Tp);
        for (ptrdiff_t r = 0; r < rows; r++) {
            TG_T* sr = s + r * Tp;
            TG_T m = TG_F(tg_att_row_max)(sr, i0 + r + 1);
            z[r] = TG_F(tg_att_exp_row)(sr, cols, i0 + r + 1, m);
            lse[i0 + r] = m + TG_LOG(z[r]);
        }
        TG_F(tg_att_gemm)(mr, nv, rows, D, end, s, Tp, 1, v, D, out + i0 * ldo, ldo);
        for (ptrdiff_t r = 0; r < rows; r++)
            for (ptrdiff_t d = 0; d < D; d++)
                out[(i0 + r) * ldo + d] /= z[r];
    }
}

/* One head's gradients: q (k = q + C, v = q + 2C) and dq (dk = dq + C, dv = dq + 2C) have rows
   ldq apart, dout and out rows ldo apart, all (T, D); lse (T,). Per block of mr query rows:
   the scores and dP = dout @ v^T, then P = exp(s - lse) and scale * dS in place (zero above
   the diagonal); then dv = P^T @ dout, dq = scale dS @ k, dk = scale dS^T @ q, each output
   block of mr rows summing only the rows or columns of P and dS that are not zero for it.
   Uses sum_j P[t, j] dP[t, j] = dout[t] . out[t]. */
TG_INLINE void TG_F(tg_att_backward)(const int mr, const int nv, const TG_T* dout,
                                     const TG_T* q, const TG_T* out, ptrdiff_t ldq,
                                     ptrdiff_t ldo, const TG_T* lse, ptrdiff_t T, ptrdiff_t C,
                                     ptrdiff_t D, TG_T scale, TG_T* dq, TG_T* scratch) {
    ptrdiff_t Tp = TG_F(tg_att_cols)(T);
    TG_T* p = scratch;
    TG_T* ds = p + T * Tp;
    TG_T* kt = ds + T * Tp;
    TG_T* vt = kt + D * Tp;
    TG_T* qc = vt + D * Tp;
    TG_T* kc = qc + T * D;
    TG_T* dc = kc + T * D;
    TG_F(tg_att_copy)(q, ldq, T, D, qc);
    TG_F(tg_att_copy)(q + C, ldq, T, D, kc);
    TG_F(tg_att_copy)(dout, ldo, T, D, dc);
    TG_F(tg_att_transpose)(kc, D, T, D, scale, kt, Tp);
    TG_F(tg_att_transpose)(q + 2 * C, ldq, T, D, 1, vt, Tp);
    for (ptrdiff_t i0 = 0; i0 < T; i0 += mr) {
        ptrdiff_t rows = T - i0 < mr ? T - i0 : mr;
        ptrdiff_t cols = TG_F(tg_att_cols)(i0 + rows);
        TG_F(tg_att_gemm)(mr, nv, rows, cols, D, qc + i0 * D, D, 1, kt, Tp, p + i0 * Tp, Tp);
        TG_F(tg_att_gemm)(mr, nv, rows, cols, D, dc + i0 * D, D, 1, vt, Tp, ds + i0 * Tp, Tp);
        for (ptrdiff_t t = i0; t < i0 + rows; t++) {
            TG_T rd = TG_F(tg_att_dot)(dout + t * ldo, out + t * ldo, D);
            TG_T* pt = p + t * Tp;
            TG_T* dst = ds + t * Tp;
            TG_F(tg_att_exp_row)(pt, cols, t + 1, lse[t]);
            for (ptrdiff_t j = 0; j < cols; j++)
                dst[j] = scale * pt[j] * (dst[j] - rd);
        }
    }
    for (ptrdiff_t j0 = 0; j0 < T; j0 += mr) {
        ptrdiff_t rows = T - j0 < mr ? T - j0 : mr, end = j0 + rows;
        /* key block j0: queries j0..T of P^T and dS^T; query block j0: keys 0..end of dS */
        TG_F(tg_att_gemm)(mr, nv, rows, D, T - j0, p + j0 * Tp + j0, 1, Tp, dc + j0 * D, D,
                          dq + 2 * C + j0 * ldq, ldq);
        TG_F(tg_att_gemm)(mr, nv, rows, D, T - j0, ds + j0 * Tp + j0, 1, Tp, qc + j0 * D, D,
                          dq + C + j0 * ldq, ldq);
        TG_F(tg_att_gemm)(mr, nv, rows, D, end, ds + j0 * Tp, Tp, 1, kc, D, dq + j0 * ldq, ldq);
    }
}

#undef W
#undef V
