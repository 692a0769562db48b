# Shared inline helpers for the kernels in csrc/: float32 exp (its C in kernel_math.h), fused-type
# math, and row reductions in a fixed order.
#
# Three rules shape them:
#   * Loops that call them must vectorize without -ffast-math. GCC will not if-convert a branch
#     around a floating-point operation while -ftrapping-math is on (the default), so the hot C
#     helpers make their choices with integer bit masks, never with branches.
#   * Results must not depend on the thread count: sums use LANES interleaved partial sums,
#     combined in one fixed order. The same bits on any number of threads, and a shape that GCC
#     turns into SIMD adds without reordering anything itself.
#   * The exp-heavy float32 loops carry TG_DISPATCH (kernel_math.h) to run on AVX-512 or AVX2+FMA
#     where the CPU has it, while the build itself stays portable (no -march=native).
from cython cimport floating
from libc.math cimport exp, log, logf

cdef extern from "kernel_math.h":
    # Number of interleaved partial sums in the row reductions (tg_row_sum's, row_max's).
    enum: LANES "TG_ROW_SUM_LANES"
    double tg_row_sum_f64(const double* x, const double* y, Py_ssize_t n) noexcept nogil
    float tg_exp_shifted_sum(const float* x, float* y, Py_ssize_t n, float shift) noexcept nogil


cdef inline floating flog(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating exp_shifted_sum(const floating* x, floating* y, Py_ssize_t n,
                                     floating shift) noexcept nogil:
    """y[:n] = exp(x[:n] - shift) (y may be x); returns sum(y[:n]) in kernel_math.h's fixed
    order (tg_row_sum)."""
    cdef Py_ssize_t i
    if floating is float:
        return tg_exp_shifted_sum(x, y, n, shift)
    else:
        for i in range(n):
            y[i] = exp(x[i] - shift)
        return tg_row_sum_f64(y, NULL, n)


cdef inline floating row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    """max(x[:n]) for n >= 1, in LANES running maxima (a > b ? a : b compiles to maxss, no
    branch). A NaN in x may or may not come out; the softmax callers see it again through
    exp(x - max) either way."""
    cdef floating acc[LANES]
    cdef Py_ssize_t i = 0, j
    for j in range(LANES):
        acc[j] = x[0]
    while i + LANES <= n:
        for j in range(LANES):
            acc[j] = x[i + j] if x[i + j] > acc[j] else acc[j]
        i += LANES
    for j in range(n - i):
        acc[j] = x[i + j] if x[i + j] > acc[j] else acc[j]
    for j in range(1, LANES):
        acc[0] = acc[j] if acc[j] > acc[0] else acc[0]
    return acc[0]
