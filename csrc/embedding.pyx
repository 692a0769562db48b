"""The token embedding's gradient: compiled twin of tinygpt.reference.embedding_backward.

out (V, C) starts at zero and each row of dout (N, C) is added into out[ids[i]], in row order,
so every entry is the same sequential sum as np.add.at's. The vocabulary is cut into one range
of ids per thread, each range holding about as many of the N rows as the others; a thread sums
the rows of its ids (whole rows: a split by columns had both cores stream all of dout, and two
threads ran slower than one). Every entry keeps its order of sums whatever the thread count,
so any thread count gives the same bits, and the reference's. The row loop is C, in
embedding.h.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

from kernel_checks cimport require, thread_count


cdef extern from "embedding.h":
    void tg_embedding_add_rows_f32(const int64_t* ids, const float* dout, Py_ssize_t N,
                                   Py_ssize_t C, int64_t lo, int64_t hi, Py_ssize_t* rows,
                                   float* out) noexcept nogil
    void tg_embedding_add_rows_f64(const int64_t* ids, const double* dout, Py_ssize_t N,
                                   Py_ssize_t C, int64_t lo, int64_t hi, Py_ssize_t* rows,
                                   double* out) noexcept nogil


cdef void add_rows(const int64_t* ids, const floating* dout, Py_ssize_t N, Py_ssize_t C,
                   int64_t lo, int64_t hi, Py_ssize_t* rows, floating* out) noexcept nogil:
    if floating is float:
        tg_embedding_add_rows_f32(ids, dout, N, C, lo, hi, rows, out)
    else:
        tg_embedding_add_rows_f64(ids, dout, N, C, lo, hi, rows, out)


def embedding_backward(const floating[:, ::1] dout not None, const int64_t[::1] ids not None,
                       Py_ssize_t vocab_size, floating[:, ::1] out not None, int n_threads):
    """out (V, C) = the rows of dout (N, C) summed per token id in ids (N,), each in [0, V)."""
    require(ids.shape[0] == dout.shape[0] and out.shape[0] == vocab_size
            and out.shape[1] == dout.shape[1], "dout, ids, vocab_size, out")
    cdef Py_ssize_t N = dout.shape[0], C = dout.shape[1], V = out.shape[0], i, t, taken = 0
    cdef int64_t next_id = 0
    cdef Py_ssize_t[::1] count = np.zeros(V, np.intp)  # rows per id
    for i in range(N):  # the rows written must lie inside out
        require(0 <= ids[i] < V, "ids outside [0, V)")
        count[ids[i]] += 1
    if N == 0 or C == 0:
        out[...] = 0
        return
    cdef int nt = thread_count(n_threads)
    # thread t takes the ids [first[t], first[t + 1]): the ids below first[t] hold at least
    # t N / nt rows, and one id fewer would not
    cdef int64_t[::1] first = np.empty(nt + 1, np.int64)
    first[0] = 0
    for t in range(1, nt):
        while taken < t * N // nt:
            taken += count[next_id]
            next_id += 1
        first[t] = next_id
    first[nt] = V
    cdef Py_ssize_t[:, ::1] rows = np.empty((nt, N), np.intp)
    for t in prange(nt, nogil=True, schedule='static', num_threads=nt):
        add_rows(&ids[0], &dout[0, 0], N, C, first[t], first[t + 1], &rows[t, 0], &out[0, 0])
