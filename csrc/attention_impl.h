/* One head of causal attention, forward and backward, for one element type and vector width:
   included by attention.h once per pair, with
     TG_T        the element type (float, double)
     TG_LANES    elements of a SIMD vector (AVX-512, AVX2, SSE2: 16, 8, 4 floats; 8, 4, 2 doubles)
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
#define TG_LANES 4
#define TG_F(name) name##_f32_128
#define TG_EXP expf
#define TG_LOG logf
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef TG_INLINE
#define TG_INLINE static inline __attribute__((always_inline))
#endif

typedef TG_T TG_F(tg_vec) __attribute__((vector_size(TG_LANES * sizeof(TG_T))));
typedef TG_T TG_F(tg_vec4) __attribute__((vector_size(4 * sizeof(TG_T))));  /* transposes */
/* lane indices of a shuffle (GCC takes them as a vector of integers as wide as TG_T) */
typedef __typeof__(_Generic((TG_T)0, float: (int32_t)0, default: (int64_t)0)) TG_F(tg_lane);
typedef TG_F(tg_lane) TG_F(tg_lanes) __attribute__((vector_size(TG_LANES * sizeof(TG_T))));
typedef TG_F(tg_lane) TG_F(tg_lanes4) __attribute__((vector_size(4 * sizeof(TG_T))));

#define W TG_LANES
#define V TG_F(tg_vec)
#define V4 TG_F(tg_vec4)
#define L4 TG_F(tg_lanes4)

/* TG_SHUFFLE(a, b, lane type, i, j, ...): lanes i, j, ... of the concatenation of a and b
   (clang's __builtin_shufflevector; GCC's __builtin_shuffle, which takes them as a vector). */
#ifndef TG_SHUFFLE
#ifdef __clang__
#define TG_SHUFFLE(a, b, lanes, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define TG_SHUFFLE(a, b, lanes, ...) __builtin_shuffle(a, b, (lanes){__VA_ARGS__})
#endif
#endif

/* The lanes of a vector rotated by h: lane i takes lane (i + h) mod W. */
#if TG_LANES == 16
#define TG_ROT(h) h, (1 + h) % 16, (2 + h) % 16, (3 + h) % 16, (4 + h) % 16, (5 + h) % 16, \
    (6 + h) % 16, (7 + h) % 16, (8 + h) % 16, (9 + h) % 16, (10 + h) % 16, (11 + h) % 16, \
    (12 + h) % 16, (13 + h) % 16, (14 + h) % 16, (15 + h) % 16
#elif TG_LANES == 8
#define TG_ROT(h) h, (1 + h) % 8, (2 + h) % 8, (3 + h) % 8, (4 + h) % 8, (5 + h) % 8, \
    (6 + h) % 8, (7 + h) % 8
#elif TG_LANES == 4
#define TG_ROT(h) h, (1 + h) % 4, (2 + h) % 4, (3 + h) % 4
#else
#define TG_ROT(h) h, (1 + h) % 2
#endif
#define TG_ROTATE(a, h) TG_SHUFFLE(a, a, TG_F(tg_lanes), TG_ROT(h))

/* Columns of score rows (and of k^T, v^T): T rounded up to whole vectors. */
TG_INLINE ptrdiff_t TG_F(tg_att_cols)(ptrdiff_t T) { return (T + W - 1) / W * W; }

/* c (m <= mr rows, nv vectors from column j) = a (m, k) @ b (k, ...): a[i, p] = ar[i][p * acs],
   b's rows ldb apart; with div, row i divided by div[i]. Rows past m read row m - 1 again and
   are not stored. */
TG_INLINE void TG_F(tg_att_tile)(const int mr, const int nv, ptrdiff_t m, ptrdiff_t k,
                                 const TG_T* const* ar, ptrdiff_t acs, const TG_T* b,
                                 ptrdiff_t ldb, const TG_T* div, TG_T* c, ptrdiff_t ldc) {
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
    for (int r = 0; r < m; r++) {
        if (div)
            for (int v = 0; v < nv; v++)
                acc[r][v] /= div[r];
        memcpy(c + r * ldc, acc[r], nv * sizeof(V));
    }
}

/* c (m, n) = a (m, k) @ b (k, n), a[i, p] = a[i * ars + p * acs], rows of b and c ldb and ldc
   apart; with div (not NULL), row i of c divided by div[i]. mr rows at a time, columns in
   tiles of nv vectors, then one vector, then one by one. */
