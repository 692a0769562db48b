/* The own float32 GEMM of csrc/linear.pyx (its docstring tells the blocking): AVX-512 12 x 32
   and AVX2 6 x 16 micro-kernels, packing, and the forward and backward drivers with their
   OpenMP loops. The ISA is chosen at run time (tg_lin_cpu_isa, and the isa argument of the
   drivers), so the build needs no -march flag. Compiles alone with -Wall -Wextra. */
#ifndef TINYGPT_LINEAR_H
#define TINYGPT_LINEAR_H

#include <stddef.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define TG_OMP(directive) _Pragma(#directive)
#else
#define TG_OMP(directive)
#endif

/* TG_LIN_SIMD: the own float32 GEMM is compiled (x86-64, GCC or clang). Its AVX2 and
   AVX-512 code is compiled with target attributes, so the build needs no -march flag and
   runs anywhere; the CPU is asked at run time (tg_lin_cpu_isa). CFLAGS=-DTINYGPT_NO_DISPATCH
   leaves it out, and float32 then goes to BLAS like float64. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(TINYGPT_NO_DISPATCH)
#define TG_LIN_SIMD 1
#include <immintrin.h>
#include "gelu.h"
#include "relu2.h"
#else
#define TG_LIN_SIMD 0
#endif

enum {
    TG_LIN_MR_MAX = 12,    /* micro-tile rows, at most (AVX-512) */
    TG_LIN_NR_MAX = 32,    /* micro-tile columns, at most (AVX-512: two vectors of 16) */
    TG_LIN_MR_AVX2 = 6,    /* the AVX2 micro-tile: 6 rows, two vectors of 8 columns */
    TG_LIN_NR_AVX2 = 16,
    TG_LIN_CHUNK = 128,    /* rows of x and dout per pass over the dweight tiles */
    TG_LIN_SEG_MIN = 128,  /* rows per dweight segment, at least (while N allows 2) */
    TG_LIN_SEG_MAX = 4,    /* dweight segments, at most: partial sums to keep and add */
    TG_LIN_FWD_ROWS = 96   /* rows per forward work item */
};

/* The activation a linear layer can run on its output (forward) or had on its input
   (backward), while a work item's rows are still in cache. */
enum { TG_ACT_NONE = 0, TG_ACT_GELU = 1, TG_ACT_RELU2 = 2 };

static inline ptrdiff_t tg_lin_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }
static inline ptrdiff_t tg_lin_round_up(ptrdiff_t a, ptrdiff_t b) {
    return (a + b - 1) / b * b;
}

/* Rows per dweight segment: a function of N alone. At most 4 segments: each segment past the
   first writes a partial dweight and the last pass reads it back. With 8, the benchmark's
   model spent 3.0-3.2 ms more a step in its linear backwards than with 4 (40 and 60 step
   pairs, the two toggled within one process; AMD EPYC Zen 5, 2 threads), the larger model
   11.7 ms more (16 pairs); 2 were 1.5 ms faster still for the small model and 4.5 ms slower
   for the larger, and would leave a third core idle. */
static inline ptrdiff_t tg_lin_seg_rows(ptrdiff_t N) {
    ptrdiff_t s = N / TG_LIN_SEG_MIN;
    s = s < 1 ? 1 : (s > TG_LIN_SEG_MAX ? TG_LIN_SEG_MAX : s);
    return tg_lin_round_up((N + s - 1) / s, 16);
}

static inline ptrdiff_t tg_lin_segments(ptrdiff_t N) {
    ptrdiff_t rows = tg_lin_seg_rows(N);
    return (N + rows - 1) / rows;
}

/* Scratch floats of backward: packed weight^T, the partial sums (dweight and dbias of
   segments 1, 2, ...), then the packed chunks of dout: one buffer per thread, or per
   segment where there are fewer segments than threads (tg_lin_buffers). */
