"""Squared ReLU, elementwise: compiled twins of tinygpt.reference.relu2_forward/relu2_backward.

relu2(x) = max(x, 0)^2, relu2'(x) = 2 max(x, 0). The array is treated as flat and cut into
fixed spans of SPAN elements, one prange work item each (elementwise, so any thread count gives
the same bits, and the same bits as the reference: products of exact values in its order).
"""
from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport require, thread_count

cdef enum:
    SPAN = 4096  # elements per parallel work item

_BLOCKS = {"span": SPAN}  # the work split, for the tests' boundary cases


cdef void relu2_forward_span(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating r
    for i in range(n):
        r = 0 if x[i] <= 0 else x[i]  # a NaN goes through, as in np.maximum
        out[i] = r * r


cdef void relu2_backward_span(const floating* dout, const floating* x, floating* dx,
                              Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating r
    for i in range(n):
        r = 0 if x[i] <= 0 else x[i]  # a NaN goes through, as in np.maximum
        dx[i] = 2 * r * dout[i]


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
