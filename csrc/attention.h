/* Causal attention heads for csrc/attention.pyx: attention_impl.h instantiated for float and
   double at three vector widths, and entry points compiled for AVX-512, AVX2+FMA and baseline
   x86-64 (SSE2), each with the tile its registers hold (rows x vectors: 12 x 2 of 32 zmm,
   6 x 2 of 16 ymm, 6 x 2 of 16 xmm). The ISA is chosen at run time (tg_att_cpu_isa and the
   isa argument), so the build needs no -march flag. Compiles alone with -Wall -Wextra. */
#ifndef TINYGPT_ATTENTION_H
#define TINYGPT_ATTENTION_H

#include <math.h>
#include <stddef.h>

#include "kernel_math.h"

#define TG_T float
#define TG_EXP tg_expf
#define TG_LOG logf
#define TG_LANES 16
#define TG_F(name) name##_f32_512
#include "attention_impl.h"
#undef TG_LANES
#undef TG_F
#define TG_LANES 8
#define TG_F(name) name##_f32_256
#include "attention_impl.h"
#undef TG_LANES
#undef TG_F
#define TG_LANES 4
#define TG_F(name) name##_f32_128
#include "attention_impl.h"
#undef TG_LANES
#undef TG_F
#undef TG_T
#undef TG_EXP
#undef TG_LOG

#define TG_T double
#define TG_EXP exp
#define TG_LOG log
#define TG_LANES 8
#define TG_F(name) name##_f64_512
#include "attention_impl.h"
#undef TG_LANES
#undef TG_F
#define TG_LANES 4
#define TG_F(name) name##_f64_256
#include "attention_impl.h"
#undef TG_LANES
#undef TG_F
#define TG_LANES 2
#define TG_F(name) name##_f64_128
#include "attention_impl.h"
#undef TG_LANES
#undef TG_F
#undef TG_T
#undef TG_EXP
#undef TG_LOG

