"""Fused softmax + cross-entropy: compiled twin of tinygpt.reference.softmax_cross_entropy.

One pass per row: row max, exp(logits - max) written straight into dlogits, their sum, the
row's loss, then dlogits scaled in place to (softmax - onehot) / n_valid. The rows are C, in
cross_entropy.h; each thread takes an equal share of them. Row losses go to a per-row array
that NumPy sums afterwards (float64, one fixed order), so the mean loss has the same bits for
any thread count.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport require, thread_count
from kernel_math cimport LANES
from libc.stdint cimport int64_t

_BLOCKS = {"lanes": LANES}  # the reductions' partial sums, for the tests' boundary cases


cdef extern from "cross_entropy.h":
    void tg_softmax_xent_rows_f32(const float* logits, const int64_t* targets, Py_ssize_t r0,
                                  Py_ssize_t r1, Py_ssize_t V, float inv_n, float* dlogits,
                                  float* loss) noexcept nogil
    void tg_softmax_xent_rows_f64(const double* logits, const int64_t* targets, Py_ssize_t r0,
                                  Py_ssize_t r1, Py_ssize_t V, double inv_n, double* dlogits,
                                  double* loss) noexcept nogil


cdef void softmax_xent_rows(const floating* logits, const int64_t* targets, Py_ssize_t r0,
                            Py_ssize_t r1, Py_ssize_t V, floating inv_n, floating* dlogits,
                            floating* loss) noexcept nogil:
    if floating is float:
        tg_softmax_xent_rows_f32(logits, targets, r0, r1, V, inv_n, dlogits, loss)
    else:
        tg_softmax_xent_rows_f64(logits, targets, r0, r1, V, inv_n, dlogits, loss)


def softmax_cross_entropy(const floating[:, ::1] logits not None,
                          const int64_t[::1] targets not None,
                          floating[:, ::1] dlogits not None, int n_threads):
    """logits (N, V), targets (N,) in [-1, V), -1 = ignore -> the mean loss over the rows not
    ignored (a Python float); dlogits (N, V) receives its gradient."""
    cdef Py_ssize_t N = logits.shape[0], V = logits.shape[1], i, n_valid = 0, n_outside = 0
    require(targets.shape[0] == N and dlogits.shape[0] == N and dlogits.shape[1] == V,
            "logits, dlogits (N, V), targets (N,)")
    for i in range(N):
        n_outside += targets[i] < -1 or targets[i] >= V
        n_valid += targets[i] >= 0
    require(n_outside == 0, "targets outside [-1, V)")
    row_loss = np.empty(N, np.float32 if floating is float else np.float64)
    cdef floating[::1] losses = row_loss
    cdef floating inv_n = <floating>(1.0 / n_valid) if n_valid else 0
    cdef int nt = thread_count(n_threads), t
    for t in prange(nt if N else 0, nogil=True, schedule='static', num_threads=nt):
        softmax_xent_rows(&logits[0, 0], &targets[0], t * N // nt, (t + 1) * N // nt, V, inv_n,
                          &dlogits[0, 0], &losses[0])
    return float(row_loss.sum(dtype=np.float64) / n_valid)
