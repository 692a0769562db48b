"""Linear layers: compiled twins of tinygpt.reference.linear_forward/backward.

    forward:  out (N, M) = residual + x (N, K) @ weight (K, M) + bias
    backward: dx = dout @ weight^T, dweight = x^T @ dout, dbias = dout summed over rows

float32 on a CPU with AVX2+FMA or AVX-512 runs an own GEMM (linear.h); float64, and float32
elsewhere, call BLAS. Either way the blocks of work depend on the shapes alone, never on the
thread count, and every output entry is summed in one fixed order, so the bits are the same on
any number of threads (OpenBLAS's own threading would change them with its thread count).

The own GEMM is cut for the model's shapes: one small side (K, M of 65-512: the weight) and one
long one (N = batch x sequence rows). A micro-kernel keeps an MR x NR tile of the output in
registers (12 x 32 on AVX-512, 6 x 16 on AVX2) and adds one rank-1 product per step: MR
broadcasts of one operand times NR/V vectors of the other, one FMA per product.

    forward, dx: the weight (or its transpose) is packed once per call into NR-column panels
                 (at most 256 KB, in L2); x or dout rows are read where they lie. A work item
                 (a block of rows, shared out dynamically) goes panel by panel, each panel held
                 in L1 while the item's rows pass MR at a time. Each entry sums its K (or M)
                 products in order.
    dweight:     x^T @ dout sums over the N rows. The rows are cut into segments (their number
                 set by N alone, at most 4); a segment is one work item: for each 128-row chunk
                 it computes dx, then copies the chunk's dout into panels (summing its rows
                 into dbias on the way: no extra pass) and adds the chunk's products, x's rows
                 read where they lie, to the segment's own partial dweight (the first
                 segment's is dweight itself). A last pass adds the partials in segment order.
                 No shared accumulator, and no order that a thread could change.

The AVX2 and AVX-512 kernels add the same products in the same order with FMA, so they give the
same bits as each other (which of them runs depends on the CPU, the same for every thread).

linear_act_forward and linear_act_backward (float32, own GEMM) run the MLP's activation inside
the layer: forward, on each work item's output rows just written (fc's activation, and its
slope written over the pre-activation: the derivative there, from the same exp); backward, in
the micro-kernel as it stores dx's tiles (fc2's dx, at the activation's output, times the slope
becomes the gradient at its input). The rows are still in cache (forward) or in registers
(backward), which spares a pass over memory each way; the forward's loops are gelu.h's and
relu2.h's, and the backward's is one rounded product, so the bits are those of the separate
kernels (the slope is the activation's backward of ones).
"""
import numpy as np

from tinygpt.blas_threads import one_blas_thread

from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport dgemm, sgemm

from cython cimport floating
from cython.parallel cimport parallel, prange

from kernel_checks cimport isa_level, require, thread_count

cdef extern from "linear.h":
    enum: TG_LIN_MR_MAX, TG_LIN_NR_MAX, TG_LIN_MR_AVX2, TG_LIN_NR_AVX2, TG_LIN_CHUNK
    enum: TG_LIN_SEG_MIN, TG_LIN_SEG_MAX, TG_LIN_FWD_ROWS
    enum: TG_ACT_GELU, TG_ACT_RELU2
    int tg_lin_cpu_isa() noexcept nogil
    Py_ssize_t tg_lin_backward_scratch(Py_ssize_t N, Py_ssize_t K, Py_ssize_t M,
                                       int n_threads) noexcept nogil
    Py_ssize_t tg_lin_forward_scratch(Py_ssize_t K, Py_ssize_t M) noexcept nogil
    Py_ssize_t tg_lin_segments(Py_ssize_t N) noexcept nogil
    Py_ssize_t tg_lin_seg_rows(Py_ssize_t N) noexcept nogil
    void tg_lin_forward_f32(const float* x, const float* w, const float* bias, const float* res,
                            Py_ssize_t N, Py_ssize_t K, Py_ssize_t M, float* out, int act,
                            float* post, float* scratch, int isa, int n_threads) noexcept nogil
    void tg_lin_backward_f32(const float* dout, const float* x, const float* w, Py_ssize_t N,
                             Py_ssize_t K, Py_ssize_t M, const float* slope, float* dx,
                             float* dw, float* db, float* scratch, int isa,
                             int n_threads) noexcept nogil