TG_INLINE void TG_F(tg_att_gemm)(const int mr, const int nv, ptrdiff_t m, ptrdiff_t n,
                                 ptrdiff_t k, const TG_T* a, ptrdiff_t ars, ptrdiff_t acs,
                                 const TG_T* b, ptrdiff_t ldb, const TG_T* div, TG_T* c,
                                 ptrdiff_t ldc) {
    for (ptrdiff_t i0 = 0; i0 < m; i0 += mr) {
        ptrdiff_t rows = m - i0 < mr ? m - i0 : mr, j = 0;
        const TG_T* ar[12];
        for (int r = 0; r < mr; r++)
            ar[r] = a + (r < rows ? i0 + r : m - 1) * ars;
        TG_T* ci = c + i0 * ldc;
        const TG_T* di = div ? div + i0 : NULL;
        for (; j + nv * W <= n; j += nv * W)
            TG_F(tg_att_tile)(mr, nv, rows, k, ar, acs, b + j, ldb, di, ci + j, ldc);
        for (; nv > 1 && j + W <= n; j += W)
            TG_F(tg_att_tile)(mr, 1, rows, k, ar, acs, b + j, ldb, di, ci + j, ldc);
        for (; j < n; j++)
            for (int r = 0; r < rows; r++) {
                TG_T sum = 0;
                for (ptrdiff_t p = 0; p < k; p++)
                    sum += ar[r][p * acs] * b[p * ldb + j];
                ci[r * ldc + j] = di ? sum / di[r] : sum;
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

/* xt (D, ldt) = alpha * x (T, D)^T, rows of x ldx apart; columns T..ldt of xt set to 0.
   Blocks of 4 x 4 go through registers: four rows loaded, shuffled into four columns. */
TG_INLINE void TG_F(tg_att_transpose)(const TG_T* x, ptrdiff_t ldx, ptrdiff_t T, ptrdiff_t D,
                                      TG_T alpha, TG_T* xt, ptrdiff_t ldt) {
    ptrdiff_t t = 0, d;
    for (; t + 4 <= T; t += 4) {
        for (d = 0; d + 4 <= D; d += 4) {
            V4 r0, r1, r2, r3;
            memcpy(&r0, x + t * ldx + d, sizeof r0);
            memcpy(&r1, x + (t + 1) * ldx + d, sizeof r1);
            memcpy(&r2, x + (t + 2) * ldx + d, sizeof r2);
            memcpy(&r3, x + (t + 3) * ldx + d, sizeof r3);
            V4 lo01 = TG_SHUFFLE(r0, r1, L4, 0, 4, 1, 5);  /* r0[0] r1[0] r0[1] r1[1] */
            V4 lo23 = TG_SHUFFLE(r2, r3, L4, 0, 4, 1, 5);
            V4 hi01 = TG_SHUFFLE(r0, r1, L4, 2, 6, 3, 7);  /* r0[2] r1[2] r0[3] r1[3] */
            V4 hi23 = TG_SHUFFLE(r2, r3, L4, 2, 6, 3, 7);
            V4 c0 = alpha * TG_SHUFFLE(lo01, lo23, L4, 0, 1, 4, 5);  /* column d of rows t.. */
            V4 c1 = alpha * TG_SHUFFLE(lo01, lo23, L4, 2, 3, 6, 7);
            V4 c2 = alpha * TG_SHUFFLE(hi01, hi23, L4, 0, 1, 4, 5);
            V4 c3 = alpha * TG_SHUFFLE(hi01, hi23, L4, 2, 3, 6, 7);
            memcpy(xt + d * ldt + t, &c0, sizeof c0);
            memcpy(xt + (d + 1) * ldt + t, &c1, sizeof c1);
            memcpy(xt + (d + 2) * ldt + t, &c2, sizeof c2);
            memcpy(xt + (d + 3) * ldt + t, &c3, sizeof c3);
        }
        for (; d < D; d++)
            for (ptrdiff_t i = t; i < t + 4; i++)
                xt[d * ldt + i] = alpha * x[i * ldx + d];
    }
    for (d = 0; d < D; d++) {
        for (ptrdiff_t i = t; i < T; i++)
            xt[d * ldt + i] = alpha * x[i * ldx + d];
        for (ptrdiff_t i = T; i < ldt; i++)
            xt[d * ldt + i] = 0;
    }
}

/* a[0] + ... + a[W - 1], added pairwise: lane i and lane i + W/2, then i and i + W/4, ...
   (each step adds the vector rotated by half the lanes still summed, in registers). */
TG_INLINE TG_T TG_F(tg_att_lane_sum)(const V* lanes) {
    V a = *lanes;
#if TG_LANES >= 16
    a += TG_ROTATE(a, 8);
#endif
#if TG_LANES >= 8
    a += TG_ROTATE(a, 4);
#endif
#if TG_LANES >= 4
    a += TG_ROTATE(a, 2);
#endif
    a += TG_ROTATE(a, 1);
    return a[0];
}

/* *y's lanes before lane `count` (0 <= count <= W) kept, the others set to fill. */
TG_INLINE void TG_F(tg_att_keep_lanes)(V* y, ptrdiff_t count, TG_T fill) {
    TG_F(tg_lanes) inside = (TG_F(tg_lanes)){TG_ROT(0)} < (TG_F(tg_lane))count;
    V other = (V){0} + fill;
    *y = (V)((inside & (TG_F(tg_lanes))*y) | (~inside & (TG_F(tg_lanes))other));
}

/* *m = max(*m, *y), lane by lane (*y where it is greater). */
TG_INLINE void TG_F(tg_att_max_into)(V* m, const V* y) {
    TG_F(tg_lanes) greater = (TG_F(tg_lanes))(*y > *m);  /* all ones where y > m */
    *m = (V)((greater & (TG_F(tg_lanes))*y) | (~greater & (TG_F(tg_lanes))*m));
}

/* x[:n] = exp(x[:n] - shift) for the first `valid` entries and 0 after (n a multiple of W);
   returns their sum: W lanes, then tg_att_lane_sum. The lanes past valid in its last vector
   are zeroed as a whole vector, never one by one: a vector load of lanes just stored singly
   waits for the stores to reach the cache (the -inf and zero tails stored that way cost 6-7%
   of a forward and of a backward on the Zen 5 EPYC, one thread). */
TG_INLINE TG_T TG_F(tg_att_exp_row)(TG_T* x, ptrdiff_t n, ptrdiff_t valid, TG_T shift) {
    V acc = {0}, y = {0};
    ptrdiff_t j, whole = TG_F(tg_att_cols)(valid);  /* the vectors that hold the valid entries */
    for (j = 0; j < whole; j++)
        x[j] = TG_EXP(x[j] - shift);
    for (j = whole; j < n; j += W)
        memcpy(x + j, &y, sizeof y);
    if (valid < whole) {
        memcpy(&y, x + whole - W, sizeof y);
        TG_F(tg_att_keep_lanes)(&y, valid - (whole - W), 0);
        memcpy(x + whole - W, &y, sizeof y);
    }
    for (j = 0; j < whole; j += W) {
        memcpy(&y, x + j, sizeof y);
        acc += y;
    }
    return TG_F(tg_att_lane_sum)(&acc);
}

/* max(x[:valid]) for valid >= 1: W running maxima, the lanes from valid on of the last vector
   counted as -inf, then the maximum of the W (halving as tg_att_lane_sum does). A maximum is
   exact, so its order leaves the bits alone. */
TG_INLINE TG_T TG_F(tg_att_row_max)(const TG_T* x, ptrdiff_t valid) {
    V m = (V){0} - INFINITY, y;
    ptrdiff_t j;
    for (j = 0; j < valid; j += W) {
        memcpy(&y, x + j, sizeof y);
        if (valid - j < W)
            TG_F(tg_att_keep_lanes)(&y, valid - j, -INFINITY);
        TG_F(tg_att_max_into)(&m, &y);
    }
#if TG_LANES >= 16
    y = TG_ROTATE(m, 8);
    TG_F(tg_att_max_into)(&m, &y);
#endif
#if TG_LANES >= 8
    y = TG_ROTATE(m, 4);
    TG_F(tg_att_max_into)(&m, &y);
#endif
#if TG_LANES >= 4
    y = TG_ROTATE(m, 2);
    TG_F(tg_att_max_into)(&m, &y);
#endif
    y = TG_ROTATE(m, 1);
    TG_F(tg_att_max_into)(&m, &y);
    return m[0];
}

/* x . y (n long): W lanes of products, zeros past n, then tg_att_lane_sum. */
TG_INLINE TG_T TG_F(tg_att_dot)(const TG_T* x, const TG_T* y, ptrdiff_t n) {
    V acc = {0};
    ptrdiff_t p = 0;
    for (; p + W <= n; p += W) {
        V xv, yv;
        memcpy(&xv, x + p, sizeof xv);
        memcpy(&yv, y + p, sizeof yv);
        acc += xv * yv;
    }
    if (p < n) {
        V xv = {0}, yv = {0};
        memcpy(&xv, x + p, (n - p) * sizeof(TG_T));
        memcpy(&yv, y + p, (n - p) * sizeof(TG_T));
        acc += xv * yv;
    }
    return TG_F(tg_att_lane_sum)(&acc);
}

/* Fetch into cache the cache lines of `parts` rows of D elements, C apart, from x. */
TG_INLINE void TG_F(tg_att_prefetch)(const TG_T* x, ptrdiff_t D, ptrdiff_t C, int parts) {
    for (int part = 0; part < parts; part++)
        for (ptrdiff_t d = 0; d < D; d += 64 / sizeof(TG_T))
            __builtin_prefetch(x + part * C + d);
}

/* Scratch elements of one head: forward, a block of (at most 12) score rows, k^T, q, k and v;
   backward, P, dS, k^T, v^T, q, k, v and dout. */
TG_INLINE ptrdiff_t TG_F(tg_att_scratch)(int backward, ptrdiff_t T, ptrdiff_t D) {
    ptrdiff_t Tp = TG_F(tg_att_cols)(T);
    return backward ? 2 * (T + D) * Tp + 4 * T * D : (12 + D) * Tp + 3 * T * D;
}

/* One head: q, and k = q + C, v = q + 2C, (T, D) with rows ldq apart -> out (T, D) with rows
   ldo apart, lse (T,). Query rows in blocks of mr: the block's scores up to its last key
   (rounded up to whole vectors), their softmax in place (unnormalized: exp(s - max)), then
   out = exp(S) @ v divided by each row's sum. The block's row maxima come first, then its
   exps: a row's exps wait on its maximum, and in one loop each row's chain of the two ran
   nearly alone (12% of a forward, one thread, Zen 5 EPYC; the backward's exp and dS loops
   split the same way got 7% slower). The rows' logs (libm calls) come after the block's exps
   rather than between them (3-5% of a forward on the AMD EPYC). next (or NULL)
   is the q of the head to come: a row of its q, k and v is fetched into cache with each
   query row here, so that its copies do not wait on memory (5% of a forward on the AMD EPYC,
   2 threads). */
TG_INLINE void TG_F(tg_att_forward)(const int mr, const int nv, const TG_T* q, ptrdiff_t ldq,
                                    ptrdiff_t T, ptrdiff_t C, ptrdiff_t D, TG_T scale,
                                    TG_T* out, ptrdiff_t ldo, TG_T* lse, TG_T* scratch,
                                    const TG_T* next) {
    ptrdiff_t Tp = TG_F(tg_att_cols)(T);
    TG_T* s = scratch;
    TG_T* kt = scratch + mr * Tp;
    TG_T* qc = kt + D * Tp;
    TG_T* kc = qc + T * D;
    TG_T* vc = kc + T * D;
    TG_T m[12], z[12];
    TG_F(tg_att_copy)(q, ldq, T, D, qc);
    TG_F(tg_att_copy)(q + C, ldq, T, D, kc);
    TG_F(tg_att_copy)(q + 2 * C, ldq, T, D, vc);
    TG_F(tg_att_transpose)(kc, D, T, D, scale, kt, Tp);
    for (ptrdiff_t i0 = 0; i0 < T; i0 += mr) {
        ptrdiff_t rows = T - i0 < mr ? T - i0 : mr, end = i0 + rows;
        ptrdiff_t cols = TG_F(tg_att_cols)(end);
        TG_F(tg_att_gemm)(mr, nv, rows, cols, D, qc + i0 * D, D, 1, kt, Tp, NULL, s, Tp);
        for (ptrdiff_t r = 0; r < rows; r++) {
            if (next)
                TG_F(tg_att_prefetch)(next + (i0 + r) * ldq, D, C, 3);
            m[r] = TG_F(tg_att_row_max)(s + r * Tp, i0 + r + 1);
        }
        for (ptrdiff_t r = 0; r < rows; r++)  /* apart from the maxima: see above */
            z[r] = TG_F(tg_att_exp_row)(s + r * Tp, cols, i0 + r + 1, m[r]);
        for (ptrdiff_t r = 0; r < rows; r++)  /* apart: a call clobbers every vector register */
            lse[i0 + r] = m[r] + TG_LOG(z[r]);
        TG_F(tg_att_gemm)(mr, nv, rows, D, end, s, Tp, 1, vc, D, z, out + i0 * ldo, ldo);
    }
}

/* One head's gradients: q (k = q + C, v = q + 2C) and dq (dk = dq + C, dv = dq + 2C) have rows
   ldq apart, dout and out rows ldo apart, all (T, D); lse (T,). Per block of mr query rows:
   the scores and dP = dout @ v^T, then P = exp(s - lse) and scale * dS in place (zero above
   the diagonal); then dv = P^T @ dout, dq = scale dS @ k, dk = scale dS^T @ q, each output
   block of mr rows summing only the rows or columns of P and dS that are not zero for it.
   Uses sum_j P[t, j] dP[t, j] = dout[t] . out[t]. next_dout, next_q, next_out (or NULL): the
   head to come, whose rows are fetched into cache one per query row, as in the forward. */
TG_INLINE void TG_F(tg_att_backward)(const int mr, const int nv, const TG_T* dout,
                                     const TG_T* q, const TG_T* out, ptrdiff_t ldq,
                                     ptrdiff_t ldo, const TG_T* lse, ptrdiff_t T, ptrdiff_t C,
                                     ptrdiff_t D, TG_T scale, TG_T* dq, TG_T* scratch,
                                     const TG_T* next_dout, const TG_T* next_q,
                                     const TG_T* next_out) {
    ptrdiff_t Tp = TG_F(tg_att_cols)(T);
    TG_T* p = scratch;
    TG_T* ds = p + T * Tp;
    TG_T* kt = ds + T * Tp;
    TG_T* vt = kt + D * Tp;
    TG_T* qc = vt + D * Tp;
    TG_T* kc = qc + T * D;
    TG_T* vc = kc + T * D;
    TG_T* dc = vc + T * D;
    TG_F(tg_att_copy)(q, ldq, T, D, qc);
    TG_F(tg_att_copy)(q + C, ldq, T, D, kc);
    TG_F(tg_att_copy)(q + 2 * C, ldq, T, D, vc);
    TG_F(tg_att_copy)(dout, ldo, T, D, dc);
    TG_F(tg_att_transpose)(kc, D, T, D, scale, kt, Tp);
    TG_F(tg_att_transpose)(vc, D, T, D, 1, vt, Tp);
    for (ptrdiff_t i0 = 0; i0 < T; i0 += mr) {
        ptrdiff_t rows = T - i0 < mr ? T - i0 : mr;
        ptrdiff_t cols = TG_F(tg_att_cols)(i0 + rows);
        TG_F(tg_att_gemm)(mr, nv, rows, cols, D, qc + i0 * D, D, 1, kt, Tp, NULL, p + i0 * Tp,
                          Tp);
        TG_F(tg_att_gemm)(mr, nv, rows, cols, D, dc + i0 * D, D, 1, vt, Tp, NULL, ds + i0 * Tp,
                          Tp);
        for (ptrdiff_t t = i0; t < i0 + rows; t++) {
            if (next_q) {
                TG_F(tg_att_prefetch)(next_q + t * ldq, D, C, 3);
                TG_F(tg_att_prefetch)(next_dout + t * ldo, D, 0, 1);
                TG_F(tg_att_prefetch)(next_out + t * ldo, D, 0, 1);
            }
            TG_T rd = TG_F(tg_att_dot)(dc + t * D, out + t * ldo, D);
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
                          NULL, dq + 2 * C + j0 * ldq, ldq);
        TG_F(tg_att_gemm)(mr, nv, rows, D, T - j0, ds + j0 * Tp + j0, 1, Tp, qc + j0 * D, D,
                          NULL, dq + C + j0 * ldq, ldq);
        TG_F(tg_att_gemm)(mr, nv, rows, D, end, ds + j0 * Tp, Tp, 1, kc, D, NULL,
                          dq + j0 * ldq, ldq);
    }
}

#undef W
#undef V
#undef V4
#undef L4
#undef TG_ROT
#undef TG_ROTATE
