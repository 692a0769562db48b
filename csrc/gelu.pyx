"""GELU, tanh form, elementwise: compiled twins of tinygpt.reference.gelu_forward/gelu_backward.

gelu(x) = 0.5 * x * (1 + tanh(u)), u = c * (x + 0.044715 * x^3), c = sqrt(2/pi).
The array is treated as flat and cut into fixed spans of SPAN elements, one prange work item
each (elementwise, so any thread count gives the same bits).

float64 follows the reference formula with libm tanh. float32, the training dtype, has its
span loops in C, in gelu.h (to carry kernel_math.h's TG_DISPATCH: AVX-512 or AVX2+FMA where
the CPU has it), and writes the same function without tanh, branch-free (so the loops
vectorize) and free of the cancellation in 1 + tanh(u) and 1 - tanh(u)^2 near tanh = -1 and +1:
with e = exp(-2|u|) <= 1,
    for u >= 0: 1 + t = 2 / (1 + e),  1 - t = 2e / (1 + e)   (swapped for u < 0)
    1 - t^2 = (1 + t)(1 - t)
    forward:  gelu(x) = x * 0.5 (1 + t)   (e = 0 for u below -44 gives -0, as the reference does)
    backward: gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)
One function computes both from one exp (gelu.h's tg_gelu_value_slope): the MLP's linear layer
keeps gelu'(x) from its forward, so that its backward only multiplies (linear.h), and this
module's forward and backward take their halves, so both paths give the same bits.
Both are more accurate than NumPy's float32 reference (see tests/test_kernels.py).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport tanh

from kernel_checks cimport require, thread_count

cdef enum:
    SPAN = 4096  # elements per parallel work item

_BLOCKS = {"span": SPAN}  # the work split, for the tests' boundary cases

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


def gelu_forward(const floating[::1] x not None, floating[::1] out not None, int n_threads):
    """out (n,) = gelu(x (n,)), for the flattened array."""
    require(out.shape[0] == x.shape[0], "x, out")
    cdef Py_ssize_t n = x.shape[0], start, span
    cdef int nt = thread_count(n_threads)
    for span in prange((n + SPAN - 1) // SPAN, nogil=True, schedule='static', num_threads=nt):
        start = span * SPAN
        gelu_forward_span(&x[start], &out[start], min(<Py_ssize_t>SPAN, n - start))


def gelu_backward(const floating[::1] dout not None, const floating[::1] x not None,
                  floating[::1] dx not None, int n_threads):
    """dx (n,) = dout (n,) * gelu'(x (n,)), for the flattened arrays."""
    require(dout.shape[0] == x.shape[0] and dx.shape[0] == x.shape[0], "dout, x, dx")
    cdef Py_ssize_t n = x.shape[0], start, span
    cdef int nt = thread_count(n_threads)
    for span in prange((n + SPAN - 1) // SPAN, nogil=True, schedule='static', num_threads=nt):
        start = span * SPAN
        gelu_backward_span(&dout[start], &x[start], &dx[start], min(<Py_ssize_t>SPAN, n - start))
