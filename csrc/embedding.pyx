"""The token embedding's gradient: compiled twin of tinygpt.reference.embedding_backward.

out (V, C) starts at zero and each row of dout (N, C) is added into out[ids[i]], in row order,
so every entry is the same sequential sum as np.add.at's. The columns are cut into one block
per thread, each a prange work item that passes over all rows: the sums keep their order
whatever the thread count, so any thread count gives the same bits, and the reference's.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

from kernel_checks cimport require, thread_count


cdef void add_rows(const int64_t* ids, const floating* dout, floating* out, Py_ssize_t N,
                   Py_ssize_t V, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """out[:, c0:c1] = the rows of dout[:, c0:c1] summed per id, in row order."""
    cdef Py_ssize_t i, c
    cdef floating* dst
    cdef const floating* src
    for i in range(V):
        for c in range(c0, c1):
            out[i * C + c] = 0
    for i in range(N):
        dst = out + ids[i] * C
        src = dout + i * C
        for c in range(c0, c1):
            dst[c] = dst[c] + src[c]


def embedding_backward(const floating[:, ::1] dout not None, const int64_t[::1] ids not None,
                       Py_ssize_t vocab_size, floating[:, ::1] out not None, int n_threads):
    """out (V, C) = the rows of dout (N, C) summed per token id in ids (N,), each in [0, V)."""
    require(ids.shape[0] == dout.shape[0] and out.shape[0] == vocab_size
            and out.shape[1] == dout.shape[1], "dout, ids, vocab_size, out")
    cdef Py_ssize_t N = dout.shape[0], C = dout.shape[1], V = out.shape[0], i, block, width
    for i in range(N):  # the rows written must lie inside out
        require(0 <= ids[i] < V, "ids outside [0, V)")
    if N == 0 or C == 0:
        out[...] = 0
        return
    cdef int nt = thread_count(n_threads)
    width = (C + nt - 1) // nt
    for block in prange((C + width - 1) // width, nogil=True, schedule='static', num_threads=nt):
        add_rows(&ids[0], &dout[0, 0], &out[0, 0], N, V, C, block * width,
                 min(C, (block + 1) * width))