static inline ptrdiff_t tg_lin_bwd_packed_size(ptrdiff_t K, ptrdiff_t M) {
    return tg_lin_round_up(K, TG_LIN_NR_MAX) * M;
}
static inline ptrdiff_t tg_lin_bwd_partial_size(ptrdiff_t N, ptrdiff_t K, ptrdiff_t M) {
    return (tg_lin_segments(N) - 1) * (K * M + M);
}
static inline ptrdiff_t tg_lin_bwd_thread_size(ptrdiff_t M) {
    return TG_LIN_CHUNK * tg_lin_round_up(M, TG_LIN_NR_MAX) + 16;
}
static inline ptrdiff_t tg_lin_buffers(ptrdiff_t N, int n_threads) {
    return tg_lin_min(n_threads, tg_lin_segments(N));
}
static inline ptrdiff_t tg_lin_backward_scratch(ptrdiff_t N, ptrdiff_t K, ptrdiff_t M,
                                                int n_threads) {
    return tg_lin_bwd_packed_size(K, M) + tg_lin_bwd_partial_size(N, K, M)
           + tg_lin_buffers(N, n_threads) * tg_lin_bwd_thread_size(M);
}

static inline ptrdiff_t tg_lin_forward_scratch(ptrdiff_t K, ptrdiff_t M) {
    return tg_lin_round_up(M, TG_LIN_NR_MAX) * K;
}

/* Pack columns j0 .. j0 + nr of a (kc, n) matrix, a(p, j) = src[p * rs + j * cs], into
   dst[p * nr + jj], zeros past column n. The loop runs along src's unit stride: row by row
   where cs is 1 (the forward's weight: a column at a time, its M-float stride put every read
   in the same few L1 sets and took 150 us for a 128 x 512 weight), column by column else. */
static inline void tg_lin_pack(const float* src, ptrdiff_t rs, ptrdiff_t cs, ptrdiff_t kc,
                        ptrdiff_t n, ptrdiff_t j0, int nr, float* dst) {
    ptrdiff_t p;
    int jj;
    if (cs == 1) {
        int cols = (int)tg_lin_min(nr, n - j0);
        for (p = 0; p < kc; p++) {
            for (jj = 0; jj < cols; jj++)
                dst[p * nr + jj] = src[p * rs + j0 + jj];
            for (; jj < nr; jj++)
                dst[p * nr + jj] = 0.0f;
        }
        return;
    }
    for (jj = 0; jj < nr; jj++) {
        if (j0 + jj < n) {
            const float* s = src + (j0 + jj) * cs;
            for (p = 0; p < kc; p++)
                dst[p * nr + jj] = s[p * rs];
        } else {
            for (p = 0; p < kc; p++)
                dst[p * nr + jj] = 0.0f;
        }
    }
}

/* Pack rows of a (rows, n) row-major block into panels of W columns each (W = 16 or 32),
   dst[(j0 / W) * rows * W + p * W + jj] = src[p * ld + j0 + jj], zeros past column n,
   adding each column into sum[j] (row by row, in order). W is a constant in each ISA's copy
   (tg_lin_pack_panels16 and 8), so the copies inline and vectorize. The columns go in groups
   of whole panels, 128 columns (rounded up to whole panels): a group's panels (a chunk's 128
   rows: 64 KB) stay in L1 and L2's nearest lines while its rows are copied; a whole wide
   block at once wrote each of its panels a few floats per row (measured when x was packed
   too, in 12-column panels: x of 8192 x 512, dweight 25% faster on one core, in L2). */