cdef int _cpu_isa = tg_lin_cpu_isa()
cdef int _isa = _cpu_isa
_ISA_NAMES = {0: "blas", 1: "avx2", 2: "avx512"}


def _kernel_isa():
    """Which float32 path runs: "avx512", "avx2" (the own GEMM) or "blas"."""
    return _ISA_NAMES[_isa]


def _use_isa(name):
    """For tests: run the float32 path named ("avx512", "avx2", "blas") if this CPU has it, or
    the CPU's best with None. Returns the path now in use."""
    global _isa
    _isa = isa_level(name, _ISA_NAMES, _cpu_isa)
    return _kernel_isa()


def _dweight_segments(N):
    """How many row segments (partial dweight sums) a backward of N rows uses."""
    return tg_lin_segments(N)


cdef enum:
    ROW_BLOCK = 256  # BLAS path: rows per forward work item

# The work splits, for the tests' boundary cases: the own GEMM's micro-tiles (rows, columns),
# its forward rows per work item, dweight chunk rows and segments; the BLAS path's forward rows.
_BLOCKS = {"tiles": {"avx512": (TG_LIN_MR_MAX, TG_LIN_NR_MAX),
                     "avx2": (TG_LIN_MR_AVX2, TG_LIN_NR_AVX2)},
           "forward_rows": TG_LIN_FWD_ROWS, "chunk": TG_LIN_CHUNK,
           "segment_min_rows": TG_LIN_SEG_MIN, "segments_max": TG_LIN_SEG_MAX,
           "blas_forward_rows": ROW_BLOCK}


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


