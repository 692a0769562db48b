"""Linear layers: compiled twins of tinygpt.reference.linear_forward/backward.

    forward:  out (N, M) = residual + x (N, K) @ weight (K, M) + bias
    backward: dx = dout @ weight^T, dweight = x^T @ dout, dbias = dout summed over rows

BLAS does the products, one single-threaded call per block of work, and OpenMP shares the
blocks out. The blocks depend on the shapes alone, so the bits are the same on any number of
threads; OpenBLAS's own threading gives results that change with its thread count.
Forward and dx split the rows into ROW_BLOCK-row blocks; dweight and dbias split the columns
into COL_BLOCK-column blocks, each summed over every row by one call, so no partial sums are
needed to keep the order fixed.
"""
import numpy as np

from tinygpt.blas_threads import one_blas_thread

from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport dgemm, sgemm

from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport float_arrays, check_ndim, check_shape, out_arrays, thread_count

cdef enum:
    ROW_BLOCK = 256  # rows per forward / dx work item
    COL_BLOCK = 256  # columns per dweight / dbias work item (each one repacks all of x)


cdef inline void gemm(char* transa, char* transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                      floating beta, floating* c, Py_ssize_t ldc) noexcept nogil:
    """Column-major BLAS gemm, c (m, n) = op(a) @ op(b) + beta * c, in either precision."""
    cdef int m_ = <int>m, n_ = <int>n, k_ = <int>k
    cdef int lda_ = <int>lda, ldb_ = <int>ldb, ldc_ = <int>ldc
    cdef floating one = 1
    if floating is float:
        sgemm(transa, transb, &m_, &n_, &k_, &one, <float*>a, &lda_, <float*>b, &ldb_, &beta,
              c, &ldc_)
    else:
        dgemm(transa, transb, &m_, &n_, &k_, &one, <double*>a, &lda_, <double*>b, &ldb_, &beta,
              c, &ldc_)


cdef void forward_block(const floating* x, const floating* w, const floating* bias,
                        const floating* residual, Py_ssize_t rows, Py_ssize_t K, Py_ssize_t M,
                        floating* out) noexcept nogil:
    """rows of out (rows, M) = residual + x (rows, K) @ w (K, M) + bias; either may be NULL."""
    cdef Py_ssize_t i, j
    cdef floating beta = 0
    if residual != NULL:
        memcpy(out, residual, rows * M * sizeof(floating))
        beta = 1
    if bias != NULL:
        for i in range(rows):
            for j in range(M):
                out[i * M + j] = out[i * M + j] + bias[j] if beta else bias[j]
        beta = 1
    # row-major out = x @ w is column-major out^T = w^T @ x^T: no transposes needed
    gemm("N", "N", M, rows, K, w, M, x, K, beta, out, M)