/* TG_ATT_SIMD: the AVX2 and AVX-512 entry points are compiled for their ISA (x86-64, GCC or
   clang). CFLAGS=-DTINYGPT_NO_DISPATCH leaves only the baseline: tg_att_cpu_isa() is then 0. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
    && !defined(TINYGPT_NO_DISPATCH)
#define TG_ATT_SIMD 1
#define TG_AVX512 __attribute__((target("avx512f")))
#define TG_AVX2 __attribute__((target("avx2,fma")))
#else
#define TG_ATT_SIMD 0
#define TG_AVX512
#define TG_AVX2
#endif

/* 2: AVX-512 (F), 1: AVX2 + FMA, 0: neither. */
static inline int tg_att_cpu_isa(void) {
#if TG_ATT_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

/* The tile rows of each ISA: a head's query and key blocks. */
static inline int tg_att_rows(int isa) { return isa == 2 ? 12 : 6; }

/* Scratch elements for one head on any ISA (the widest vector pads the most). */
static inline ptrdiff_t tg_att_scratch_f32(int backward, ptrdiff_t T, ptrdiff_t D) {
    return tg_att_scratch_f32_512(backward, T, D);
}
static inline ptrdiff_t tg_att_scratch_f64(int backward, ptrdiff_t T, ptrdiff_t D) {
    return tg_att_scratch_f64_512(backward, T, D);
}

#define TG_ATT_FORWARD_ARGS(T) const T* q, ptrdiff_t ldq, ptrdiff_t n, ptrdiff_t C, \
    ptrdiff_t D, T scale, T* out, ptrdiff_t ldo, T* lse, T* scratch, const T* next
#define TG_ATT_BACKWARD_ARGS(T) const T* dout, const T* q, const T* out, ptrdiff_t ldq, \
    ptrdiff_t ldo, const T* lse, ptrdiff_t n, ptrdiff_t C, ptrdiff_t D, T scale, T* dq, \
    T* scratch, const T* next_dout, const T* next_q, const T* next_out
#define TG_ATT_FORWARD_CALL(D) q, ldq, n, C, D, scale, out, ldo, lse, scratch, next
#define TG_ATT_BACKWARD_CALL(D) dout, q, out, ldq, ldo, lse, n, C, D, scale, dq, scratch, \
    next_dout, next_q, next_out

/* A head of D = 16, 32 or 64 elements (TinyGPT's default 64 / 4 heads, the command line's and
   the benchmark's 128 / 4, the larger benchmark model's 384 / 6) goes to a copy compiled with
   D as a constant: its loops over D unroll, and a forward + backward takes 10-11% less time
   (AMD EPYC, D = 16 and 32, 2 threads); the same sums in the same order, so the same bits.
   Other sizes run the general copy. */
#define TG_ATT_BY_D(KERNEL, MR, CALL) \
    if (D == 16) KERNEL(MR, 2, CALL(16)); \
    else if (D == 32) KERNEL(MR, 2, CALL(32)); \
    else if (D == 64) KERNEL(MR, 2, CALL(64)); \
    else KERNEL(MR, 2, CALL(D))

/* tg_att_forward_head_SFX(isa, ...) and tg_att_backward_head_SFX(isa, ...): one head on the
   ISA's entry point (arguments: tg_att_forward and tg_att_backward in attention_impl.h). */
#define TG_ATT_HEADS(SFX, T)                                                                  \
TG_AVX512 static void tg_att_fwd512_##SFX(TG_ATT_FORWARD_ARGS(T)) {                            \
    TG_ATT_BY_D(tg_att_forward_##SFX##_512, 12, TG_ATT_FORWARD_CALL);                         \
}                                                                                             \
TG_AVX2 static void tg_att_fwd256_##SFX(TG_ATT_FORWARD_ARGS(T)) {                              \
    TG_ATT_BY_D(tg_att_forward_##SFX##_256, 6, TG_ATT_FORWARD_CALL);                          \
}                                                                                             \
static void tg_att_fwd128_##SFX(TG_ATT_FORWARD_ARGS(T)) {                                     \
    tg_att_forward_##SFX##_128(6, 2, TG_ATT_FORWARD_CALL(D));                                 \
}                                                                                             \
TG_AVX512 static void tg_att_bwd512_##SFX(TG_ATT_BACKWARD_ARGS(T)) {                           \
    TG_ATT_BY_D(tg_att_backward_##SFX##_512, 12, TG_ATT_BACKWARD_CALL);                       \
}                                                                                             \
TG_AVX2 static void tg_att_bwd256_##SFX(TG_ATT_BACKWARD_ARGS(T)) {                             \
    TG_ATT_BY_D(tg_att_backward_##SFX##_256, 6, TG_ATT_BACKWARD_CALL);                        \
}                                                                                             \
static void tg_att_bwd128_##SFX(TG_ATT_BACKWARD_ARGS(T)) {                                    \
    tg_att_backward_##SFX##_128(6, 2, TG_ATT_BACKWARD_CALL(D));                               \
}                                                                                             \
static inline void tg_att_forward_head_##SFX(int isa, TG_ATT_FORWARD_ARGS(T)) {               \
    if (isa == 2) tg_att_fwd512_##SFX(TG_ATT_FORWARD_CALL(D));                                \
    else if (isa == 1) tg_att_fwd256_##SFX(TG_ATT_FORWARD_CALL(D));                           \
    else tg_att_fwd128_##SFX(TG_ATT_FORWARD_CALL(D));                                         \
}                                                                                             \
static inline void tg_att_backward_head_##SFX(int isa, TG_ATT_BACKWARD_ARGS(T)) {             \
    if (isa == 2) tg_att_bwd512_##SFX(TG_ATT_BACKWARD_CALL(D));                               \
    else if (isa == 1) tg_att_bwd256_##SFX(TG_ATT_BACKWARD_CALL(D));                          \
    else tg_att_bwd128_##SFX(TG_ATT_BACKWARD_CALL(D));                                        \
}

TG_ATT_HEADS(f32, float)
TG_ATT_HEADS(f64, double)

#endif