cdef void forward_impl(const floating* x, const floating* w, const floating* bias,
                       const floating* residual, Py_ssize_t N, Py_ssize_t K, Py_ssize_t M,
                       floating* out, int n_threads) noexcept nogil:
    """The BLAS path: forward_block on each ROW_BLOCK rows."""
    cdef Py_ssize_t blk, r0
    for blk in prange((N + ROW_BLOCK - 1) // ROW_BLOCK, schedule='static', num_threads=n_threads):
        r0 = blk * ROW_BLOCK
        forward_block(x + r0 * K, w, bias, residual + r0 * M if residual != NULL else NULL,
                      min(ROW_BLOCK, N - r0), K, M, out + r0 * M)


cdef void backward_impl(const floating[:, ::1] dout, const floating[:, ::1] x,
                        const floating[:, ::1] w, floating[:, ::1] dx, floating[:, ::1] dw,
                        floating[::1] db, floating[::1] partial, int n_threads) noexcept nogil:
    """The BLAS path, in the own GEMM's blocks: dweight and dbias in row segments (one BLAS
    call each, into dweight itself or a partial sum), dx for the segment's rows, then the
    partial sums added in segment order."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[1]
    cdef Py_ssize_t seg = tg_lin_seg_rows(N), n_seg = tg_lin_segments(N)
    cdef Py_ssize_t s, r0, rows, i, j, k, off
    cdef floating* pdw
    cdef floating* pdb
    with parallel(num_threads=n_threads):
        for s in prange(n_seg, schedule='dynamic'):
            r0 = s * seg
            rows = min(seg, N - r0)
            if s == 0:
                pdw = &dw[0, 0]
                pdb = &db[0]
            else:
                pdw = &partial[(s - 1) * (K * M + M)]
                pdb = pdw + K * M
            # dw_s (K, M) = x_s^T @ dout_s; column-major: dw_s^T = dout_s^T @ x_s
            gemm("N", "T", M, K, rows, &dout[r0, 0], M, &x[r0, 0], K, 0, pdw, M)
            for j in range(M):
                pdb[j] = 0
            for i in range(r0, r0 + rows):
                for j in range(M):
                    pdb[j] = pdb[j] + dout[i, j]
            # dx (rows, K) = dout_s @ w^T; column-major dx^T = w @ dout_s^T ("T": w is
            # row-major)
            gemm("T", "N", K, rows, M, &w[0, 0], M, &dout[r0, 0], M, 0, &dx[r0, 0], K)
        # the partial sums, added in segment order: row i of dweight (i = K: dbias)
        for i in prange(K + 1 if n_seg > 1 else 0, schedule='static'):
            for k in range(1, n_seg):
                off = (k - 1) * (K * M + M) + i * M
                if i < K:
                    for j in range(M):
                        dw[i, j] = dw[i, j] + partial[off + j]
                else:
                    for j in range(M):
                        db[j] = db[j] + partial[off + j]


cdef int check_sizes(Py_ssize_t N, Py_ssize_t K, Py_ssize_t M) except -1:
    """BLAS takes 32-bit sizes, and no empty matrices (a leading dimension of 0)."""
    return require(0 < N < 2**31 and 0 < K < 2**31 and 0 < M < 2**31, "N, K, M in 1..2**31-1")


def linear_forward(const floating[:, ::1] x not None, const floating[:, ::1] weight not None,
                   const floating[::1] bias, const floating[:, ::1] residual,
                   floating[:, ::1] out not None, int n_threads):
    """x (N, K), weight (K, M), bias (M,) or None, residual (N, M) or None
    -> out (N, M) = residual + x @ weight + bias."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = weight.shape[1]
    check_sizes(N, K, M)
    require(weight.shape[0] == K and out.shape[0] == N and out.shape[1] == M
            and (bias is None or bias.shape[0] == M)
            and (residual is None or (residual.shape[0] == N and residual.shape[1] == M)),
            "x (N, K), weight (K, M), bias (M,), residual, out (N, M)")
    cdef const floating* b = NULL
    cdef const floating* r = NULL
    if bias is not None:
        b = &bias[0]
    if residual is not None:
        r = &residual[0, 0]
    cdef int nt = thread_count(n_threads)
    if floating is float:  # the own GEMM is float32 by nature: the one branch on the dtype
        if _isa:
            _forward_f32(x, weight, b, r, out, 0, None, nt)
            return
    with one_blas_thread():
        forward_impl(&x[0, 0], &weight[0, 0], b, r, N, K, M, &out[0, 0], nt)


cdef extern from "kernel_math.h":
    enum: TG_ALIGNMENT

SLACK = TG_ALIGNMENT // sizeof(float)  # floats a scratch buffer holds beyond its use


cdef float* _aligned(float[::1] buffer):
    """The first TG_ALIGNMENT (64-byte) boundary in buffer (SLACK floats to spare): NumPy's
    large arrays start 16 bytes past one, and the kernels' packed panels are read in whole
    64-byte vectors (a load that straddles two cache lines costs two). The caller holds the
    array while it is used."""
    cdef size_t address = <size_t>&buffer[0]
    return &buffer[0] + ((TG_ALIGNMENT - address % TG_ALIGNMENT) % TG_ALIGNMENT) // sizeof(float)


cdef _forward_f32(const float[:, ::1] x, const float[:, ::1] w, const float* bias,
                  const float* residual, float[:, ::1] out, int act, float[:, ::1] post,
                  int nt):
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[1]
    buffer = np.empty(tg_lin_forward_scratch(K, M) + SLACK, np.float32)
    cdef float* scratch = _aligned(buffer)
    cdef float* p = &post[0, 0] if act else NULL
    with nogil:
        tg_lin_forward_f32(&x[0, 0], &w[0, 0], bias, residual, N, K, M, &out[0, 0], act, p,
                           scratch, _isa, nt)


cdef _backward_f32(const float[:, ::1] dout, const float[:, ::1] x, const float[:, ::1] w,
                   const float[:, ::1] slope, float[:, ::1] dx, float[:, ::1] dw,
                   float[::1] db, int nt):
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[1]
    buffer = np.empty(tg_lin_backward_scratch(N, K, M, nt) + SLACK, np.float32)
    cdef float* scratch = _aligned(buffer)
    cdef const float* s = &slope[0, 0] if slope is not None else NULL
    with nogil:
        tg_lin_backward_f32(&dout[0, 0], &x[0, 0], &w[0, 0], N, K, M, s, &dx[0, 0],
                            &dw[0, 0], &db[0], scratch, _isa, nt)


def linear_backward(const floating[:, ::1] dout not None, const floating[:, ::1] x not None,
                    const floating[:, ::1] weight not None, floating[:, ::1] dx not None,
                    floating[:, ::1] dweight not None, floating[::1] dbias not None,
                    int n_threads):
    """dout (N, M), then forward's x (N, K) and weight (K, M)
    -> dx (N, K), dweight (K, M), dbias (M,)."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = weight.shape[1]
    check_sizes(N, K, M)
    require(weight.shape[0] == K and dout.shape[0] == N and dout.shape[1] == M
            and dx.shape[0] == N and dx.shape[1] == K and dweight.shape[0] == K
            and dweight.shape[1] == M and dbias.shape[0] == M,
            "dout (N, M), x, dx (N, K), weight, dweight (K, M), dbias (M,)")
    cdef int nt = thread_count(n_threads)
    if floating is float:  # the own GEMM, as in linear_forward
        if _isa:
            _backward_f32(dout, x, weight, None, dx, dweight, dbias, nt)
            return
    cdef floating[::1] partial = np.empty(max(1, (tg_lin_segments(N) - 1) * (K * M + M)),
                                          np.float32 if floating is float else np.float64)
    with one_blas_thread():
        backward_impl(dout, x, weight, dx, dweight, dbias, partial, nt)


# The activations the own GEMM runs on a layer's output: tinygpt.ops' names -> linear.h's
# codes.
ACTIVATIONS = {"gelu": TG_ACT_GELU, "relu2": TG_ACT_RELU2}


def linear_act_forward(const float[:, ::1] x not None, const float[:, ::1] weight not None,
                       const float[::1] bias, str activation not None,
                       float[:, ::1] out not None, float[:, ::1] post not None, int n_threads):
    """float32 on the own GEMM: x (N, K), weight (K, M), bias (M,) or None, pre = x @ weight +
    bias -> post (N, M) = activation(pre) and out (N, M) = activation'(pre), the slope, each
    work item's rows while they are in cache (the bits of the activation's own kernels: its
    forward, and its backward of ones)."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = weight.shape[1]
    check_sizes(N, K, M)
    require(_isa != 0 and activation in ACTIVATIONS, "an activation on the own GEMM")
    require(weight.shape[0] == K and out.shape[0] == N and out.shape[1] == M
            and post.shape[0] == N and post.shape[1] == M
            and (bias is None or bias.shape[0] == M),
            "x (N, K), weight (K, M), bias (M,), out, post (N, M)")
    cdef const float* b = NULL
    if bias is not None:
        b = &bias[0]
    _forward_f32(x, weight, b, NULL, out, ACTIVATIONS[activation], post, thread_count(n_threads))


def linear_act_backward(const float[:, ::1] dout not None, const float[:, ::1] x not None,
                        const float[:, ::1] weight not None, const float[:, ::1] slope not None,
                        float[:, ::1] dx not None, float[:, ::1] dweight not None,
                        float[::1] dbias not None, int n_threads):
    """float32 on the own GEMM: dout (N, M), then forward's x (N, K), an activation's output,
    its slope (N, K) (linear_act_forward's out) and weight (K, M) -> dx (N, K), the gradient at
    the activation's input, dweight (K, M), dbias (M,)."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = weight.shape[1]
    check_sizes(N, K, M)
    require(_isa != 0, "the own GEMM")
    require(weight.shape[0] == K and dout.shape[0] == N and dout.shape[1] == M
            and slope.shape[0] == N and slope.shape[1] == K
            and dx.shape[0] == N and dx.shape[1] == K and dweight.shape[0] == K
            and dweight.shape[1] == M and dbias.shape[0] == M,
            "dout (N, M), x, slope, dx (N, K), weight, dweight (K, M), dbias (M,)")
    _backward_f32(dout, x, weight, slope, dx, dweight, dbias, thread_count(n_threads))
