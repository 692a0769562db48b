/* A row's sum in a fixed order, for one element type: included by kernel_math.h once per type,
   with
     TG_T        the element type (float, double)
     TG_F(name)  name with the type's suffix (name##_f32, name##_f64)
   (compiled alone, it includes kernel_math.h, which instantiates it). Lane j of the 8
   (TG_ROW_SUM_LANES) sums the entries i with i % 8 == j, in order; the lanes are then
   combined pairwise, ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)).
   The same bits for any thread count and from the AVX-512, AVX2 and baseline clones (a sum of
   products only where FMA contraction is off: layernorm's module). Written with GCC's vector
   extension: spelled out as 8 scalar sums, GCC 12 vectorized them for AVX-512 with shuffles
   between every add, 1.5x slower than the baseline build. */
#ifndef TG_T
#include "kernel_math.h"
#else

#include <stddef.h>
#include <string.h>

typedef TG_T TG_F(tg_lanes8) __attribute__((vector_size(TG_ROW_SUM_LANES * sizeof(TG_T))));

/* The 8 lanes of *v, with tail[:n_tail] (n_tail < 8) added to the first lanes, combined (v by
   address: a vector argument's ABI changes with the clone's ISA). */
static inline TG_T TG_F(tg_lanes8_total)(const TG_F(tg_lanes8)* v, const TG_T* tail,
                                         ptrdiff_t n_tail) {
    TG_T acc[8];
    memcpy(acc, v, sizeof acc);
    for (ptrdiff_t j = 0; j < n_tail; j++)
        acc[j] += tail[j];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* sum(x[:n] * y[:n]), or sum(x[:n]) where y is NULL */
static inline TG_T TG_F(tg_row_sum)(const TG_T* x, const TG_T* y, ptrdiff_t n) {
    TG_F(tg_lanes8) acc = {0}, a, b;
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
    return TG_F(tg_lanes8_total)(&acc, tail, n - i);
}

#endif
