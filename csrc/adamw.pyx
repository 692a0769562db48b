"""One AdamW step, in place: compiled twin of tinygpt.reference.adamw_update.

    m = m b1 + (1 - b1) g;  v = v b2 + g^2 (1 - b2);  p = p - (decay p) lr;
    p = p - m / (sqrt(v) + eps_hat) * step

with the scalars (b1, 1 - b1, b2, 1 - b2, lr, eps_hat, step) in the arrays' type. One pass over
the arrays, where NumPy makes fifteen. The arrays are cut into fixed spans of SPAN elements, one
prange work item each. Every operation is rounded once, in the reference's order: this module
compiles with -ffp-contract=off (setup.py), so that no product and sum fuse into one
multiply-add, and the kernel gives the reference's bits on any thread count.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf

from kernel_checks cimport require, thread_count

cdef enum:
    SPAN = 4096  # elements per parallel work item

_BLOCKS = {"span": SPAN}  # the work split, for the tests' boundary cases


cdef void adamw_span(floating* p, const floating* g, floating* m, floating* v,
                     const floating* decay, Py_ssize_t n, floating b1, floating one_b1,
                     floating b2, floating one_b2, floating lr, floating eps_hat,
                     floating step) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating mi, vi, pi, root
    for i in range(n):
        mi = m[i] * b1 + one_b1 * g[i]
        vi = v[i] * b2 + g[i] * g[i] * one_b2
        pi = p[i] - decay[i] * p[i] * lr
        root = sqrtf(vi) if floating is float else sqrt(vi)
        m[i] = mi
        v[i] = vi
        p[i] = pi - mi / (root + eps_hat) * step


def adamw_update(floating[::1] params not None, const floating[::1] grads not None,
                 floating[::1] m not None, floating[::1] v not None,
                 const floating[::1] decay not None, double b1, double one_b1, double b2,
                 double one_b2, double lr, double eps_hat, double step, int n_threads):
    """params, m, v (n,) updated in place from grads and decay (n,); the scalars as above."""
    cdef Py_ssize_t n = params.shape[0], start, span
    require(grads.shape[0] == n and m.shape[0] == n and v.shape[0] == n
            and decay.shape[0] == n, "params, grads, m, v, decay")
    cdef int nt = thread_count(n_threads)
    for span in prange((n + SPAN - 1) // SPAN, nogil=True, schedule='static', num_threads=nt):
        start = span * SPAN
        adamw_span(&params[start], &grads[start], &m[start], &v[start], &decay[start],
                   min(<Py_ssize_t>SPAN, n - start), <floating>b1, <floating>one_b1,
                   <floating>b2, <floating>one_b2, <floating>lr, <floating>eps_hat,
                   <floating>step)
