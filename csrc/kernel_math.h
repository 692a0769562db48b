/* Shared C helpers of the kernels in csrc/: float32 exp and select without branches, a row's
   sum in a fixed order (row_sum_impl.h, for float and double), the dispatch attribute of the
   exp-heavy loops, and where the kernels' scratch starts.
   Plain C11 with GCC extensions; compiles alone with -Wall -Wextra (tests/test_kernels.py). */
#ifndef TINYGPT_KERNEL_MATH_H
#define TINYGPT_KERNEL_MATH_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* TG_DISPATCH: GCC's function multiversioning. The function is compiled three times, for
   x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA) and the baseline, and the dynamic loader picks
   the best the CPU runs (on the AMD EPYC, v4 made GELU 1.6 times as fast as v3). Every thread
   of a process uses the same clone, so results stay identical across thread counts. Each
   value is computed alone and each sum in its written order, so v4 and v3 give the same bits
   (compared on the AMD EPYC); they may differ in the last bits from the baseline, which has no
   FMA. Only where it is known to work: GCC >= 11, x86-64, glibc (ifunc).
   CFLAGS=-DTINYGPT_NO_DISPATCH turns it off, leaving only the baseline. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) \
    && defined(__GLIBC__) && !defined(TINYGPT_NO_DISPATCH)
#define TG_DISPATCH \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TG_DISPATCH
#endif

/* Bytes: a cache line, and an AVX-512 vector. The kernels' scratch starts on such a boundary,
   as the arrays of tinygpt.ops.empty (ops.ALIGNMENT) do: a vector load that straddles two
   cache lines costs two. */
#define TG_ALIGNMENT 64

/* nbytes of memory starting on a TG_ALIGNMENT boundary, for free(); NULL if there is none. */
static inline void* tg_aligned_alloc(size_t nbytes) {
    return aligned_alloc(TG_ALIGNMENT, (nbytes + TG_ALIGNMENT - 1) / TG_ALIGNMENT * TG_ALIGNMENT);
}

static inline uint32_t tg_float_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }
static inline float tg_bits_float(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }

static inline uint64_t tg_double_bits(double d) { uint64_t u; memcpy(&u, &d, sizeof u); return u; }
static inline double tg_bits_double(uint64_t u) { double d; memcpy(&d, &u, sizeof d); return d; }

/* cond ? a : b as a bit mask: both sides are always computed, so loops vectorize (GCC keeps a
   plain ?: on a float comparison as a branch, since the comparison may trap). */
static inline float tg_selectf(int cond, float a, float b) {
    uint32_t m = -(uint32_t)(cond != 0);
    return tg_bits_float((tg_float_bits(a) & m) | (tg_float_bits(b) & ~m));
}

static inline double tg_selectd(int cond, double a, double b) {
    uint64_t m = -(uint64_t)(cond != 0);
    return tg_bits_double((tg_double_bits(a) & m) | (tg_double_bits(b) & ~m));
}

/* exp(x) for float within about 1 ulp, branch-free. exp(x) = 2^n exp(r) with n = round(x / ln2),
   |r| <= ln2/2, and exp(r) from Cephes' expf polynomial (in Estrin's form: a shorter dependency
   chain). Results below FLT_MIN (x < -87.34) are flushed to 0 rather than made subnormal;
   from about 127.5 ln 2 = 88.376 (within a factor 1.4 of FLT_MAX) n = 128 makes 2^n's bits
   those of +inf; NaN gives NaN. x is clamped to [lo, 89] first, so that 2^n stays within
   FLT_MIN .. +inf: two compares and three selects, which pass a NaN through (5% faster than
   masking the result, with the same bits for every float32 x but 88.376266, now 2.4e38
   instead of +inf). clamp_high 0 leaves out the clamp at 89, for callers whose x cannot
   exceed it (a constant: each caller's copy keeps only its own compares). */
static inline float tg_expf_clamped(float x, int clamp_high) {
    const float lo = -87.33654475f;
    int tiny = x < lo;
    float xl = tg_selectf(tiny, lo, x);
    float xc = clamp_high ? tg_selectf(x > 89.0f, 89.0f, xl) : xl;
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* rounded */
    float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;  /* x - n ln2, in two parts */
    float r2 = r * r;
    float p = (5.0000001201e-1f + 1.6666665459e-1f * r)
              + r2 * ((4.1665795894e-2f + 8.3334519073e-3f * r)
                      + r2 * (1.3981999507e-3f + 1.9875691500e-4f * r));
    p = (p * r2 + r) + 1.0f;
    return tg_selectf(tiny, 0.0f, p * tg_bits_float((uint32_t)((int32_t)n + 127) << 23));
}

static inline float tg_expf(float x) { return tg_expf_clamped(x, 1); }

/* exp(x) for x <= 0 or NaN (GELU's exp(-2|u|)): without the clamp at 89, which no such x
   reaches, so the same bits as tg_expf; GELU's backward 9% faster (Zen 5 EPYC, AVX-512). */
static inline float tg_expf_nonpositive(float x) { return tg_expf_clamped(x, 0); }

/* The partial sums of tg_row_sum (their combination is written for 8). */
#define TG_ROW_SUM_LANES 8

#define TG_T float
#define TG_F(name) name##_f32
#include "row_sum_impl.h"
#undef TG_T
#undef TG_F

#define TG_T double
#define TG_F(name) name##_f64
#include "row_sum_impl.h"
#undef TG_T
#undef TG_F

#endif