static inline __attribute__((always_inline)) void
tg_lin_pack_panels_w(const float* __restrict src, ptrdiff_t ld, ptrdiff_t rows,
                     ptrdiff_t n, const int W, float* __restrict dst,
                     float* __restrict sum) {
    const ptrdiff_t group = (128 + W - 1) / W * W;
    ptrdiff_t p, g0, j0, full = n / W * W;
    int jj;
    for (g0 = 0; g0 < n; g0 += group) {
        ptrdiff_t g_full = tg_lin_min(g0 + group, full);
        for (p = 0; p < rows; p++) {
            const float* s = src + p * ld;
            for (j0 = g0; j0 < g_full; j0 += W) {
                float* d = dst + j0 * rows + p * W;
                for (jj = 0; jj < W; jj++)
                    d[jj] = s[j0 + jj];
                for (jj = 0; jj < W; jj++)
                    sum[j0 + jj] += s[j0 + jj];
            }
            if (j0 < tg_lin_min(g0 + group, n)) {  /* the last, partial panel */
                float* d = dst + j0 * rows + p * W;
                for (jj = 0; jj < W; jj++)
                    d[jj] = j0 + jj < n ? s[j0 + jj] : 0.0f;
                for (jj = 0; jj < n - j0; jj++)
                    sum[j0 + jj] += s[j0 + jj];
            }
        }
    }
}

#if TG_LIN_SIMD
/* ---- micro-kernels.  c (mr, nv vectors) = ([c +] sum_p a(i, p) * b(p, :) [+ bias + res])
   [* mul], each of bias, res, mul where not NULL (res and mul with rows ldr apart).
   a(i, p) = a[i * lda + p] when A_ROWS (x or dout rows: forward, dx), else a[p * lda + i]
   (x's rows where they lie: dweight); b(p, :) = b[p * ldb ...] (packed, whole vectors).
   c, bias, res and mul have `last` valid lanes in the last vector. With beta the tile starts
   from c, otherwise from zero. Each entry: one FMA per p, in order, so the result is the
   same whatever the tiling. */

#define TG_UNROLL _Pragma("GCC unroll 16")

__attribute__((target("avx512f"), always_inline)) static inline void
tg_ukr16(const int mr, const int nv, const int a_rows, ptrdiff_t kc, const float* a,
         ptrdiff_t lda, const float* b, ptrdiff_t ldb, float* c, ptrdiff_t ldc, int beta,
         int last, const float* bias, const float* res, const float* mul, ptrdiff_t ldr) {
    __m512 acc[12][2];
    const float* ar[12];
    const __mmask16 mask = (__mmask16)((1u << last) - 1u);
    ptrdiff_t p;
    TG_UNROLL for (int i = 0; i < mr; i++) {
        ar[i] = a_rows ? a + i * lda : a + i;
        TG_UNROLL for (int v = 0; v < nv; v++)
            acc[i][v] = beta ? _mm512_maskz_loadu_ps(v == nv - 1 ? mask : 0xFFFF,
                                                     c + i * ldc + 16 * v)
                             : _mm512_setzero_ps();
    }
    for (p = 0; p < kc; p++) {
        __m512 bv[2];
        TG_UNROLL for (int v = 0; v < nv; v++)
            bv[v] = _mm512_loadu_ps(b + 16 * v);
        b += ldb;
        TG_UNROLL for (int i = 0; i < mr; i++) {
            __m512 av = _mm512_set1_ps(a_rows ? ar[i][p] : a[i]);
            TG_UNROLL for (int v = 0; v < nv; v++)
                acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
        }
        if (!a_rows)
            a += lda;
    }
    TG_UNROLL for (int i = 0; i < mr; i++) {
        TG_UNROLL for (int v = 0; v < nv; v++) {
            __mmask16 m = v == nv - 1 ? mask : 0xFFFF;
            __m512 r = acc[i][v];
            if (bias)
                r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, bias + 16 * v));
            if (res)
                r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, res + i * ldr + 16 * v));
            if (mul)
                r = _mm512_mul_ps(r, _mm512_maskz_loadu_ps(m, mul + i * ldr + 16 * v));
            _mm512_mask_storeu_ps(c + i * ldc + 16 * v, m, r);
        }
    }
}

__attribute__((target("avx2,fma"), always_inline)) static inline __m256
tg_load8(const float* p, int full, __m256i mask) {
    return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
}

