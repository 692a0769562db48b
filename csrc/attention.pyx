"""Causal softmax attention: compiled twins of tinygpt.reference.attention_forward/backward.

The kernels read the packed projection qkv (B, T, 3C) = [q | k | v] and write out (B, T, C)
in place: head h of a row is the D = C / H columns starting at h * D, so no head is ever
copied into a (B, H, T, D) array. Rows of one head are therefore 3C (or C) elements apart;
every BLAS call below takes that row stride as its leading dimension.
One prange work item per (batch, head) pair, with a per-thread (T, T) scratch matrix (two in
the backward). Query row t only ever touches keys 0..t, so the (T, T) matrices are handled in
bands of TILE rows: band r0..r1 needs keys 0..r1 only. Each product is one BLAS gemm per band
(scipy.linalg.cython_blas); the part of the diagonal tile above the diagonal is computed but
then overwritten with zeros, so the products with P and dS never see it. For T = 128 that is
1.5x the arithmetic of the exact triangle and 0.75x that of the full square, in two calls per
product; at these sizes BLAS spends more time packing operands than multiplying, and fewer,
larger calls won (at one thread, 64-row bands were about 5% faster than 32, 128 about 20%
slower).
The forward keeps only lse, the log-sum-exp of each row of scaled scores; the backward rebuilds
the probabilities from q, k and lse (flash-attention style) and uses
sum_j P[t, j] dP[t, j] = dout[t] . out[t].

BLAS runs single-threaded inside these calls (threadpoolctl): the parallelism is over heads.
"""
import numpy as np

from tinygpt.blas_threads import one_blas_thread

from libc.math cimport sqrt
from libc.stdlib cimport free, malloc
from scipy.linalg.cython_blas cimport dgemm, sgemm

from cython cimport floating
from cython.parallel cimport parallel, prange

from kernel_checks cimport (float_arrays, check_ndim, check_shape, out_arrays, positive_int,
                            thread_count)
from kernel_math cimport exp_shifted_sum, flog, row_dot, row_max


cdef enum:
    TILE = 64  # rows per band of the causal triangle (see above)


cdef inline void gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      floating alpha, const floating* a, Py_ssize_t lda, const floating* b,
                      Py_ssize_t ldb, floating* c, Py_ssize_t ldc) noexcept nogil:
    """Row-major c (m, n) = alpha * op(a) @ op(b), op(x) = x or x^T, through column-major BLAS
    (which sees every row-major matrix as its transpose: c^T = op(b)^T op(a)^T)."""
    cdef int m_ = <int>m, n_ = <int>n, k_ = <int>k, lda_ = <int>lda, ldb_ = <int>ldb
    cdef int ldc_ = <int>ldc
    cdef char* ta = "T" if trans_a else "N"
    cdef char* tb = "T" if trans_b else "N"
    cdef floating beta = 0
    if floating is float:
        sgemm(tb, ta, &n_, &m_, &k_, &alpha, <float*>b, &ldb_, <float*>a, &lda_, &beta, c, &ldc_)
    else:
        dgemm(tb, ta, &n_, &m_, &k_, &alpha, <double*>b, &ldb_, <double*>a, &lda_, &beta, c,
              &ldc_)


