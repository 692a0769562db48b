"""LayerNorm over the last axis: compiled twins of tinygpt.reference.layernorm_forward/backward.

Rows are independent, so the forward and dx run one prange work item per row (forward) or per
chunk of ROWS_PER_CHUNK rows (backward). dweight and dbias sum over all rows: each chunk writes
its partial sums to its own row of a (n_chunks, C) scratch array and the partials are added in
chunk order afterwards. The chunking does not depend on the thread count, so neither do the bits.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport require, thread_count
from kernel_math cimport LANES, fsqrt, row_dot, row_sum

cdef enum:
    ROWS_PER_CHUNK = 64  # rows per backward work item, and per dweight/dbias partial sum

# the work split and the reductions' partial sums, for the tests' boundary cases
_BLOCKS = {"rows_per_chunk": ROWS_PER_CHUNK, "lanes": LANES}


cdef void forward_row(const floating* x, const floating* w, const floating* b, floating eps,
                      Py_ssize_t C, floating* out, floating* mean, floating* rstd) noexcept nogil:
    """One row: x, w, b, out (C,); writes out, mean[0] and rstd[0]."""
    cdef Py_ssize_t c
    cdef floating m = row_sum(x, C) / C
    for c in range(C):
        out[c] = x[c] - m  # the centered row, kept in out until the last pass
    cdef floating r = 1 / fsqrt(row_dot(out, out, C) / C + eps)
    for c in range(C):
        out[c] = out[c] * r * w[c] + b[c]
    mean[0] = m
    rstd[0] = r


cdef inline floating dot_xhat(const floating* dy, const floating* w, const floating* x,
                              floating m, floating r, Py_ssize_t n) noexcept nogil:
    """sum((dy * w) * xhat) over n, xhat = (x - m) * r, in the fixed lane order of
    kernel_math.row_dot."""
    cdef floating acc[LANES]
    cdef Py_ssize_t i = 0, j
    for j in range(LANES):
        acc[j] = 0
    while i + LANES <= n:
        for j in range(LANES):
            acc[j] += (dy[i + j] * w[i + j]) * ((x[i + j] - m) * r)
        i += LANES
    for j in range(n - i):
        acc[j] += (dy[i + j] * w[i + j]) * ((x[i + j] - m) * r)
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef void backward_rows(const floating* dout, const floating* x, const floating* w,
                        const floating* mean, const floating* rstd, const floating* residual,
                        Py_ssize_t rows, Py_ssize_t C, floating* dx, floating* dw_part,
                        floating* db_part) noexcept nogil:
    """A chunk of rows: dout, x, dx and residual (or NULL) (rows, C); mean, rstd (rows,);
    dw_part, db_part (C,) receive this chunk's sums of dout * xhat and dout. xhat is computed
    where it is used, never stored, so that dx may be residual itself."""
    cdef Py_ssize_t i, c
    cdef floating m, r, mean_g, mean_gx, xhat, value
    cdef const floating* dy
    cdef const floating* xi
    cdef floating* g
    for c in range(C):
        dw_part[c] = 0
        db_part[c] = 0
    for i in range(rows):
        dy = dout + i * C
        xi = x + i * C
        g = dx + i * C
        m = mean[i]
        r = rstd[i]
        for c in range(C):
            db_part[c] += dy[c]
            dw_part[c] += dy[c] * ((xi[c] - m) * r)
        # with dxhat = dout * w: dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) * rstd
        mean_g = row_dot(dy, w, C) / C
        mean_gx = dot_xhat(dy, w, xi, m, r, C) / C
        for c in range(C):
            xhat = (xi[c] - m) * r
            value = (dy[c] * w[c] - mean_g - xhat * mean_gx) * r
            g[c] = value if residual == NULL else residual[i * C + c] + value


def layernorm_forward(const floating[:, ::1] x not None, const floating[::1] weight not None,
                      const floating[::1] bias not None, double eps, floating[:, ::1] out not None,
                      floating[::1] mean not None, floating[::1] rstd not None, int n_threads):
    """x (N, C), weight (C,), bias (C,) -> out (N, C), mean (N,), rstd (N,)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], i
    require(weight.shape[0] == C and bias.shape[0] == C and out.shape[0] == N
            and out.shape[1] == C and mean.shape[0] == N and rstd.shape[0] == N,
            "x (N, C), weight, bias (C,), out (N, C), mean, rstd (N,)")
    cdef int nt = thread_count(n_threads)
    for i in prange(N, nogil=True, schedule='static', num_threads=nt):
        forward_row(&x[i, 0], &weight[0], &bias[0], <floating>eps, C, &out[i, 0], &mean[i],
                    &rstd[i])


def layernorm_backward(const floating[:, ::1] dout not None, const floating[:, ::1] x not None,
                       const floating[::1] weight not None, const floating[::1] mean not None,
                       const floating[::1] rstd not None, const floating[:, ::1] residual,
                       floating[:, ::1] dx not None, floating[::1] dweight not None,
                       floating[::1] dbias not None, int n_threads):
    """dout (N, C), then forward's x (N, C), weight (C,), mean (N,), rstd (N,), and residual
    (N, C) or None -> dx (N, C) = residual + the gradient through the norm, dweight (C,),
    dbias (C,). dx may be residual itself: each entry is read before it is written."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], k, c, i0
    require(dout.shape[0] == N and dout.shape[1] == C and weight.shape[0] == C
            and mean.shape[0] == N and rstd.shape[0] == N and dx.shape[0] == N
            and dx.shape[1] == C and dweight.shape[0] == C and dbias.shape[0] == C
            and (residual is None or (residual.shape[0] == N and residual.shape[1] == C)),
            "dout, x, residual, dx (N, C), weight, dweight, dbias (C,), mean, rstd (N,)")
    cdef int nt = thread_count(n_threads)
    cdef Py_ssize_t n_chunks = (N + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] dw_parts, db_parts  # per-chunk partial sums (n_chunks, C)
    dw_parts, db_parts = np.empty((2, n_chunks, C), dtype)
    cdef const floating* res = NULL
    if residual is not None and N > 0:
        res = &residual[0, 0]
    for k in prange(n_chunks, nogil=True, schedule='static', num_threads=nt):
        i0 = k * ROWS_PER_CHUNK
        backward_rows(&dout[i0, 0], &x[i0, 0], &weight[0], &mean[i0], &rstd[i0],
                      res + i0 * C if res != NULL else NULL,
                      min(<Py_ssize_t>ROWS_PER_CHUNK, N - i0), C, &dx[i0, 0],
                      &dw_parts[k, 0], &db_parts[k, 0])
    with nogil:
        for c in range(C):
            dweight[c] = 0
            dbias[c] = 0
        for k in range(n_chunks):  # in chunk order: the same sums for any thread count
            for c in range(C):
                dweight[c] += dw_parts[k, c]
                dbias[c] += db_parts[k, c]
