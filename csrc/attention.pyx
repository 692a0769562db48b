"""Causal softmax attention: compiled twins of tinygpt.reference.attention_forward/backward.

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

from kernel_checks cimport float_arrays, check_ndim, check_shape, thread_count
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
                                 const floating* l, floating* x) noexcept nogil:
    """Row-major x (T, D) = alpha * L @ x, or alpha * L^T @ x, where L is the lower triangle
    of the row-major (T, T) array l; the strict upper triangle of l is never read."""
    cdef int t_ = <int>T, d_ = <int>D
    cdef char* trans = "T" if transpose else "N"
    # column-major, x is x^T (D, T) and l is L^T (upper): x^T L^T = x^T op(l)
    if floating is float:
        strmm("R", "U", trans, "N", &d_, &t_, &alpha, <float*>l, &t_, x, &d_)
    else:
        dtrmm("R", "U", trans, "N", &d_, &t_, &alpha, <double*>l, &t_, x, &d_)


cdef void lower_abt(const floating* a, const floating* b, Py_ssize_t T, Py_ssize_t D,
                    floating alpha, floating* s, Py_ssize_t lds) noexcept nogil:
    """The lower triangle (diagonal included) of s (T, T) = alpha * a (T, D) @ b (T, D)^T, with
    s's rows lds apart. s[t, j] for j > t is neither computed nor written: the triangle splits
    into two half-size triangles and the full rectangle below the first, which goes to one gemm;
    triangles of at most BLOCK rows take their entries one dot product at a time."""
    cdef Py_ssize_t t, j, h
    if T <= BLOCK:
        for t in range(T):
            for j in range(t + 1):
                s[t * lds + j] = row_dot(a + t * D, b + j * D, D) * alpha
        return
    h = T // 2
    lower_abt(a, b, h, D, alpha, s, lds)
    gemm_abt(T - h, h, D, alpha, a + h * D, D, b, D, s + h * lds, lds)
    lower_abt(a + h * D, b + h * D, T - h, D, alpha, s + h * lds + h, lds)


cdef void forward_head(const floating* q, const floating* k, const floating* v, Py_ssize_t T,
                       Py_ssize_t D, floating scale, floating* out, floating* lse,
                       floating* p) noexcept nogil:
    """One head: q, k, v, out (T, D); lse (T,); p is scratch (T, T) for the probabilities."""
    cdef Py_ssize_t t, j, n
    cdef floating m, z
    cdef floating* pt
    lower_abt(q, k, T, D, scale, p, T)
    for t in range(T):
        n = t + 1
        pt = p + t * T
        m = row_max(pt, n)
        z = exp_shifted_sum(pt, pt, n, m)
        lse[t] = m + flog(z)
        for j in range(n):
            pt[j] = pt[j] / z
    memcpy(out, v, T * D * sizeof(floating))
    trmm_left_lower(False, T, D, 1, p, out)  # out = P @ v


cdef void backward_head(const floating* dout, const floating* q, const floating* k,
                        const floating* v, const floating* out, const floating* lse,
                        Py_ssize_t T, Py_ssize_t D, floating scale, floating* dq, floating* dk,
                        floating* dv, floating* p) noexcept nogil:
    """One head: dout, q, k, v, out, dq, dk, dv (T, D); lse (T,); p is scratch (2, T, T)."""
    cdef Py_ssize_t t, j, n
    cdef floating rd
    cdef floating* pt
    cdef floating* dst
    cdef floating* ds = p + T * T
    lower_abt(q, k, T, D, scale, p, T)
    lower_abt(dout, v, T, D, 1, ds, T)  # dP = dout @ v^T, turned into dS below
    for t in range(T):
        n = t + 1
        pt = p + t * T
        dst = ds + t * T
        rd = row_dot(dout + t * D, out + t * D, D)  # = sum_j P[t, j] * dP[t, j]
        exp_shifted_sum(pt, pt, n, lse[t])  # P[t, :n]
        for j in range(n):
            dst[j] = pt[j] * (dst[j] - rd)
    memcpy(dv, dout, T * D * sizeof(floating))
    trmm_left_lower(True, T, D, 1, p, dv)       # dv = P^T @ dout
    memcpy(dq, k, T * D * sizeof(floating))
    trmm_left_lower(False, T, D, scale, ds, dq)  # dq = scale * dS @ k
    memcpy(dk, q, T * D * sizeof(floating))
    trmm_left_lower(True, T, D, scale, ds, dk)   # dk = scale * dS^T @ q


cdef int forward_impl(const floating[:, :, :, ::1] q, const floating[:, :, :, ::1] k,
                      const floating[:, :, :, ::1] v, floating[:, :, :, ::1] out,
                      floating[:, :, ::1] lse, int n_threads) noexcept:
    """Returns 0, or -1 if scratch memory could not be allocated."""
    cdef Py_ssize_t B = q.shape[0], H = q.shape[1], T = q.shape[2], D = q.shape[3]
    cdef Py_ssize_t bh, b, h
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
                forward_head(&q[b, h, 0, 0], &k[b, h, 0, 0], &v[b, h, 0, 0], T, D, scale,
                             &out[b, h, 0, 0], &lse[b, h, 0], p)
        free(p)
    return -1 if failed else 0


cdef int backward_impl(const floating[:, :, :, ::1] dout, const floating[:, :, :, ::1] q,
                       const floating[:, :, :, ::1] k, const floating[:, :, :, ::1] v,
                       const floating[:, :, :, ::1] out, const floating[:, :, ::1] lse,
                       floating[:, :, :, ::1] dq, floating[:, :, :, ::1] dk,
                       floating[:, :, :, ::1] dv, int n_threads) noexcept:
    """Returns 0, or -1 if scratch memory could not be allocated."""
    cdef Py_ssize_t B = q.shape[0], H = q.shape[1], T = q.shape[2], D = q.shape[3]
    cdef Py_ssize_t bh, b, h
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
                backward_head(&dout[b, h, 0, 0], &q[b, h, 0, 0], &k[b, h, 0, 0],
                              &v[b, h, 0, 0], &out[b, h, 0, 0], &lse[b, h, 0], T, D, scale,
                              &dq[b, h, 0, 0], &dk[b, h, 0, 0], &dv[b, h, 0, 0], p)
        free(p)
    return -1 if failed else 0


def _check_qkv(names, arrays):
    """float_arrays + every array 4-D (B, H, T, D) with one shape; D >= 1."""
    arrays = float_arrays(names, arrays)
    check_ndim(names[0], arrays[0], 4, "(B, H, T, D)")
    shape = arrays[0].shape
    for name, a in zip(names[1:], arrays[1:]):
        check_shape(name, a, shape, "(B, H, T, D)")
    if shape[3] == 0:
        raise ValueError(f"the head size D must be >= 1, got shape {shape}")
    if shape[2] >= 2**31 or shape[3] >= 2**31:
        raise ValueError(f"T and D must be below 2**31 (BLAS integers), got shape {shape}")
    return arrays


def attention_forward(q, k, v, n_threads):
    """Causal attention. q, k, v (B, H, T, D) -> out (B, H, T, D), lse (B, H, T)."""
    cdef int nt = thread_count(n_threads)
    q, k, v = _check_qkv(("q", "k", "v"), (q, k, v))
    out = np.empty_like(q)
    lse = np.empty(q.shape[:3], q.dtype)
    if q.size == 0:
        return out, lse
    with one_blas_thread():
        if q.dtype == np.float32:
            status = forward_impl[float](q, k, v, out, lse, nt)
        else:
            status = forward_impl[double](q, k, v, out, lse, nt)
    if status:
        raise MemoryError("attention_forward: could not allocate scratch memory")
    return out, lse


def attention_backward(dout, q, k, v, out, lse, n_threads):
    """dout (B, H, T, D), then forward's q, k, v, out (B, H, T, D) and lse (B, H, T)
    -> dq, dk, dv (B, H, T, D)."""
    cdef int nt = thread_count(n_threads)
    dout, q, k, v, out, lse = float_arrays(("dout", "q", "k", "v", "out", "lse"),
                                           (dout, q, k, v, out, lse))
    dout, q, k, v, out = _check_qkv(("dout", "q", "k", "v", "out"), (dout, q, k, v, out))
    check_shape("lse", lse, q.shape[:3], "(B, H, T)")
    dq = np.empty_like(q)
    dk = np.empty_like(q)
    dv = np.empty_like(q)
    if q.size == 0:
        return dq, dk, dv
    with one_blas_thread():
        if q.dtype == np.float32:
            status = backward_impl[float](dout, q, k, v, out, lse, dq, dk, dv, nt)
        else:
            status = backward_impl[double](dout, q, k, v, out, lse, dq, dk, dv, nt)
    if status:
        raise MemoryError("attention_backward: could not allocate scratch memory")
    return dq, dk, dv
