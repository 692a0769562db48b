"""Fused softmax + cross-entropy: compiled twin of tinygpt.reference.softmax_cross_entropy.

One pass per row (one prange work item each): row max, exp(logits - max) written straight into
dlogits, their sum, the row's loss, then dlogits scaled in place to (softmax - onehot) / n_valid.
Row losses go to a per-row array that NumPy sums afterwards (float64, one fixed order), so the
mean loss has the same bits for any thread count.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport out_arrays, float_arrays, check_ndim, thread_count
from kernel_math cimport exp_shifted_sum, flog, row_max


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


cdef void xent_impl(const floating[:, ::1] logits, const long long[::1] targets,
                    double inv_n, floating[:, ::1] dlogits, floating[::1] row_loss,
                    int n_threads) noexcept:
    cdef Py_ssize_t N = logits.shape[0], V = logits.shape[1], i
    for i in prange(N, nogil=True, schedule='static', num_threads=n_threads):
        row_loss[i] = softmax_xent_row(&logits[i, 0], V, <Py_ssize_t>targets[i],
                                       <floating>inv_n, &dlogits[i, 0])


def softmax_cross_entropy(logits, targets, n_threads, out=None):
    """logits (N, V) float32/float64, targets (N,) integers in [-1, V), -1 = ignore
    -> (mean loss over the rows not ignored as a Python float, dlogits (N, V)); dlogits is
    written into ``out`` when given."""
    cdef int nt = thread_count(n_threads)
    (logits,) = float_arrays(("logits",), (logits,))
    check_ndim("logits", logits, 2, "(N, V)")
    N, V = logits.shape
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets must be an integer array, got dtype {targets.dtype}")
    if targets.shape != (N,):
        raise ValueError(f"targets must have shape (N,) = {(N,)}, got {targets.shape}")
    bad = np.flatnonzero((targets < -1) | (targets >= V))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"targets[{i}] = {targets[i]} is out of range: targets must be in "
                         f"[-1, V) = [-1, {V}), with -1 meaning ignore")
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    n_valid = int(np.count_nonzero(targets >= 0))
    if n_valid == 0:
        raise ValueError("every target is -1 (ignored): the mean loss is undefined")
    (dlogits,) = out_arrays(("dlogits",), out, ((N, V),), logits.dtype)
    row_loss = np.empty(N, logits.dtype)
    if logits.dtype == np.float32:
        xent_impl[float](logits, targets, 1.0 / n_valid, dlogits, row_loss, nt)
    else:
        xent_impl[double](logits, targets, 1.0 / n_valid, dlogits, row_loss, nt)
    return float(row_loss.sum(dtype=np.float64) / n_valid), dlogits
