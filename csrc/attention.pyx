"""Causal softmax attention: compiled twins of tinygpt.reference.attention_forward/backward.

The kernels read the packed projection qkv (B, T, 3C) = [q | k | v] and write out (B, T, C)
in place: head h of a row is the D = C / H columns starting at h * D, so no head is ever
copied into a (B, H, T, D) array. Rows of one head are therefore 3C (or C) elements apart;
every BLAS call below takes that row stride as its leading dimension.
One prange work item per (batch, head) pair, with a per-thread (T, T) scratch matrix (two in
the backward). Query row t only ever touches keys 0..t: the masked upper triangle of the scores
is never computed, stored or read. The products go to BLAS (scipy.linalg.cython_blas):
  * lower triangle of A @ B^T (scores, and dP in the backward): split recursively into a
    rectangle for one gemm and two half-size triangles; the smallest triangles by dot products;
  * P @ v, P^T @ dout, dS @ k, dS^T @ q: trmm, which reads only the lower triangle of P or dS.
The forward keeps only lse, the log-sum-exp of each row of scaled scores; the backward rebuilds
the probabilities from q, k and lse (flash-attention style) and uses
sum_j P[t, j] dP[t, j] = dout[t] . out[t].

BLAS runs single-threaded inside these calls (threadpoolctl): the parallelism is over heads.
"""
import numpy as np

from tinygpt.blas_threads import one_blas_thread

from libc.math cimport sqrt
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport dgemm, dtrmm, sgemm, strmm

from cython cimport floating
from cython.parallel cimport parallel, prange

from kernel_checks cimport float_arrays, check_ndim, check_shape, positive_int, thread_count
from kernel_math cimport exp_shifted_sum, flog, row_dot, row_max


cdef enum:
    BLOCK = 16  # largest triangle computed by dot products rather than gemm


cdef inline void gemm_abt(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                          const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                          floating* c, Py_ssize_t ldc) noexcept nogil:
    """Row-major c (m, n) = alpha * a (m, k) @ b (n, k)^T, through column-major BLAS."""
    cdef int m_ = <int>m, n_ = <int>n, k_ = <int>k, lda_ = <int>lda, ldb_ = <int>ldb
    cdef int ldc_ = <int>ldc
    cdef floating beta = 0
    if floating is float:
        sgemm("T", "N", &n_, &m_, &k_, &alpha, <float*>b, &ldb_, <float*>a, &lda_, &beta, c, &ldc_)
    else:
        dgemm("T", "N", &n_, &m_, &k_, &alpha, <double*>b, &ldb_, <double*>a, &lda_, &beta, c,
              &ldc_)


cdef inline void trmm_left_lower(bint transpose, Py_ssize_t T, Py_ssize_t D, floating alpha,
                                 const floating* l, floating* x, Py_ssize_t ldx) noexcept nogil:
    """Row-major x (T, D), rows ldx apart, = alpha * L @ x, or alpha * L^T @ x, where L is the
    lower triangle of the row-major (T, T) array l; the strict upper triangle is never read."""
    cdef int t_ = <int>T, d_ = <int>D, ldx_ = <int>ldx
    cdef char* trans = "T" if transpose else "N"
    # column-major, x is x^T (D, T) and l is L^T (upper): x^T L^T = x^T op(l)
    if floating is float:
        strmm("R", "U", trans, "N", &d_, &t_, &alpha, <float*>l, &t_, x, &ldx_)
    else:
        dtrmm("R", "U", trans, "N", &d_, &t_, &alpha, <double*>l, &t_, x, &ldx_)


cdef inline void copy_rows(floating* dst, Py_ssize_t ldd, const floating* src, Py_ssize_t lds,
                           Py_ssize_t T, Py_ssize_t D) noexcept nogil:
    """dst (T, D) = src (T, D), rows ldd and lds elements apart."""
    cdef Py_ssize_t t
    for t in range(T):
        memcpy(dst + t * ldd, src + t * lds, D * sizeof(floating))


