# What the Cython kernels see of kernel_math.h, the shared C of csrc/ (its rules are written
# there: branch-free selects so that loops vectorize without -ffast-math, sums in a fixed order
# so that no result depends on the thread count, TG_DISPATCH for the SIMD clones).

cdef extern from "kernel_math.h":
    # Number of interleaved partial sums in the row reductions: tg_row_sum's, and the running
    # maxima of cross_entropy.h. The tests build their boundary cases around it.
    enum: LANES "TG_ROW_SUM_LANES"