__attribute__((target("avx2,fma"), always_inline)) static inline void
tg_ukr8(const int mr, const int nv, const int a_rows, ptrdiff_t kc, const float* a,
        ptrdiff_t lda, const float* b, ptrdiff_t ldb, float* c, ptrdiff_t ldc, int beta,
        int last, const float* bias, const float* res, const float* mul, ptrdiff_t ldr) {
    __m256 acc[6][2];
    const float* ar[6];
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(last),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    ptrdiff_t p;
    TG_UNROLL for (int i = 0; i < mr; i++) {
        ar[i] = a_rows ? a + i * lda : a + i;
        TG_UNROLL for (int v = 0; v < nv; v++)
            acc[i][v] = beta ? tg_load8(c + i * ldc + 8 * v, v < nv - 1 || last == 8, mask)
                             : _mm256_setzero_ps();
    }
    for (p = 0; p < kc; p++) {
        __m256 bv[2];
        TG_UNROLL for (int v = 0; v < nv; v++)
            bv[v] = _mm256_loadu_ps(b + 8 * v);
        b += ldb;
        TG_UNROLL for (int i = 0; i < mr; i++) {
            __m256 av = _mm256_broadcast_ss(a_rows ? ar[i] + p : a + i);
            TG_UNROLL for (int v = 0; v < nv; v++)
                acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
        }
        if (!a_rows)
            a += lda;
    }
    TG_UNROLL for (int i = 0; i < mr; i++) {
        TG_UNROLL for (int v = 0; v < nv; v++) {
            int full = v < nv - 1 || last == 8;
            __m256 r = acc[i][v];
            if (bias)
                r = _mm256_add_ps(r, tg_load8(bias + 8 * v, full, mask));
            if (res)
                r = _mm256_add_ps(r, tg_load8(res + i * ldr + 8 * v, full, mask));
            if (mul)
                r = _mm256_mul_ps(r, tg_load8(mul + i * ldr + 8 * v, full, mask));
            if (full)
                _mm256_storeu_ps(c + i * ldc + 8 * v, r);
            else
                _mm256_maskstore_ps(c + i * ldc + 8 * v, mask, r);
        }
    }
}

/* One function per (ISA, A layout): a switch that inlines the kernel for each tile shape. */
#define TG_KERNEL_ARGS int mr, int nv, int last, ptrdiff_t kc, const float* a, \
    ptrdiff_t lda, const float* b, ptrdiff_t ldb, float* c, ptrdiff_t ldc, int beta, \
    const float* bias, const float* res, const float* mul, ptrdiff_t ldr
#define TG_ARGS kc, a, lda, b, ldb, c, ldc, beta, last, bias, res, mul, ldr
#define TG_CASE(UKR, MR, AR) case MR: \
    if (nv == 2) UKR(MR, 2, AR, TG_ARGS); else UKR(MR, 1, AR, TG_ARGS); break;

__attribute__((target("avx512f"))) static void tg_kernel16_rows(TG_KERNEL_ARGS) {
    switch (mr) {
        TG_CASE(tg_ukr16, 1, 1) TG_CASE(tg_ukr16, 2, 1) TG_CASE(tg_ukr16, 3, 1)
        TG_CASE(tg_ukr16, 4, 1) TG_CASE(tg_ukr16, 5, 1) TG_CASE(tg_ukr16, 6, 1)
        TG_CASE(tg_ukr16, 7, 1) TG_CASE(tg_ukr16, 8, 1) TG_CASE(tg_ukr16, 9, 1)
        TG_CASE(tg_ukr16, 10, 1) TG_CASE(tg_ukr16, 11, 1) TG_CASE(tg_ukr16, 12, 1)
    }
}

__attribute__((target("avx512f"))) static void tg_kernel16_cols(TG_KERNEL_ARGS) {
    switch (mr) {
        TG_CASE(tg_ukr16, 1, 0) TG_CASE(tg_ukr16, 2, 0) TG_CASE(tg_ukr16, 3, 0)
        TG_CASE(tg_ukr16, 4, 0) TG_CASE(tg_ukr16, 5, 0) TG_CASE(tg_ukr16, 6, 0)
        TG_CASE(tg_ukr16, 7, 0) TG_CASE(tg_ukr16, 8, 0) TG_CASE(tg_ukr16, 9, 0)
        TG_CASE(tg_ukr16, 10, 0) TG_CASE(tg_ukr16, 11, 0) TG_CASE(tg_ukr16, 12, 0)
    }
}

