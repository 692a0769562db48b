"""Squared ReLU, elementwise: compiled twins of tinygpt.reference.relu2_forward/relu2_backward.

relu2(x) = max(x, 0)^2, relu2'(x) = 2 max(x, 0). The array is treated as flat and cut into
fixed spans of SPAN elements, one prange work item each (elementwise, so any thread count gives
the same bits, and the same bits as the reference: products of exact values in its order). The
span loops are in C, in relu2.h, branch-free so that they vectorize.
"""
from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport require, thread_count

cdef enum:
    SPAN = 4096  # elements per parallel work item

_BLOCKS = {"span": SPAN}  # the work split, for the tests' boundary cases


cdef extern from "relu2.h":
    void tg_relu2_forward_f32(const float* x, float* out, Py_ssize_t n) noexcept nogil
    void tg_relu2_forward_f64(const double* x, double* out, Py_ssize_t n) noexcept nogil
    void tg_relu2_backward_f32(const float* dout, const float* x, float* dx,
                               Py_ssize_t n) noexcept nogil
    void tg_relu2_backward_f64(const double* dout, const double* x, double* dx,
                               Py_ssize_t n) noexcept nogil


cdef void relu2_forward_span(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    if floating is float:
        tg_relu2_forward_f32(x, out, n)
    else:
        tg_relu2_forward_f64(x, out, n)


cdef void relu2_backward_span(const floating* dout, const floating* x, floating* dx,
                              Py_ssize_t n) noexcept nogil:
    if floating is float:
        tg_relu2_backward_f32(dout, x, dx, n)
    else:
        tg_relu2_backward_f64(dout, x, dx, n)


def relu2_forward(const floating[::1] x not None, floating[::1] out not None, int n_threads):
    """out (n,) = max(x (n,), 0)^2, for the flattened array."""
    require(out.shape[0] == x.shape[0], "x, out")
    cdef Py_ssize_t n = x.shape[0], start, span
    cdef int nt = thread_count(n_threads)
    for span in prange((n + SPAN - 1) // SPAN, nogil=True, schedule='static', num_threads=nt):
        start = span * SPAN
        relu2_forward_span(&x[start], &out[start], min(<Py_ssize_t>SPAN, n - start))


def relu2_backward(const floating[::1] dout not None, const floating[::1] x not None,
                   floating[::1] dx not None, int n_threads):
    """dx (n,) = dout (n,) * 2 max(x (n,), 0), for the flattened arrays."""
    require(dout.shape[0] == x.shape[0] and dx.shape[0] == x.shape[0], "dout, x, dx")
    cdef Py_ssize_t n = x.shape[0], start, span
    cdef int nt = thread_count(n_threads)
    for span in prange((n + SPAN - 1) // SPAN, nogil=True, schedule='static', num_threads=nt):
        start = span * SPAN
        relu2_backward_span(&dout[start], &x[start], &dx[start], min(<Py_ssize_t>SPAN, n - start))