cdef void forward_impl(const floating[:, ::1] x, const floating[:, ::1] w,
                       const floating[::1] bias, const floating[:, ::1] residual,
                       bint has_bias, bint has_residual, floating[:, ::1] out,
                       int n_threads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[1]
    cdef Py_ssize_t n_blocks = (N + ROW_BLOCK - 1) // ROW_BLOCK, blk, r0
    for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
        r0 = blk * ROW_BLOCK
        forward_block(&x[r0, 0], &w[0, 0], &bias[0] if has_bias else NULL,
                      &residual[r0, 0] if has_residual else NULL,
                      min(ROW_BLOCK, N - r0), K, M, &out[r0, 0])


cdef void backward_impl(const floating[:, ::1] dout, const floating[:, ::1] x,
                        const floating[:, ::1] w, floating[:, ::1] dx, floating[:, ::1] dw,
                        floating[::1] db, int n_threads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[1]
    cdef Py_ssize_t n_col_blocks = (M + COL_BLOCK - 1) // COL_BLOCK
    cdef Py_ssize_t n_row_blocks = (N + ROW_BLOCK - 1) // ROW_BLOCK
    cdef Py_ssize_t item, r0, rows, c0, cols, i, j
    # work items: first the (larger) dweight / dbias column blocks, then the dx row blocks
    for item in prange(n_col_blocks + n_row_blocks, schedule='dynamic', num_threads=n_threads):
        if item < n_col_blocks:
            c0 = item * COL_BLOCK
            cols = min(COL_BLOCK, M - c0)
            # dw[:, c0:c0+cols] (K, cols) = x^T (K, N) @ dout[:, c0:c0+cols] (N, cols);
            # column-major: dw_block^T = dout_block^T @ x
            gemm("N", "T", cols, K, N, &dout[0, c0], M, &x[0, 0], K, 0, &dw[0, c0], M)
            for j in range(c0, c0 + cols):
                db[j] = 0
            for i in range(N):
                for j in range(c0, c0 + cols):
                    db[j] += dout[i, j]
        else:
            r0 = (item - n_col_blocks) * ROW_BLOCK
            rows = min(ROW_BLOCK, N - r0)
            # dx (rows, K) = dout @ w^T; column-major that is dx^T = w @ dout^T, and the
            # row-major w reads as w^T column-major, hence its "T"
            gemm("T", "N", K, rows, M, &w[0, 0], M, &dout[r0, 0], M, 0, &dx[r0, 0], K)


def _check_sizes(N, K, M):
    if N < 1 or K < 1 or M < 1:
        raise ValueError(f"linear layers need N, K, M >= 1, got N={N}, K={K}, M={M}")
    if max(N, K, M) >= 2**31:
        raise ValueError("dimensions must be below 2**31 (BLAS integers)")


def linear_forward(x, weight, bias, residual, n_threads, out=None):
    """x (N, K), weight (K, M), bias (M,) or None, residual (N, M) or None
    -> out (N, M) = residual + x @ weight + bias, written into ``out`` when given."""
    cdef int nt = thread_count(n_threads)
    has_bias, has_residual = bias is not None, residual is not None
    x, weight = float_arrays(("x", "weight"), (x, weight))
    check_ndim("x", x, 2, "(N, K)")
    check_ndim("weight", weight, 2, "(K, M)")
    N, K, M = x.shape[0], x.shape[1], weight.shape[1]
    check_shape("weight", weight, (K, M), "(K, M)")
    _check_sizes(N, K, M)
    # an absent bias or residual is a one-element stand-in that the kernel never reads
    bias, residual = float_arrays(
        ("bias", "residual"),
        (bias if has_bias else np.zeros(1, x.dtype),
         residual if has_residual else np.zeros((1, 1), x.dtype)))
    if bias.dtype != x.dtype:
        raise TypeError(f"bias has dtype {bias.dtype} but x has dtype {x.dtype}")
    if has_bias:
        check_shape("bias", bias, (M,), "(M,)")
    if has_residual:
        check_shape("residual", residual, (N, M), "(N, M)")
    (out,) = out_arrays(("out",), out, ((N, M),), x.dtype)
    with one_blas_thread():
        if x.dtype == np.float32:
            forward_impl[float](x, weight, bias, residual, has_bias, has_residual, out, nt)
        else:
            forward_impl[double](x, weight, bias, residual, has_bias, has_residual, out, nt)
    return out


def linear_backward(dout, x, weight, n_threads, out=None):
    """dout (N, M), then forward's x (N, K) and weight (K, M)
    -> dx (N, K), dweight (K, M), dbias (M,), written into ``out`` = (dx, dweight, dbias) when
    given."""
    cdef int nt = thread_count(n_threads)
    dout, x, weight = float_arrays(("dout", "x", "weight"), (dout, x, weight))
    check_ndim("x", x, 2, "(N, K)")
    check_ndim("weight", weight, 2, "(K, M)")
    N, K, M = x.shape[0], x.shape[1], weight.shape[1]
    check_shape("weight", weight, (K, M), "(K, M)")
    check_shape("dout", dout, (N, M), "(N, M)")
    _check_sizes(N, K, M)
    dx, dweight, dbias = out_arrays(("dx", "dweight", "dbias"), out, ((N, K), (K, M), (M,)),
                                    x.dtype)
    with one_blas_thread():
        if x.dtype == np.float32:
            backward_impl[float](dout, x, weight, dx, dweight, dbias, nt)
        else:
            backward_impl[double](dout, x, weight, dx, dweight, dbias, nt)
    return dx, dweight, dbias
