"""GELU, tanh form, elementwise: compiled twins of tinygpt.reference.gelu_forward/gelu_backward.

gelu(x) = 0.5 * x * (1 + tanh(u)), u = c * (x + 0.044715 * x^3), c = sqrt(2/pi).
The array is treated as flat and cut into fixed spans of SPAN elements, one prange work item
each (elementwise, so any thread count gives the same bits).

float64 follows the reference formula with libm tanh. float32, the training dtype, has its
span loops in C, in gelu.h (to carry kernel_math.h's TG_DISPATCH: AVX2+FMA where the CPU has
it), and writes the same function through e = exp(-2|u|), which is branch-free (so the loops
vectorize) and avoids the cancellation in 1 + tanh(u) and 1 - tanh(u)^2 near tanh = -1 and +1:
    for u >= 0: 1 + t = 2 / (1 + e),  1 - t = 2e / (1 + e)   (swapped for u < 0)
    1 - t^2 = (1 + t)(1 - t)
It is more accurate than NumPy's float32 reference (see tests/test_kernels.py).
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport tanh

from kernel_checks cimport out_arrays, float_arrays, check_shape, thread_count

cdef enum:
    SPAN = 4096  # elements per parallel work item

cdef double GELU_C = 0.7978845608028654  # sqrt(2 / pi)
cdef double GELU_A = 0.044715


cdef extern from "gelu.h":
    void tg_gelu_forward_f32(const float* x, float* out, Py_ssize_t n) noexcept nogil
    void tg_gelu_backward_f32(const float* dout, const float* x, float* dx,
                              Py_ssize_t n) noexcept nogil


cdef void gelu_forward_span(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    """out[:n] = gelu(x[:n]): the C loop for float32, the reference formula for float64."""
    cdef Py_ssize_t i
    cdef double c = GELU_C, a = GELU_A
    if floating is float:
        tg_gelu_forward_f32(x, out, n)
    else:
        for i in range(n):
            out[i] = 0.5 * x[i] * (1 + tanh(c * (x[i] + a * (x[i] * x[i] * x[i]))))


cdef void gelu_backward_span(const floating* dout, const floating* x, floating* dx,
                             Py_ssize_t n) noexcept nogil:
    """dx[:n] = dout[:n] * gelu'(x[:n]): the C loop for float32, the reference formula for
    float64."""
    cdef Py_ssize_t i
    cdef double c = GELU_C, a = GELU_A, xi, t, dtanh
    if floating is float:
        tg_gelu_backward_f32(dout, x, dx, n)
    else:
        for i in range(n):
            xi = x[i]
            t = tanh(c * (xi + a * (xi * xi * xi)))
            dtanh = c * (1 + 3 * a * xi * xi)
            dx[i] = dout[i] * (0.5 * (1 + t) + 0.5 * xi * (1 - t * t) * dtanh)


cdef void gelu_forward_impl(const floating[::1] x, floating[::1] out, int n_threads) noexcept:
    cdef Py_ssize_t n = x.shape[0], start, span
    cdef Py_ssize_t n_spans = (n + SPAN - 1) // SPAN
    for span in prange(n_spans, nogil=True, schedule='static', num_threads=n_threads):
        start = span * SPAN
        gelu_forward_span(&x[start], &out[start], min(<Py_ssize_t>SPAN, n - start))


cdef void gelu_backward_impl(const floating[::1] dout, const floating[::1] x, floating[::1] dx,
                             int n_threads) noexcept:
    cdef Py_ssize_t n = x.shape[0], start, span
    cdef Py_ssize_t n_spans = (n + SPAN - 1) // SPAN
    for span in prange(n_spans, nogil=True, schedule='static', num_threads=n_threads):
        start = span * SPAN
        gelu_backward_span(&dout[start], &x[start], &dx[start], min(<Py_ssize_t>SPAN, n - start))


def gelu_forward(x, n_threads, out=None):
    """x (any shape), float32 or float64 -> out (same shape and dtype), written into ``out``
    when given."""
    cdef int nt = thread_count(n_threads)
    (x,) = float_arrays(("x",), (x,))
    (out,) = out_arrays(("out",), out, (x.shape,), x.dtype)
    if x.size == 0:
        return out
    if x.dtype == np.float32:
        gelu_forward_impl[float](x.reshape(-1), out.reshape(-1), nt)
    else:
        gelu_forward_impl[double](x.reshape(-1), out.reshape(-1), nt)
    return out


def gelu_backward(dout, x, n_threads, out=None):
    """dout (any shape), then forward's x (same shape) -> dx (same shape), written into ``out``
    when given."""
    cdef int nt = thread_count(n_threads)
    dout, x = float_arrays(("dout", "x"), (dout, x))
    check_shape("dout", dout, x.shape, "x.shape")
    (dx,) = out_arrays(("dx",), out, (x.shape,), x.dtype)
    if x.size == 0:
        return dx
    if x.dtype == np.float32:
        gelu_backward_impl[float](dout.reshape(-1), x.reshape(-1), dx.reshape(-1), nt)
    else:
        gelu_backward_impl[double](dout.reshape(-1), x.reshape(-1), dx.reshape(-1), nt)
    return dx
