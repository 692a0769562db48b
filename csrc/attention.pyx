"""Causal softmax attention: compiled twins of tinygpt.reference.attention_forward/backward.

The kernels read the packed projection qkv (B, T, 3C) = [q | k | v] and write out (B, T, C)
in place: head h of a row is the D = C / H columns starting at h * D, so no head is ever
copied into a (B, H, T, D) array. Rows of one head are therefore 3C (or C) elements apart.
One prange work item per (batch, head) pair, with per-thread scratch.

A head is C (attention_impl.h): every product is one small hand-written GEMM that holds a tile
of MR rows x 2 SIMD vectors in registers (AVX-512 12 x 2 x 16 floats, AVX2 6 x 2 x 8, baseline
SSE2 6 x 2 x 4; picked at run time, _use_isa switches for tests). At these sizes (T <= a few
hundred, D = 32) a BLAS gemm spends more time packing its operands than multiplying. The GEMM
reads its left operand through a row and a column stride, so P^T and dS^T are read in place;
k^T and v^T are transposed (scaled) so that the score products read their right operand along
rows. Query row t only touches keys 0..t: the queries go in blocks of MR rows, and each
block's products stop at its last key. The head's rows of q, k, v (and dout) are copied
together first: 3C apart, they share a few cache sets; the transposes then read the copies.
The forward takes a block's scores, their exponentials (unnormalized) and out = exp(S) @ v
divided by the row sums (as the product's tiles are stored) in one pass, and keeps lse, the
log-sum-exp of each row of scaled scores; the backward rebuilds the probabilities from q, k
and lse (flash-attention style) and uses sum_j P[t, j] dP[t, j] = dout[t] . out[t]. Row
maxima, sums and dot products run in whole vectors, and a vector's lanes are added pairwise
in registers, in the same order on every thread count. While a head computes, the rows of the
next work item's head are fetched into cache.
"""
from libc.math cimport sqrt
from libc.stdlib cimport free

from cython cimport floating
from cython.parallel cimport parallel, prange

from kernel_checks cimport isa_level, require, thread_count

# Each thread's scratch starts on a cache line (tg_aligned_alloc): from malloc, 16 bytes past
# one, a head's rows of 32 floats span three lines. A forward + backward takes 2% less time in
# a C harness, 0.3-0.6% in turns at the benchmark's shapes (AMD EPYC, 2 threads); same bits.
cdef extern from "kernel_math.h":
    void* tg_aligned_alloc(size_t nbytes) noexcept nogil


cdef extern from "attention.h":
    int tg_att_cpu_isa() noexcept nogil
    int tg_att_rows(int isa) noexcept nogil
    Py_ssize_t tg_att_scratch_f32(int backward, Py_ssize_t T, Py_ssize_t D) noexcept nogil
    Py_ssize_t tg_att_scratch_f64(int backward, Py_ssize_t T, Py_ssize_t D) noexcept nogil
    void tg_att_forward_head_f32(int isa, const float* q, Py_ssize_t ldq, Py_ssize_t T,
                                 Py_ssize_t C, Py_ssize_t D, float scale, float* out,
                                 Py_ssize_t ldo, float* lse, float* scratch,
                                 const float* next) noexcept nogil
    void tg_att_forward_head_f64(int isa, const double* q, Py_ssize_t ldq, Py_ssize_t T,
                                 Py_ssize_t C, Py_ssize_t D, double scale, double* out,
                                 Py_ssize_t ldo, double* lse, double* scratch,
                                 const double* next) noexcept nogil
    void tg_att_backward_head_f32(int isa, const float* dout, const float* q, const float* out,
                                  Py_ssize_t ldq, Py_ssize_t ldo, const float* lse, Py_ssize_t T,
                                  Py_ssize_t C, Py_ssize_t D, float scale, float* dq,
                                  float* scratch, const float* next_dout, const float* next_q,
                                  const float* next_out) noexcept nogil
    void tg_att_backward_head_f64(int isa, const double* dout, const double* q,
                                  const double* out, Py_ssize_t ldq, Py_ssize_t ldo,
                                  const double* lse, Py_ssize_t T, Py_ssize_t C, Py_ssize_t D,
                                  double scale, double* dq, double* scratch,
                                  const double* next_dout, const double* next_q,
                                  const double* next_out) noexcept nogil

cdef int _cpu_isa = tg_att_cpu_isa()
cdef int _isa = _cpu_isa
_ISA_NAMES = {0: "plain", 1: "avx2", 2: "avx512"}