__attribute__((target("avx2,fma"))) static void tg_kernel8_rows(TG_KERNEL_ARGS) {
    switch (mr) {
        TG_CASE(tg_ukr8, 1, 1) TG_CASE(tg_ukr8, 2, 1) TG_CASE(tg_ukr8, 3, 1)
        TG_CASE(tg_ukr8, 4, 1) TG_CASE(tg_ukr8, 5, 1) TG_CASE(tg_ukr8, 6, 1)
    }
}

__attribute__((target("avx2,fma"))) static void tg_kernel8_cols(TG_KERNEL_ARGS) {
    switch (mr) {
        TG_CASE(tg_ukr8, 1, 0) TG_CASE(tg_ukr8, 2, 0) TG_CASE(tg_ukr8, 3, 0)
        TG_CASE(tg_ukr8, 4, 0) TG_CASE(tg_ukr8, 5, 0) TG_CASE(tg_ukr8, 6, 0)
    }
}

typedef void (*tg_kernel_fn)(TG_KERNEL_ARGS);

/* 2: AVX-512 (F), 1: AVX2 + FMA, 0: neither (BLAS runs float32 too). */
static inline int tg_lin_cpu_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
    return 0;
}

/* tg_lin_pack_panels_w compiled for each ISA, with its panel width (nr): the copies and
   dbias's sums in whole vectors of that ISA (the same sums in the same order, so the same
   bits). The drivers around them are compiled for baseline x86-64, whose 16-byte copies had
   taken the plain linear backwards of a training step 0.9-1.7 ms longer (two runs of 60 step
   pairs, the two toggled within one process; AMD EPYC Zen 5, 2 threads). */
typedef void (*tg_pack_fn)(const float* src, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n,
                           float* dst, float* sum);

__attribute__((target("avx512f"))) static void
tg_lin_pack_panels16(const float* src, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n, float* dst,
                     float* sum) {
    tg_lin_pack_panels_w(src, ld, rows, n, TG_LIN_NR_MAX, dst, sum);
}

__attribute__((target("avx2,fma"))) static void
tg_lin_pack_panels8(const float* src, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t n, float* dst,
                    float* sum) {
    tg_lin_pack_panels_w(src, ld, rows, n, TG_LIN_NR_AVX2, dst, sum);
}

/* x_outer: the order of dweight's tiles (tg_lin_dweight_rows). */
typedef struct {
    int mr, nr, v, x_outer;
    tg_kernel_fn rows, cols;
    tg_pack_fn pack;
} tg_lin_isa_t;

static tg_lin_isa_t tg_lin_isa_get(int isa) {
    tg_lin_isa_t t;
    if (isa == 2) {
        t.mr = TG_LIN_MR_MAX; t.nr = TG_LIN_NR_MAX; t.v = 16; t.x_outer = 1;
        t.rows = tg_kernel16_rows; t.cols = tg_kernel16_cols; t.pack = tg_lin_pack_panels16;
    } else {
        t.mr = TG_LIN_MR_AVX2; t.nr = TG_LIN_NR_AVX2; t.v = 8; t.x_outer = 0;
        t.rows = tg_kernel8_rows; t.cols = tg_kernel8_cols; t.pack = tg_lin_pack_panels8;
    }
    return t;
}

