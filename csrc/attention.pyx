"""Causal softmax attention: compiled twins of tinygpt.reference.attention_forward/backward.

The kernels read the packed projection qkv (B, T, 3C) = [q | k | v] and write out (B, T, C)
in place: head h of a row is the D = C / H columns starting at h * D, so no head is ever
copied into a (B, H, T, D) array. Rows of one head are therefore 3C (or C) elements apart.
One prange work item per (batch, head) pair, with per-thread scratch: the (T, T) score matrix
(two in the backward) and k^T (and v^T), copied once per head.

Every product is one small hand-written kernel, tg_gemm (below): c (m, n) = a (m, k) @ b (k, n),
MR rows of c at a time held in SIMD registers. At these sizes (T <= a few hundred, D = 32) a
BLAS gemm spends more time packing its operands than multiplying. The kernel reads a through a
row and a column stride, so P^T and dS^T are read in place, and b row by row; k^T and v^T are
copied so that the score products read b along its rows too. Query row t only touches keys
0..t, so the score products stop at the MR-row block's last key, and the entries of that block
above the diagonal are set to zero before anything multiplies them.
The forward keeps only lse, the log-sum-exp of each row of scaled scores; the backward rebuilds
the probabilities from q, k and lse (flash-attention style) and uses
sum_j P[t, j] dP[t, j] = dout[t] . out[t].
"""
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

from cython cimport floating
from cython.parallel cimport parallel, prange

from kernel_checks cimport require, thread_count
from kernel_math cimport exp_shifted_sum, flog, row_dot, row_max

cdef extern from "attention.h":
    enum: TG_MR
    void tg_gemm_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a, Py_ssize_t ars,
                   Py_ssize_t acs, const float* b, Py_ssize_t ldb, float* c,
                   Py_ssize_t ldc) noexcept nogil
    void tg_gemm_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* a, Py_ssize_t ars,
                   Py_ssize_t acs, const double* b, Py_ssize_t ldb, double* c,
                   Py_ssize_t ldc) noexcept nogil


cdef enum:
    PAD = 16  # score rows are padded to a multiple of this: whole column blocks of tg_gemm

_BLOCKS = {"rows": TG_MR, "pad": PAD}  # the gemm's blocks, for the tests' boundary cases


cdef inline void gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                      Py_ssize_t ars, Py_ssize_t acs, const floating* b, Py_ssize_t ldb,
                      floating* c, Py_ssize_t ldc) noexcept nogil:
    """c (m, n) = a (m, k) @ b (k, n), a[i, p] = a[i * ars + p * acs]; see tg_gemm."""
    if floating is float:
        tg_gemm_f(m, n, k, a, ars, acs, b, ldb, c, ldc)
    else:
        tg_gemm_d(m, n, k, a, ars, acs, b, ldb, c, ldc)