cdef void banded_abt(const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                     Py_ssize_t T, Py_ssize_t D, floating alpha, floating* s) noexcept nogil:
    """s (T, T) = alpha * a (T, D) @ b (T, D)^T on and below the diagonal, band by band (rows
    r0..r1 against columns 0..r1); rows of a and b are lda and ldb apart. Entries right of a
    band's last column are not written."""
    cdef Py_ssize_t band, r0, r1
    for band in range((T + TILE - 1) // TILE):
        r0 = band * TILE
        r1 = min(r0 + TILE, T)
        gemm(False, True, r1 - r0, r1, D, alpha, a + r0 * lda, lda, b, ldb, s + r0 * T, T)


cdef void lower_times(const floating* l, Py_ssize_t T, Py_ssize_t D, floating alpha,
                      const floating* x, Py_ssize_t ldx, floating* y, Py_ssize_t ldy) noexcept nogil:
    """y (T, D) = alpha * L @ x, L the lower triangle of l (T, T) as banded_abt leaves it (zeros
    above the diagonal inside each band's last tile); rows of x and y ldx and ldy apart."""
    cdef Py_ssize_t band, r0, r1
    for band in range((T + TILE - 1) // TILE):
        r0 = band * TILE
        r1 = min(r0 + TILE, T)
        gemm(False, False, r1 - r0, D, r1, alpha, l + r0 * T, T, x, ldx, y + r0 * ldy, ldy)


cdef void lower_t_times(const floating* l, Py_ssize_t T, Py_ssize_t D, floating alpha,
                        const floating* x, Py_ssize_t ldx, floating* y,
                        Py_ssize_t ldy) noexcept nogil:
    """y (T, D) = alpha * L^T @ x, with L as in lower_times: rows c0..c1 of y take rows c0..T of
    L's columns c0..c1 (what lies above row c0 in them is zero)."""
    cdef Py_ssize_t band, c0, c1
    for band in range((T + TILE - 1) // TILE):
        c0 = band * TILE
        c1 = min(c0 + TILE, T)
        gemm(True, False, c1 - c0, D, T - c0, alpha, l + c0 * T + c0, T, x + c0 * ldx, ldx,
             y + c0 * ldy, ldy)


cdef inline Py_ssize_t band_end(Py_ssize_t t, Py_ssize_t T) noexcept nogil:
    """One past the last column that row t's band computes."""
    return min((t // TILE + 1) * TILE, T)


cdef void forward_head(const floating* q, Py_ssize_t ldq, Py_ssize_t T, Py_ssize_t C,
                       Py_ssize_t D, floating scale, floating* out, Py_ssize_t ldo,
                       floating* lse, floating* p) noexcept nogil:
    """One head: q, and k = q + C, v = q + 2C, (T, D) with rows ldq apart; out (T, D) with rows
    ldo apart; lse (T,); p is scratch (T, T) for the probabilities."""
    cdef Py_ssize_t t, j, n
    cdef floating m, z
    cdef floating* pt
    banded_abt(q, ldq, q + C, ldq, T, D, scale, p)
    for t in range(T):
        n = t + 1
        pt = p + t * T
        m = row_max(pt, n)
        z = exp_shifted_sum(pt, pt, n, m)
        lse[t] = m + flog(z)
        for j in range(n):
            pt[j] = pt[j] / z
        for j in range(n, band_end(t, T)):
            pt[j] = 0
    lower_times(p, T, D, 1, q + 2 * C, ldq, out, ldo)  # out = P @ v


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
    banded_abt(q, ldq, k, ldq, T, D, scale, p)
    banded_abt(dout, ldo, v, ldq, T, D, 1, ds)  # dP = dout @ v^T, turned into dS below
    for t in range(T):
        n = t + 1
        pt = p + t * T
        dst = ds + t * T
        rd = row_dot(dout + t * ldo, out + t * ldo, D)  # = sum_j P[t, j] * dP[t, j]
        exp_shifted_sum(pt, pt, n, lse[t])  # P[t, :n]
        for j in range(n):
            dst[j] = pt[j] * (dst[j] - rd)
        for j in range(n, band_end(t, T)):
            pt[j] = 0
            dst[j] = 0
    lower_t_times(p, T, D, 1, dout, ldo, dq + 2 * C, ldq)  # dv = P^T @ dout
    lower_times(ds, T, D, scale, k, ldq, dq, ldq)          # dq = scale * dS @ k
    lower_t_times(ds, T, D, scale, q, ldq, dq + C, ldq)    # dk = scale * dS^T @ q


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


def attention_forward(qkv, n_heads, n_threads, out=None):
    """Causal self-attention. qkv (B, T, 3C) = [q | k | v], each split into n_heads heads
    -> out (B, T, C), lse (B, H, T), written into ``out`` = (out, lse) when given."""
    cdef int nt = thread_count(n_threads)
    (qkv,) = float_arrays(("qkv",), (qkv,))
    B, T, C, H = _check_heads(qkv, n_heads)
    out, lse = out_arrays(("out", "lse"), out, ((B, T, C), (B, H, T)), qkv.dtype)
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


def attention_backward(dout, qkv, att, lse, n_heads, n_threads, out=None):
    """dout (B, T, C), then forward's qkv (B, T, 3C), att (its out, (B, T, C)), lse (B, H, T)
    -> dqkv (B, T, 3C), written into ``out`` when given."""
    cdef int nt = thread_count(n_threads)
    dout, qkv, att, lse = float_arrays(("dout", "qkv", "att", "lse"), (dout, qkv, att, lse))
    B, T, C, H = _check_heads(qkv, n_heads)
    check_shape("dout", dout, (B, T, C), "(B, T, C)")
    check_shape("att", att, (B, T, C), "(B, T, C)")
    check_shape("lse", lse, (B, H, T), "(B, H, T)")
    (dqkv,) = out_arrays(("dqkv",), out, (qkv.shape,), qkv.dtype)
    if qkv.size == 0:
        return dqkv
    with one_blas_thread():
        if qkv.dtype == np.float32:
            status = backward_impl[float](dout, qkv, att, lse, dqkv, nt)
        else:
            status = backward_impl[double](dout, qkv, att, lse, dqkv, nt)
    if status:
        raise MemoryError("attention_backward: could not allocate scratch memory")
    return dqkv