/* c (rows, n) = (a (rows, kc; row-major, lda) @ B [+ bias + res]) [* mul], B packed in
   nr-column panels of kc rows each; res and mul have rows ldr apart. Panel by panel: each
   panel stays in L1 while the blocks of mr rows of a pass, a's rows coming from memory during
   the first panel (each block fetching the next's meanwhile: +2-4% when they come from
   memory, as they do in a training step) and from L1 or L2 after it. The lines of c that the
   next tile writes, and of res that it adds or mul that it multiplies by, are fetched while
   this tile runs (+5-8% on a forward of 8192 x 128 -> 384 or 512, +5% on 128 -> 128 with res,
   2 threads: the tile's stores no longer wait for their lines to come from memory). Blocks of
   a's rows outside, each meeting every panel, had kept a's rows in L1 and streamed the panels
   from L2: the lab model's step took 3.4-5.7 ms more (three runs of 50-60 step pairs, the two
   orders toggled within one process, faster in 45-50; AMD EPYC Zen 5, 2 threads; fc2's
   backward alone -1.0 to +0.4 ms), the larger model's 31 ms more of 860 (30 pairs), and the
   AVX2 kernels' 1.9 ms more (40 pairs). */
static void tg_lin_rows_gemm(const tg_lin_isa_t* t, const float* a, ptrdiff_t lda,
                             ptrdiff_t rows, ptrdiff_t kc, const float* bp, ptrdiff_t n,
                             float* c, ptrdiff_t ldc, const float* bias, const float* res,
                             const float* mul, ptrdiff_t ldr) {
    ptrdiff_t j0, i0, r, off;
    for (j0 = 0; j0 < n; j0 += t->nr) {
        int cols = (int)tg_lin_min(t->nr, n - j0);
        int nv = (cols + t->v - 1) / t->v;
        for (i0 = 0; i0 < rows; i0 += t->mr) {
            int mr = (int)tg_lin_min(t->mr, rows - i0);
            ptrdiff_t next_i = i0 + t->mr < rows ? i0 + t->mr : 0;  /* the next tile's corner */
            ptrdiff_t next_j = i0 + t->mr < rows ? j0 : j0 + t->nr;
            if (j0 == 0)
                for (r = i0 + t->mr; r < tg_lin_min(rows, i0 + 2 * t->mr); r++)
                    for (off = 0; off < kc; off += 16)
                        __builtin_prefetch(a + r * lda + off, 0, 3);
            for (r = next_i; next_j < n && r < tg_lin_min(next_i + t->mr, rows); r++)
                for (off = 0; off < tg_lin_min(t->nr, n - next_j); off += 16) {
                    __builtin_prefetch(c + r * ldc + next_j + off, 1, 2);
                    if (res)
                        __builtin_prefetch(res + r * ldr + next_j + off, 0, 2);
                    if (mul)
                        __builtin_prefetch(mul + r * ldr + next_j + off, 0, 2);
                }
            t->rows(mr, nv, cols - (nv - 1) * t->v, kc, a + i0 * lda, lda,
                    bp + j0 * kc, t->nr, c + i0 * ldc + j0, ldc, 0,
                    bias ? bias + j0 : NULL, res ? res + i0 * ldr + j0 : NULL,
                    mul ? mul + i0 * ldr + j0 : NULL, ldr);
        }
    }
}

/* dw (K, M) [+]= x[:rows]^T @ dout[:rows]; db (M) [+]= the rows' sum. dout's rows are packed
   first, in nr-column panels (summed into db on the way), so the kernel reads them
   sequentially; x's rows are read where they lie, mr floats of each. Each tile of dw sums its
   rows in order, so the order of the tiles leaves the bits alone: with x_outer (AVX-512),
   each strip of mr columns of x meets every dout panel in turn (its lines stay in L1), else
   (AVX2) each dout panel meets every strip. Meanwhile the next chunk's x (next_x, next_bytes;
   NULL, 0 for none) is fetched a few lines a tile, so that the kernel does not wait on memory
   for it (one core, x from memory: dweight 8192 x 128 -> 128 10% faster, 128 -> 65 25%,
   512 -> 128 9%, when x was packed too).
   Measured in a step, the two ways toggled within one process (AMD EPYC Zen 5, 2 threads):
   x had been packed into mr-column panels as well, for fear of the cache-set conflicts of its
   power-of-two row strides; read where it lies, the benchmark's fc2 backward (x 512 wide)
   took 2.0 ms less a step and the attention output layer's 0.5 ms less (60 pairs, faster in
   53 and 50), the AVX2 kernels' fc2 2.4 ms less, the larger benchmark model (x 384 and 1536
   wide) within its noise. Then x_outer, on AVX-512: the lab model's linear backwards 1.3-2.1
   ms less a step (fc2's 0.9-1.2; 50 and 60 pairs), the larger model's 19 ms less of 520
   (30 pairs); on AVX2, 1.9 ms more (40 pairs), so not there. */