cdef void lower_abt(const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                    Py_ssize_t T, Py_ssize_t D, floating alpha, floating* s,
                    Py_ssize_t lds) noexcept nogil:
    """The lower triangle (diagonal included) of s (T, T) = alpha * a (T, D) @ b (T, D)^T; the
    rows of a, b and s are lda, ldb and lds apart. s[t, j] for j > t is neither computed nor
    written: the triangle splits into two half-size triangles and the full rectangle below the
    first, which goes to one gemm; triangles of at most BLOCK rows take their entries one dot
    product at a time."""
    cdef Py_ssize_t t, j, h
    if T <= BLOCK:
        for t in range(T):
            for j in range(t + 1):
                s[t * lds + j] = row_dot(a + t * lda, b + j * ldb, D) * alpha
        return
    h = T // 2
    lower_abt(a, lda, b, ldb, h, D, alpha, s, lds)
    gemm_abt(T - h, h, D, alpha, a + h * lda, lda, b, ldb, s + h * lds, lds)
    lower_abt(a + h * lda, lda, b + h * ldb, ldb, T - h, D, alpha, s + h * lds + h, lds)


cdef void forward_head(const floating* q, Py_ssize_t ldq, Py_ssize_t T, Py_ssize_t C,
                       Py_ssize_t D, floating scale, floating* out, Py_ssize_t ldo,
                       floating* lse, floating* p) noexcept nogil:
    """One head: q, and k = q + C, v = q + 2C, (T, D) with rows ldq apart; out (T, D) with rows
    ldo apart; lse (T,); p is scratch (T, T) for the probabilities."""
    cdef Py_ssize_t t, j, n
    cdef floating m, z
    cdef floating* pt
    lower_abt(q, ldq, q + C, ldq, T, D, scale, p, T)
    for t in range(T):
        n = t + 1
        pt = p + t * T
        m = row_max(pt, n)
        z = exp_shifted_sum(pt, pt, n, m)
        lse[t] = m + flog(z)
        for j in range(n):
            pt[j] = pt[j] / z
    copy_rows(out, ldo, q + 2 * C, ldq, T, D)
    trmm_left_lower(False, T, D, 1, p, out, ldo)  # out = P @ v


cdef void backward_head(const floating* dout, const floating* q, const floating* out,
                        Py_ssize_t ldq, Py_ssize_t ldo, const floating* lse, Py_ssize_t T,
                        Py_ssize_t C, Py_ssize_t D, floating scale, floating* dq,
                        floating* p) noexcept nogil:
    """One head: q (k = q + C, v = q + 2C) and dq (dk = dq + C, dv = dq + 2C) have rows ldq
    apart, dout and out rows ldo apart, all (T, D); lse (T,); p is scratch (2, T, T)."""
    cdef Py_ssize_t t, j, n
    cdef floating rd
    cdef floating* pt
    cdef floating* dst
    cdef floating* ds = p + T * T
    cdef const floating* k = q + C
    cdef const floating* v = q + 2 * C
    lower_abt(q, ldq, k, ldq, T, D, scale, p, T)
    lower_abt(dout, ldo, v, ldq, T, D, 1, ds, T)  # dP = dout @ v^T, turned into dS below
    for t in range(T):
        n = t + 1
        pt = p + t * T
        dst = ds + t * T
        rd = row_dot(dout + t * ldo, out + t * ldo, D)  # = sum_j P[t, j] * dP[t, j]
        exp_shifted_sum(pt, pt, n, lse[t])  # P[t, :n]
        for j in range(n):
            dst[j] = pt[j] * (dst[j] - rd)
    copy_rows(dq + 2 * C, ldq, dout, ldo, T, D)
    trmm_left_lower(True, T, D, 1, p, dq + 2 * C, ldq)  # dv = P^T @ dout
    copy_rows(dq, ldq, k, ldq, T, D)
    trmm_left_lower(False, T, D, scale, ds, dq, ldq)    # dq = scale * dS @ k
    copy_rows(dq + C, ldq, q, ldq, T, D)
    trmm_left_lower(True, T, D, scale, ds, dq + C, ldq)  # dk = scale * dS^T @ q


cdef int forward_impl(const floating[:, :, ::1] qkv, floating[:, :, ::1] out,
                      floating[:, :, ::1] lse, int n_threads) noexcept:
    """Returns 0, or -1 if scratch memory could not be allocated."""
    cdef Py_ssize_t B = qkv.shape[0], T = qkv.shape[1], C = out.shape[2], H = lse.shape[1]
    cdef Py_ssize_t D = C // H, bh, b, h
    cdef floating scale = <floating>(1.0 / sqrt(<double>D))
    cdef floating* p = NULL
    cdef int failed = 0
    with nogil, parallel(num_threads=n_threads):
        p = <floating*>malloc(T * T * sizeof(floating))
        for bh in prange(B * H, schedule='static'):
            b = bh // H
            h = bh % H
            if p == NULL:
                failed += 1
            else:
                forward_head(&qkv[b, 0, h * D], 3 * C, T, C, D, scale, &out[b, 0, h * D], C,
                             &lse[b, h, 0], p)
        free(p)
    return -1 if failed else 0


