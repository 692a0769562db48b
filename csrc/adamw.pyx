"""One AdamW step, in place: compiled twin of tinygpt.reference.adamw_update.

    m = m b1 + (1 - b1) g;  v = v b2 + g^2 (1 - b2);  p = p - (decay p) lr;
    p = p - m / (sqrt(v) + eps_hat) * step

with the scalars (b1, 1 - b1, b2, 1 - b2, lr, eps_hat, step) in the arrays' type. One pass over
the arrays, where NumPy makes fifteen. The arrays are cut into fixed spans of SPAN elements, one
prange work item each; the span's loop is in C, in adamw.h, and gives the reference's bits on
any thread count and from every SIMD clone (see there).
"""
from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport require, thread_count

cdef enum:
    SPAN = 4096  # elements per parallel work item

_BLOCKS = {"span": SPAN}  # the work split, for the tests' boundary cases


cdef extern from "adamw.h":
    void tg_adamw_span_f32(float* p, const float* g, float* m, float* v, const float* decay,
                           Py_ssize_t n, float b1, float one_b1, float b2, float one_b2,
                           float lr, float eps_hat, float step) noexcept nogil
    void tg_adamw_span_f64(double* p, const double* g, double* m, double* v,
                           const double* decay, Py_ssize_t n, double b1, double one_b1,
                           double b2, double one_b2, double lr, double eps_hat,
                           double step) noexcept nogil


cdef void adamw_span(floating* p, const floating* g, floating* m, floating* v,
                     const floating* decay, Py_ssize_t n, floating b1, floating one_b1,
                     floating b2, floating one_b2, floating lr, floating eps_hat,
                     floating step) noexcept nogil:
    if floating is float:
        tg_adamw_span_f32(p, g, m, v, decay, n, b1, one_b1, b2, one_b2, lr, eps_hat, step)
    else:
        tg_adamw_span_f64(p, g, m, v, decay, n, b1, one_b1, b2, one_b2, lr, eps_hat, step)


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