static void tg_lin_dweight_rows(const tg_lin_isa_t* t, const float* x, const float* dout,
                                ptrdiff_t rows, ptrdiff_t K, ptrdiff_t M, float* dw,
                                float* db, int beta, float* dp, const float* next_x,
                                ptrdiff_t next_bytes) {
    ptrdiff_t strips = (K + t->mr - 1) / t->mr, panels = (M + t->nr - 1) / t->nr;
    ptrdiff_t tiles = strips * panels;
    ptrdiff_t lines_per_tile = (next_bytes / 64 + tiles) / tiles, fetched = 0, q;
    ptrdiff_t tile, j;
    if (!beta)
        for (j = 0; j < M; j++)
            db[j] = 0.0f;
    t->pack(dout, M, rows, M, dp, db);
    for (tile = 0; tile < tiles; tile++) {
        ptrdiff_t i0 = (t->x_outer ? tile / panels : tile % strips) * t->mr;
        ptrdiff_t j0 = (t->x_outer ? tile % panels : tile / strips) * t->nr;
        int mr = (int)tg_lin_min(t->mr, K - i0);
        int cols = (int)tg_lin_min(t->nr, M - j0);
        int nv = (cols + t->v - 1) / t->v;
        for (q = 0; q < lines_per_tile && fetched < next_bytes; q++, fetched += 64)
            __builtin_prefetch((const char*)next_x + fetched, 0, 3);
        t->cols(mr, nv, cols - (nv - 1) * t->v, rows, x + i0, K, dp + j0 * rows, t->nr,
                dw + i0 * M + j0, M, beta, NULL, NULL, NULL, 0);
    }
}

/* post[:n] = act(pre[:n]), and pre[:n] replaced by act'(pre[:n]), the slope that the backward
   multiplies by: gelu.h's and relu2.h's loops, the ones their own kernels run. */
static inline void tg_lin_act_forward(int act, float* pre, float* post, ptrdiff_t n) {
    if (act == TG_ACT_GELU)
        tg_gelu_forward_slope_f32(pre, post, n);
    else if (act == TG_ACT_RELU2)
        tg_relu2_forward_slope_f32(pre, post, n);
}

/* out (N, M) = x @ w + bias + res; with act, post (N, M) = act(out) too and out becomes act's
   slope there (tg_lin_act_forward), each work item's rows while they are in cache. */
static inline void tg_lin_forward_f32(const float* x, const float* w, const float* bias,
                               const float* res, ptrdiff_t N, ptrdiff_t K, ptrdiff_t M,
                               float* out, int act, float* post, float* scratch, int isa,
                               int n_threads) {
    tg_lin_isa_t t = tg_lin_isa_get(isa);
    ptrdiff_t panels = (M + t.nr - 1) / t.nr;
    ptrdiff_t blocks = (N + TG_LIN_FWD_ROWS - 1) / TG_LIN_FWD_ROWS;
    ptrdiff_t jb, blk;
    (void)n_threads;  /* read by the OpenMP pragma alone */
    TG_OMP(omp parallel num_threads(n_threads))
    {
        TG_OMP(omp for schedule(static))
        for (jb = 0; jb < panels; jb++)
            tg_lin_pack(w, M, 1, K, M, jb * t.nr, t.nr, scratch + jb * K * t.nr);
        TG_OMP(omp for schedule(dynamic, 1))
        for (blk = 0; blk < blocks; blk++) {
            ptrdiff_t r0 = blk * TG_LIN_FWD_ROWS;
            ptrdiff_t rows = tg_lin_min(TG_LIN_FWD_ROWS, N - r0);
            tg_lin_rows_gemm(&t, x + r0 * K, K, rows, K, scratch, M, out + r0 * M, M, bias,
                             res ? res + r0 * M : NULL, NULL, M);
            if (act)
                tg_lin_act_forward(act, out + r0 * M, post + r0 * M, rows * M);
        }
    }
}