cdef inline Py_ssize_t block_end(Py_ssize_t t, Py_ssize_t T) noexcept nogil:
    """One past the last key of row t's block of TG_MR rows (what the products read)."""
    return min((t // TG_MR + 1) * TG_MR, T)


cdef inline Py_ssize_t padded(Py_ssize_t n) noexcept nogil:
    return (n + PAD - 1) // PAD * PAD


cdef void transpose_scaled(const floating* x, Py_ssize_t ldx, Py_ssize_t T, Py_ssize_t D,
                           floating alpha, floating* xt, Py_ssize_t ldt) noexcept nogil:
    """xt (D, ldt) = alpha * x (T, D)^T, rows of x ldx apart; columns T..ldt of xt set to 0."""
    cdef Py_ssize_t t, d
    for d in range(D):
        for t in range(T):
            xt[d * ldt + t] = alpha * x[t * ldx + d]
        for t in range(T, ldt):
            xt[d * ldt + t] = 0


cdef void causal_scores(const floating* a, Py_ssize_t lda, const floating* bt, Py_ssize_t T,
                        Py_ssize_t Tp, Py_ssize_t D, floating* s) noexcept nogil:
    """s (T, Tp) = a (T, D) @ bt (D, Tp), rows of a lda apart, block by block of TG_MR rows,
    each up to its last key (rounded up to whole column blocks). Later columns are not
    written."""
    cdef Py_ssize_t blk, i0
    for blk in range((T + TG_MR - 1) // TG_MR):
        i0 = blk * TG_MR
        gemm(min(TG_MR, T - i0), min(padded(i0 + TG_MR), Tp), D, a + i0 * lda, lda, 1, bt, Tp,
             s + i0 * Tp, Tp)


cdef void lower_times(const floating* l, Py_ssize_t T, Py_ssize_t Tp, Py_ssize_t D,
                      const floating* x, Py_ssize_t ldx, floating* y, Py_ssize_t ldy) noexcept nogil:
    """y (T, D) = L @ x, L the lower triangle of l (T, Tp) as the callers leave it (zeros above
    the diagonal up to each block's end); rows of x and y ldx and ldy apart."""
    cdef Py_ssize_t blk, i0
    for blk in range((T + TG_MR - 1) // TG_MR):
        i0 = blk * TG_MR
        gemm(min(TG_MR, T - i0), D, block_end(i0, T), l + i0 * Tp, Tp, 1, x, ldx, y + i0 * ldy,
             ldy)


cdef void lower_t_times(const floating* l, Py_ssize_t T, Py_ssize_t Tp, Py_ssize_t D,
                        const floating* x, Py_ssize_t ldx, floating* y,
                        Py_ssize_t ldy) noexcept nogil:
    """y (T, D) = L^T @ x, L as in lower_times: rows j0.. of y take rows j0..T of L (above row
    j0, L's columns j0..j0 + TG_MR are zero)."""
    cdef Py_ssize_t blk, j0
    for blk in range((T + TG_MR - 1) // TG_MR):
        j0 = blk * TG_MR
        gemm(min(TG_MR, T - j0), D, T - j0, l + j0 * Tp + j0, 1, Tp, x + j0 * ldx, ldx,
             y + j0 * ldy, ldy)


cdef void forward_head(const floating* q, Py_ssize_t ldq, Py_ssize_t T, Py_ssize_t C,
                       Py_ssize_t D, floating scale, floating* out, Py_ssize_t ldo,
                       floating* lse, floating* scratch) noexcept nogil:
    """One head: q, and k = q + C, v = q + 2C, (T, D) with rows ldq apart; out (T, D) with rows
    ldo apart; lse (T,); scratch holds (T + D) * padded(T) for p and k^T."""
    cdef Py_ssize_t t, j, n, Tp = padded(T)
    cdef floating m, z
    cdef floating* pt
    cdef floating* p = scratch
    cdef floating* kt = scratch + T * Tp
    transpose_scaled(q + C, ldq, T, D, scale, kt, Tp)
    causal_scores(q, ldq, kt, T, Tp, D, p)
    for t in range(T):
        n = t + 1
        pt = p + t * Tp
        m = row_max(pt, n)
        z = exp_shifted_sum(pt, pt, n, m)
        lse[t] = m + flog(z)
        for j in range(n):
            pt[j] = pt[j] / z
        for j in range(n, block_end(t, T)):
            pt[j] = 0
    lower_times(p, T, Tp, D, q + 2 * C, ldq, out, ldo)  # out = P @ v


cdef void backward_head(const floating* dout, const floating* q, const floating* out,
                        Py_ssize_t ldq, Py_ssize_t ldo, const floating* lse, Py_ssize_t T,
                        Py_ssize_t C, Py_ssize_t D, floating scale, floating* dq,
                        floating* scratch) noexcept nogil:
    """One head: q (k = q + C, v = q + 2C) and dq (dk = dq + C, dv = dq + 2C) have rows ldq
    apart, dout and out rows ldo apart, all (T, D); lse (T,); scratch holds
    2 (T + D) padded(T) for p, ds, k^T and v^T."""
    cdef Py_ssize_t t, j, n, Tp = padded(T)
    cdef floating rd
    cdef floating* pt
    cdef floating* dst
    cdef floating* p = scratch
    cdef floating* ds = p + T * Tp
    cdef floating* kt = ds + T * Tp
    cdef floating* vt = kt + D * Tp
    cdef const floating* k = q + C
    cdef const floating* v = q + 2 * C
    transpose_scaled(k, ldq, T, D, scale, kt, Tp)
    transpose_scaled(v, ldq, T, D, 1, vt, Tp)
    causal_scores(q, ldq, kt, T, Tp, D, p)
    causal_scores(dout, ldo, vt, T, Tp, D, ds)  # dP = dout @ v^T, turned into dS below
    for t in range(T):
        n = t + 1
        pt = p + t * Tp
        dst = ds + t * Tp
        rd = row_dot(dout + t * ldo, out + t * ldo, D)  # = sum_j P[t, j] * dP[t, j]
        exp_shifted_sum(pt, pt, n, lse[t])  # P[t, :n]
        for j in range(n):
            dst[j] = scale * pt[j] * (dst[j] - rd)  # scale * dS: both of its products need it
        for j in range(n, block_end(t, T)):
            pt[j] = 0
            dst[j] = 0
    lower_t_times(p, T, Tp, D, dout, ldo, dq + 2 * C, ldq)  # dv = P^T @ dout
    lower_times(ds, T, Tp, D, k, ldq, dq, ldq)              # dq = scale * dS @ k
    lower_t_times(ds, T, Tp, D, q, ldq, dq + C, ldq)        # dk = scale * dS^T @ q


cdef int check_heads(Py_ssize_t C3, Py_ssize_t C, int n_heads) except -1:
    return require(C3 == 3 * C and n_heads >= 1 and C % n_heads == 0,
                   "qkv (B, T, 3C), C divisible by n_heads")


def attention_forward(const floating[:, :, ::1] qkv not None, int n_heads,
                      floating[:, :, ::1] out not None, floating[:, :, ::1] lse not None,
                      int n_threads):
    """Causal self-attention. qkv (B, T, 3C) = [q | k | v], each split into n_heads heads
    -> out (B, T, C), lse (B, H, T)."""
    cdef Py_ssize_t B = qkv.shape[0], T = qkv.shape[1], C = out.shape[2], H = n_heads
    check_heads(qkv.shape[2], C, n_heads)
    require(out.shape[0] == B and out.shape[1] == T and lse.shape[0] == B and lse.shape[1] == H
            and lse.shape[2] == T, "out (B, T, C), lse (B, H, T)")
    if B * T == 0:
        return
    cdef Py_ssize_t D = C // H, bh, b, h
    cdef floating scale = <floating>(1.0 / sqrt(<double>D))
    cdef floating* p = NULL
    cdef int failed = 0
    with nogil, parallel(num_threads=thread_count(n_threads)):
        p = <floating*>malloc((T + D) * padded(T) * sizeof(floating))
        for bh in prange(B * H, schedule='static'):
            b = bh // H
            h = bh % H
            if p == NULL:
                failed += 1
            else:
                forward_head(&qkv[b, 0, h * D], 3 * C, T, C, D, scale, &out[b, 0, h * D], C,
                             &lse[b, h, 0], p)
        free(p)
    if failed:
        raise MemoryError("attention_forward: could not allocate scratch memory")


def attention_backward(const floating[:, :, ::1] dout not None,
                       const floating[:, :, ::1] qkv not None,
                       const floating[:, :, ::1] att not None,
                       const floating[:, :, ::1] lse not None, int n_heads,
                       floating[:, :, ::1] dqkv not None, int n_threads):
    """dout (B, T, C), then forward's qkv (B, T, 3C), att (its out, (B, T, C)), lse (B, H, T)
    -> dqkv (B, T, 3C)."""
    cdef Py_ssize_t B = qkv.shape[0], T = qkv.shape[1], C = dout.shape[2], H = n_heads
    check_heads(qkv.shape[2], C, n_heads)
    require(dout.shape[0] == B and dout.shape[1] == T and att.shape[0] == B
            and att.shape[1] == T and att.shape[2] == C and lse.shape[0] == B
            and lse.shape[1] == H and lse.shape[2] == T and dqkv.shape[0] == B
            and dqkv.shape[1] == T and dqkv.shape[2] == 3 * C,
            "dout, att (B, T, C), lse (B, H, T), dqkv (B, T, 3C)")
    if B * T == 0:
        return
    cdef Py_ssize_t D = C // H, bh, b, h
    cdef floating scale = <floating>(1.0 / sqrt(<double>D))
    cdef floating* p = NULL
    cdef int failed = 0
    with nogil, parallel(num_threads=thread_count(n_threads)):
        p = <floating*>malloc(2 * (T + D) * padded(T) * sizeof(floating))
        for bh in prange(B * H, schedule='static'):
            b = bh // H
            h = bh % H
            if p == NULL:
                failed += 1
            else:
                backward_head(&dout[b, 0, h * D], &qkv[b, 0, h * D], &att[b, 0, h * D],
                              3 * C, C, &lse[b, h, 0], T, C, D, scale, &dqkv[b, 0, h * D], p)
        free(p)
    if failed:
        raise MemoryError("attention_backward: could not allocate scratch memory")