cdef int backward_impl(const floating[:, :, ::1] dout, const floating[:, :, ::1] qkv,
                       const floating[:, :, ::1] out, const floating[:, :, ::1] lse,
                       floating[:, :, ::1] dqkv, int n_threads) noexcept:
    """Returns 0, or -1 if scratch memory could not be allocated."""
    cdef Py_ssize_t B = qkv.shape[0], T = qkv.shape[1], C = out.shape[2], H = lse.shape[1]
    cdef Py_ssize_t D = C // H, bh, b, h
    cdef floating scale = <floating>(1.0 / sqrt(<double>D))
    cdef floating* p = NULL
    cdef int failed = 0
    with nogil, parallel(num_threads=n_threads):
        p = <floating*>malloc(2 * T * T * sizeof(floating))
        for bh in prange(B * H, schedule='static'):
            b = bh // H
            h = bh % H
            if p == NULL:
                failed += 1
            else:
                backward_head(&dout[b, 0, h * D], &qkv[b, 0, h * D], &out[b, 0, h * D],
                              3 * C, C, &lse[b, h, 0], T, C, D, scale, &dqkv[b, 0, h * D], p)
        free(p)
    return -1 if failed else 0


def _check_heads(qkv, n_heads):
    """qkv must be (B, T, 3C) with C divisible by n_heads; returns (B, T, C, D)."""
    check_ndim("qkv", qkv, 3, "(B, T, 3C)")
    B, T, C3 = qkv.shape
    if C3 == 0 or C3 % 3:
        raise ValueError(f"qkv's last axis must be 3C with C >= 1, got shape {qkv.shape}")
    H = positive_int("n_heads", n_heads)
    C = C3 // 3
    if C % H:
        raise ValueError(f"C = {C} must be divisible by n_heads = {H}")
    if T >= 2**31 or C3 >= 2**31:
        raise ValueError(f"T and 3C must be below 2**31 (BLAS integers), got shape {qkv.shape}")
    return B, T, C, H


def attention_forward(qkv, n_heads, n_threads):
    """Causal self-attention. qkv (B, T, 3C) = [q | k | v], each split into n_heads heads
    -> out (B, T, C), lse (B, H, T)."""
    cdef int nt = thread_count(n_threads)
    (qkv,) = float_arrays(("qkv",), (qkv,))
    B, T, C, H = _check_heads(qkv, n_heads)
    out = np.empty((B, T, C), qkv.dtype)
    lse = np.empty((B, H, T), qkv.dtype)
    if qkv.size == 0:
        return out, lse
    with one_blas_thread():
        if qkv.dtype == np.float32:
            status = forward_impl[float](qkv, out, lse, nt)
        else:
            status = forward_impl[double](qkv, out, lse, nt)
    if status:
        raise MemoryError("attention_forward: could not allocate scratch memory")
    return out, lse


def attention_backward(dout, qkv, out, lse, n_heads, n_threads):
    """dout (B, T, C), then forward's qkv (B, T, 3C), out (B, T, C), lse (B, H, T)
    -> dqkv (B, T, 3C)."""
    cdef int nt = thread_count(n_threads)
    dout, qkv, out, lse = float_arrays(("dout", "qkv", "out", "lse"), (dout, qkv, out, lse))
    B, T, C, H = _check_heads(qkv, n_heads)
    check_shape("dout", dout, (B, T, C), "(B, T, C)")
    check_shape("out", out, (B, T, C), "(B, T, C)")
    check_shape("lse", lse, (B, H, T), "(B, H, T)")
    dqkv = np.empty_like(qkv)
    if qkv.size == 0:
        return dqkv
    with one_blas_thread():
        if qkv.dtype == np.float32:
            status = backward_impl[float](dout, qkv, out, lse, dqkv, nt)
        else:
            status = backward_impl[double](dout, qkv, out, lse, dqkv, nt)
    if status:
        raise MemoryError("attention_backward: could not allocate scratch memory")
    return dqkv