/* dx (N, K) = dout @ w^T, dw (K, M) = x^T @ dout, db = dout's column sums; with slope (N, K;
   NULL for none), x was an activation's output and slope its derivative there, and dx becomes
   the gradient at the activation's input, chunk by chunk while in cache. */
static inline void tg_lin_backward_f32(const float* dout, const float* x, const float* w,
                                ptrdiff_t N, ptrdiff_t K, ptrdiff_t M, const float* slope,
                                float* dx, float* dw, float* db,
                                float* scratch, int isa, int n_threads) {
    tg_lin_isa_t t = tg_lin_isa_get(isa);
    ptrdiff_t panels = (K + t.nr - 1) / t.nr;
    ptrdiff_t seg = tg_lin_seg_rows(N), n_seg = tg_lin_segments(N);
    float* packed = scratch;  /* weight^T: (M, K) in nr-column panels */
    float* partial = packed + tg_lin_bwd_packed_size(K, M);
    float* bufs = partial + tg_lin_bwd_partial_size(N, K, M);
    ptrdiff_t jb, s, i;
    int per_thread = n_threads <= n_seg;
    TG_OMP(omp parallel num_threads(n_threads))
    {
        #ifdef _OPENMP
        ptrdiff_t thread = omp_get_thread_num();
        #else
        ptrdiff_t thread = 0;
        #endif
        TG_OMP(omp for schedule(static))
        for (jb = 0; jb < panels; jb++)
            tg_lin_pack(w, 1, M, M, K, jb * t.nr, t.nr, packed + jb * M * t.nr);
        TG_OMP(omp for schedule(dynamic, 1))
        for (s = 0; s < n_seg; s++) {
            float* pdw = s == 0 ? dw : partial + (s - 1) * (K * M + M);
            float* pdb = s == 0 ? db : pdw + K * M;
            float* buf = bufs + (per_thread ? thread : s) * tg_lin_bwd_thread_size(M);
            ptrdiff_t r0, end = tg_lin_min(N, (s + 1) * seg);
            for (r0 = s * seg; r0 < end; r0 += TG_LIN_CHUNK) {
                ptrdiff_t rows = tg_lin_min(TG_LIN_CHUNK, end - r0);
                ptrdiff_t next_rows = tg_lin_min(TG_LIN_CHUNK, end - r0 - rows);
                /* dx's tiles multiplied by the slope as they are stored */
                tg_lin_rows_gemm(&t, dout + r0 * M, M, rows, M, packed, K, dx + r0 * K, K,
                                 NULL, NULL, slope ? slope + r0 * K : NULL, K);
                tg_lin_dweight_rows(&t, x + r0 * K, dout + r0 * M, rows, K, M, pdw, pdb,
                                    r0 > s * seg, buf, x + (r0 + rows) * K,
                                    next_rows * K * (ptrdiff_t)sizeof(float));
            }
        }
        /* the partial sums, added in segment order: row i of dweight (i = K: dbias) */
        TG_OMP(omp for schedule(static))
        for (i = 0; i <= K; i++) {
            float* dst = i < K ? dw + i * M : db;
            ptrdiff_t j, k;
            for (k = 1; k < n_seg; k++) {
                const float* src = partial + (k - 1) * (K * M + M) + i * M;
                for (j = 0; j < M; j++)
                    dst[j] += src[j];
            }
        }
    }
}
#else
/* No own GEMM: tg_lin_cpu_isa() is 0, so the callers never run the drivers (float32 goes to
   BLAS); these stand-ins only let them compile. */
static inline int tg_lin_cpu_isa(void) { return 0; }
#define tg_lin_forward_f32(...) ((void)0)
#define tg_lin_backward_f32(...) ((void)0)
#endif

#endif