# The blocks, for the tests' boundary cases, per ISA: query and key rows per block, and bytes
# of a vector (score rows are padded to whole vectors, products go in tiles of two).
_BLOCKS = {"rows": {name: tg_att_rows(isa) for isa, name in _ISA_NAMES.items()},
           "vector_bytes": {"plain": 16, "avx2": 32, "avx512": 64}}


def _kernel_isa():
    """Which path runs: "avx512", "avx2" or "plain" (baseline x86-64)."""
    return _ISA_NAMES[_isa]


def _use_isa(name):
    """For tests: run the path named ("avx512", "avx2", "plain") if this CPU has it, or the
    CPU's best with None. Returns the path now in use."""
    global _isa
    _isa = isa_level(name, _ISA_NAMES, _cpu_isa)
    return _kernel_isa()


cdef inline Py_ssize_t scratch_size(floating* kind, bint backward, Py_ssize_t T,
                                    Py_ssize_t D) noexcept nogil:
    """Scratch elements for one head (kind only selects the dtype)."""
    if floating is float:
        return tg_att_scratch_f32(backward, T, D)
    else:
        return tg_att_scratch_f64(backward, T, D)


cdef inline void forward_head(int isa, const floating* q, Py_ssize_t ldq, Py_ssize_t T,
                              Py_ssize_t C, Py_ssize_t D, floating scale, floating* out,
                              Py_ssize_t ldo, floating* lse, floating* scratch,
                              const floating* next) noexcept nogil:
    if floating is float:
        tg_att_forward_head_f32(isa, q, ldq, T, C, D, scale, out, ldo, lse, scratch, next)
    else:
        tg_att_forward_head_f64(isa, q, ldq, T, C, D, scale, out, ldo, lse, scratch, next)


cdef inline void backward_head(int isa, const floating* dout, const floating* q,
                               const floating* out, Py_ssize_t ldq, Py_ssize_t ldo,
                               const floating* lse, Py_ssize_t T, Py_ssize_t C, Py_ssize_t D,
                               floating scale, floating* dq, floating* scratch,
                               const floating* next_dout, const floating* next_q,
                               const floating* next_out) noexcept nogil:
    if floating is float:
        tg_att_backward_head_f32(isa, dout, q, out, ldq, ldo, lse, T, C, D, scale, dq, scratch,
                                 next_dout, next_q, next_out)
    else:
        tg_att_backward_head_f64(isa, dout, q, out, ldq, ldo, lse, T, C, D, scale, dq, scratch,
                                 next_dout, next_q, next_out)


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
    cdef Py_ssize_t D = C // H, bh, b, h, nb, b2, h2
    cdef floating scale = <floating>(1.0 / sqrt(<double>D))
    cdef floating* p = NULL
    cdef int failed = 0, isa = _isa
    with nogil, parallel(num_threads=thread_count(n_threads)):
        p = <floating*>tg_aligned_alloc(scratch_size(p, False, T, D) * sizeof(floating))
        for bh in prange(B * H, schedule='static'):
            b = bh // H
            h = bh % H
            if p == NULL:
                failed += 1
            else:
                nb = min(bh + 1, B * H - 1)  # the next head, for its prefetch
                b2 = nb // H
                h2 = nb % H
                forward_head(isa, &qkv[b, 0, h * D], 3 * C, T, C, D, scale, &out[b, 0, h * D],
                             C, &lse[b, h, 0], p, &qkv[b2, 0, h2 * D])
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
    cdef Py_ssize_t D = C // H, bh, b, h, nb, b2, h2
    cdef floating scale = <floating>(1.0 / sqrt(<double>D))
    cdef floating* p = NULL
    cdef int failed = 0, isa = _isa
    with nogil, parallel(num_threads=thread_count(n_threads)):
        p = <floating*>tg_aligned_alloc(scratch_size(p, True, T, D) * sizeof(floating))
        for bh in prange(B * H, schedule='static'):
            b = bh // H
            h = bh % H
            if p == NULL:
                failed += 1
            else:
                nb = min(bh + 1, B * H - 1)  # the next head, for its prefetch
                b2 = nb // H
                h2 = nb % H
                backward_head(isa, &dout[b, 0, h * D], &qkv[b, 0, h * D], &att[b, 0, h * D],
                              3 * C, C, &lse[b, h, 0], T, C, D, scale, &dqkv[b, 0, h * D], p,
                              &dout[b2, 0, h2 * D], &qkv[b2, 0, h2 * D], &att[b2, 0, h2 * D])
        free(p)
    if failed:
        raise MemoryError("attention_backward: could not allocate scratch memory")
