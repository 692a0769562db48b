/* The LayerNorm rows of csrc/layernorm.pyx, for float and double: layernorm_impl.h instantiated
   twice. Each row function carries TG_DISPATCH (kernel_math.h), so it runs on AVX-512 or
   AVX2 + FMA where the CPU has them. Compiles alone with -Wall -Wextra. */
#ifndef TINYGPT_LAYERNORM_H
#define TINYGPT_LAYERNORM_H

#include <math.h>
#include <stddef.h>

#include "kernel_math.h"

#define TG_T float
#define TG_F(name) name##_f32
#define TG_SQRT sqrtf
#include "layernorm_impl.h"
#undef TG_T
#undef TG_F
#undef TG_SQRT

#define TG_T double
#define TG_F(name) name##_f64
#define TG_SQRT sqrt
#include "layernorm_impl.h"
#undef TG_T
#undef TG_F
#undef TG_SQRT

#endif
