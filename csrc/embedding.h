/* The row sums of csrc/embedding.pyx, for float and double. TG_DISPATCH (kernel_math.h) runs
   them on AVX-512 or AVX2 where the CPU has them; each entry is a plain sum, so every clone
   gives the same bits. Compiles alone with -Wall -Wextra. */
#ifndef TINYGPT_EMBEDDING_H
#define TINYGPT_EMBEDDING_H

#include <stddef.h>
#include <stdint.h>

#include "kernel_math.h"

/* out[lo:hi] (of out (V, C)) = the rows i of dout (N, C) with ids[i] in [lo, hi), summed per id
   from zero in row order. rows: scratch for N indices (the rows taken, found without a branch:
   which side of lo and hi an id falls on is a coin toss). */
#define TG_EMBEDDING_ROWS(T, NAME)                                                            \
    TG_DISPATCH                                                                               \
    static inline void tg_embedding_add_rows_##NAME(const int64_t* ids, const T* dout,        \
                                                    ptrdiff_t N, ptrdiff_t C, int64_t lo,     \
                                                    int64_t hi, ptrdiff_t* rows, T* out) {    \
        ptrdiff_t i, j, c, taken = 0;                                                         \
        for (i = lo * C; i < hi * C; i++)                                                     \
            out[i] = 0;                                                                       \
        for (i = 0; i < N; i++) {                                                             \
            rows[taken] = i;                                                                  \
            taken += (ids[i] >= lo) & (ids[i] < hi);                                          \
        }                                                                                     \
        for (j = 0; j < taken; j++) {                                                         \
            T* dst = out + ids[rows[j]] * C;                                                  \
            const T* src = dout + rows[j] * C;                                                \
            for (c = 0; c < C; c++)                                                           \
                dst[c] += src[c];                                                             \
        }                                                                                     \
    }

TG_EMBEDDING_ROWS(float, f32)
TG_EMBEDDING_ROWS(double, f64)

#endif
