"""LayerNorm over the last axis: compiled twins of tinygpt.reference.layernorm_forward/backward.

The rows' arithmetic is C, in layernorm.h (dispatched to AVX-512 or AVX2 + FMA where the CPU has
them). Rows are independent, so the forward and dx run one prange work item per chunk of
ROWS_PER_CHUNK rows. dweight and dbias sum over all rows: each chunk writes its partial sums to
its own row of a (n_chunks, C) scratch array and the partials are added in chunk order
afterwards. The chunking does not depend on the thread count, so neither do the bits.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport require, thread_count
from kernel_math cimport LANES

cdef extern from "layernorm.h":
    void tg_layernorm_forward_rows_f32(const float* x, const float* w, const float* b, float eps,
                                       Py_ssize_t rows, Py_ssize_t C, float* out, float* mean,
                                       float* rstd) noexcept nogil
    void tg_layernorm_forward_rows_f64(const double* x, const double* w, const double* b,
                                       double eps, Py_ssize_t rows, Py_ssize_t C, double* out,
                                       double* mean, double* rstd) noexcept nogil
    void tg_layernorm_backward_rows_f32(const float* dout, const float* x, const float* w,
                                        const float* mean, const float* rstd,
                                        const float* residual, Py_ssize_t rows, Py_ssize_t C,
                                        float* dx, float* dw_part, float* db_part) noexcept nogil
    void tg_layernorm_backward_rows_f64(const double* dout, const double* x, const double* w,
                                        const double* mean, const double* rstd,
                                        const double* residual, Py_ssize_t rows, Py_ssize_t C,
                                        double* dx, double* dw_part,
                                        double* db_part) noexcept nogil

cdef enum:
    ROWS_PER_CHUNK = 64  # rows per work item, and per dweight/dbias partial sum

# the work split and the reductions' partial sums, for the tests' boundary cases
_BLOCKS = {"rows_per_chunk": ROWS_PER_CHUNK, "lanes": LANES}


cdef inline void forward_rows(const floating* x, const floating* w, const floating* b,
                              floating eps, Py_ssize_t rows, Py_ssize_t C, floating* out,
                              floating* mean, floating* rstd) noexcept nogil:
    if floating is float:
        tg_layernorm_forward_rows_f32(x, w, b, eps, rows, C, out, mean, rstd)
    else:
        tg_layernorm_forward_rows_f64(x, w, b, eps, rows, C, out, mean, rstd)


cdef inline void backward_rows(const floating* dout, const floating* x, const floating* w,
                               const floating* mean, const floating* rstd,
                               const floating* residual, Py_ssize_t rows, Py_ssize_t C,
                               floating* dx, floating* dw_part, floating* db_part) noexcept nogil:
    if floating is float:
        tg_layernorm_backward_rows_f32(dout, x, w, mean, rstd, residual, rows, C, dx, dw_part,
                                       db_part)
    else:
        tg_layernorm_backward_rows_f64(dout, x, w, mean, rstd, residual, rows, C, dx, dw_part,
                                       db_part)


def layernorm_forward(const floating[:, ::1] x not None, const floating[::1] weight not None,
                      const floating[::1] bias not None, double eps, floating[:, ::1] out not None,
                      floating[::1] mean not None, floating[::1] rstd not None, int n_threads):
    """x (N, C), weight (C,), bias (C,) -> out (N, C), mean (N,), rstd (N,)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], k, i0
    require(weight.shape[0] == C and bias.shape[0] == C and out.shape[0] == N
            and out.shape[1] == C and mean.shape[0] == N and rstd.shape[0] == N,
            "x (N, C), weight, bias (C,), out (N, C), mean, rstd (N,)")
    cdef int nt = thread_count(n_threads)
    cdef Py_ssize_t n_chunks = (N + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for k in prange(n_chunks, nogil=True, schedule='static', num_threads=nt):
        i0 = k * ROWS_PER_CHUNK
        forward_rows(&x[i0, 0], &weight[0], &bias[0], <floating>eps,
                     min(<Py_ssize_t>ROWS_PER_CHUNK, N - i0), C, &out[i0, 0], &mean[i0],
                     &rstd[i0])


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
