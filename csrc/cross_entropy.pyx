"""Fused softmax + cross-entropy: compiled twin of tinygpt.reference.softmax_cross_entropy.

One pass per row (one prange work item each): row max, exp(logits - max) written straight into
dlogits, their sum, the row's loss, then dlogits scaled in place to (softmax - onehot) / n_valid.
Row losses go to a per-row array that NumPy sums afterwards (float64, one fixed order), so the
mean loss has the same bits for any thread count.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport require, thread_count
from kernel_math cimport LANES, exp_shifted_sum, flog, row_max

_BLOCKS = {"lanes": LANES}  # the reductions' partial sums, for the tests' boundary cases


cdef floating softmax_xent_row(const floating* z, Py_ssize_t V, Py_ssize_t target,
                               floating inv_n, floating* g) noexcept nogil:
    """One row: logits z (V,), target in [-1, V) -> the row's loss; g (V,) receives dlogits.
    An ignored row (target -1) has loss 0 and zero gradient."""
    cdef Py_ssize_t j
    if target < 0:
        for j in range(V):
            g[j] = 0
        return 0
    cdef floating m = row_max(z, V)
    cdef floating s = exp_shifted_sum(z, g, V, m)  # g = exp(z - m), s = sum(g)
    cdef floating e_target = g[target]
    cdef floating scale = inv_n / s
    for j in range(V):
        g[j] = g[j] * scale
    g[target] = (e_target / s - 1) * inv_n
    return (m + flog(s)) - z[target]


def softmax_cross_entropy(const floating[:, ::1] logits not None,
                          const long long[::1] targets not None,
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
    cdef int nt = thread_count(n_threads)
    for i in prange(N, nogil=True, schedule='static', num_threads=nt):
        losses[i] = softmax_xent_row(&logits[i, 0], V, <Py_ssize_t>targets[i], inv_n,
                                     &dlogits[i, 0])
    return float(row_loss.sum(dtype=np.float64) / n_valid)
