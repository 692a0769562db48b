"""Rotary positions, in place: compiled twins of tinygpt.reference.rotary_forward/backward.

qkv (N, 3C), N = B * T rows, row r at position r % T: in every head of q and of k, the first
and second halves (x1, x2) of its D values become (x1 cos - x2 sin, x2 cos + x1 sin), with the
row's cos and sin (D/2 values each); backward rotates by minus the angle. v is not touched.
Each row is one prange work item and is rotated on its own, so any thread count gives the same
bits.
"""
from cython cimport floating
from cython.parallel cimport prange

from kernel_checks cimport require, thread_count


cdef void rotate_row(floating* row, const floating* cos, const floating* sin, floating sign,
                     Py_ssize_t n_halves, Py_ssize_t half) noexcept nogil:
    """Rotate n_halves consecutive (x1 | x2) head vectors of 2 * half values at row."""
    cdef Py_ssize_t h, i
    cdef floating x1, x2, s
    cdef floating* head
    for h in range(n_halves):
        head = row + 2 * half * h
        for i in range(half):
            x1, x2, s = head[i], head[half + i], sign * sin[i]
            head[i] = x1 * cos[i] - x2 * s
            head[half + i] = x2 * cos[i] + x1 * s


cdef int rotate(floating[:, ::1] qkv, const floating[:, ::1] cos, const floating[:, ::1] sin,
                int n_heads, floating sign, int n_threads) except -1:
    """Rotate q and k (the first 2C columns of qkv (N, 3C)) of every row; cos, sin (T, D/2)."""
    cdef Py_ssize_t N = qkv.shape[0], C = qkv.shape[1] // 3, T = cos.shape[0]
    cdef Py_ssize_t half = cos.shape[1], r
    require(n_heads >= 1 and qkv.shape[1] == 3 * C and C == n_heads * 2 * half, "qkv, cos")
    require(sin.shape[0] == T and sin.shape[1] == half and T >= 1 and N % T == 0, "cos, sin, qkv")
    cdef int nt = thread_count(n_threads)
    for r in prange(N, nogil=True, schedule='static', num_threads=nt):
        rotate_row(&qkv[r, 0], &cos[r % T, 0], &sin[r % T, 0], sign, 2 * n_heads, half)
    return 0


def rotary_forward(floating[:, ::1] qkv not None, int n_heads, const floating[:, ::1] cos not None,
                   const floating[:, ::1] sin not None, int n_threads):
    """qkv (N, 3C): q and k rotated in place by the angles of cos, sin (T, D/2)."""
    rotate(qkv, cos, sin, n_heads, 1, n_threads)


def rotary_backward(floating[:, ::1] dqkv not None, int n_heads,
                    const floating[:, ::1] cos not None, const floating[:, ::1] sin not None,
                    int n_threads):
    """dqkv (N, 3C): the q and k parts rotated back in place (the transposed rotation)."""
    rotate(dqkv, cos, sin, n_heads, -1, n_threads)
