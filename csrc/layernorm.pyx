"""LayerNorm over the last axis: compiled twins of tinygpt.reference.layernorm_forward/backward.

Rows are independent, so the forward and dx run one prange work item per row (forward) or per
chunk of ROWS_PER_CHUNK rows (backward). dweight and dbias sum over all rows: each chunk writes
its partial sums to its own row of a (n_chunks, C) scratch array and the partials are added in
chunk order afterwards. The chunking does not depend on the thread count, so neither do the bits.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport out_arrays, float_arrays, check_ndim, check_shape, thread_count
from kernel_math cimport LANES, fsqrt, row_dot, row_sum

cdef enum:
    ROWS_PER_CHUNK = 64  # rows per backward work item, and per dweight/dbias partial sum


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


cdef inline floating dot3(const floating* x, const floating* y, const floating* z,
                          Py_ssize_t n) noexcept nogil:
    """sum((x * y) * z) over n, in the fixed lane order of kernel_math.row_dot."""
    cdef floating acc[LANES]
    cdef Py_ssize_t i = 0, j
    for j in range(LANES):
        acc[j] = 0
    while i + LANES <= n:
        for j in range(LANES):
            acc[j] += (x[i + j] * y[i + j]) * z[i + j]
        i += LANES
    for j in range(n - i):
        acc[j] += (x[i + j] * y[i + j]) * z[i + j]
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef void backward_rows(const floating* dout, const floating* x, const floating* w,
                        const floating* mean, const floating* rstd, Py_ssize_t rows,
                        Py_ssize_t C, floating* dx, floating* dw_part,
                        floating* db_part) noexcept nogil:
    """A chunk of rows: dout, x, dx (rows, C); mean, rstd (rows,); dw_part, db_part (C,)
    receive this chunk's sums of dout * xhat and dout."""
    cdef Py_ssize_t i, c
    cdef floating m, r, mean_g, mean_gx
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
            g[c] = (xi[c] - m) * r  # xhat, kept in dx until the last pass
            db_part[c] += dy[c]
            dw_part[c] += dy[c] * g[c]
        # with dxhat = dout * w: dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) * rstd
        mean_g = row_dot(dy, w, C) / C
        mean_gx = dot3(dy, w, g, C) / C
        for c in range(C):
            g[c] = (dy[c] * w[c] - mean_g - g[c] * mean_gx) * r


cdef void forward_impl(const floating[:, ::1] x, const floating[::1] w, const floating[::1] b,
                       double eps, floating[:, ::1] out, floating[::1] mean,
                       floating[::1] rstd, int n_threads) noexcept:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], i
    for i in prange(N, nogil=True, schedule='static', num_threads=n_threads):
        forward_row(&x[i, 0], &w[0], &b[0], <floating>eps, C, &out[i, 0], &mean[i], &rstd[i])


cdef void backward_impl(const floating[:, ::1] dout, const floating[:, ::1] x,
                        const floating[::1] w, const floating[::1] mean,
                        const floating[::1] rstd, floating[:, ::1] dx, floating[::1] dw,
                        floating[::1] db, floating[:, ::1] dw_parts, floating[:, ::1] db_parts,
                        int n_threads) noexcept:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], n_chunks = dw_parts.shape[0]
    cdef Py_ssize_t k, c, i0
    for k in prange(n_chunks, nogil=True, schedule='static', num_threads=n_threads):
        i0 = k * ROWS_PER_CHUNK
        backward_rows(&dout[i0, 0], &x[i0, 0], &w[0], &mean[i0], &rstd[i0],
                      min(<Py_ssize_t>ROWS_PER_CHUNK, N - i0), C, &dx[i0, 0],
                      &dw_parts[k, 0], &db_parts[k, 0])
    with nogil:
        for c in range(C):
            dw[c] = 0
            db[c] = 0
        for k in range(n_chunks):  # in chunk order: the same sums for any thread count
            for c in range(C):
                dw[c] += dw_parts[k, c]
                db[c] += db_parts[k, c]


def layernorm_forward(x, weight, bias, eps, n_threads, out=None):
    """x (N, C), weight (C,), bias (C,), eps (float) -> out (N, C), mean (N,), rstd (N,),
    written into ``out`` = (out, mean, rstd) when given."""
    cdef int nt = thread_count(n_threads)
    x, weight, bias = float_arrays(("x", "weight", "bias"), (x, weight, bias))
    check_ndim("x", x, 2, "(N, C)")
    N, C = x.shape
    if C == 0:
        raise ValueError("x must have at least one channel (C >= 1), got shape " + str(x.shape))
    check_shape("weight", weight, (C,), "(C,)")
    check_shape("bias", bias, (C,), "(C,)")
    eps = float(eps)
    out, mean, rstd = out_arrays(("out", "mean", "rstd"), out, ((N, C), (N,), (N,)), x.dtype)
    if N == 0:
        return out, mean, rstd
    if x.dtype == np.float32:
        forward_impl[float](x, weight, bias, eps, out, mean, rstd, nt)
    else:
        forward_impl[double](x, weight, bias, eps, out, mean, rstd, nt)
    return out, mean, rstd


def layernorm_backward(dout, x, weight, mean, rstd, n_threads, out=None):
    """dout (N, C), then forward's x (N, C), weight (C,), mean (N,), rstd (N,)
    -> dx (N, C), dweight (C,), dbias (C,), written into ``out`` = (dx, dweight, dbias) when
    given."""
    cdef int nt = thread_count(n_threads)
    dout, x, weight, mean, rstd = float_arrays(("dout", "x", "weight", "mean", "rstd"),
                                               (dout, x, weight, mean, rstd))
    check_ndim("x", x, 2, "(N, C)")
    N, C = x.shape
    if C == 0:
        raise ValueError("x must have at least one channel (C >= 1), got shape " + str(x.shape))
    check_shape("dout", dout, (N, C), "(N, C)")
    check_shape("weight", weight, (C,), "(C,)")
    check_shape("mean", mean, (N,), "(N,)")
    check_shape("rstd", rstd, (N,), "(N,)")
    dx, dweight, dbias = out_arrays(("dx", "dweight", "dbias"), out, ((N, C), (C,), (C,)),
                                    x.dtype)
    if N == 0:
        dweight[...] = 0
        dbias[...] = 0
        return dx, dweight, dbias
    n_chunks = (N + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    dw_parts = np.empty((n_chunks, C), x.dtype)
    db_parts = np.empty((n_chunks, C), x.dtype)
    if x.dtype == np.float32:
        backward_impl[float](dout, x, weight, mean, rstd, dx, dweight, dbias, dw_parts,
                             db_parts, nt)
    else:
        backward_impl[double](dout, x, weight, mean, rstd, dx, dweight, dbias, dw_parts,
                              db_parts, nt)
    return dx, dweight, dbias
