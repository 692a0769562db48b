# The kernels' own guards: only what keeps a direct call inside its arrays. And isa_level, the
# switch between SIMD paths that the tests use.
#
# tinygpt/ops.py checks every user's input and says what is wrong with it. The kernels take
# typed memoryviews (Cython rejects a wrong dtype, rank or layout, or None where `not None`),
# and check with require() that the shapes agree with each other, so a call that bypasses ops
# raises instead of reading or writing past an array.

# Upper bound on the OpenMP team size; larger requests are clamped (results do not depend on it).
cdef enum:
    MAX_THREADS = 256


cdef inline int require(bint ok, str what) except -1:
    """Raise ValueError unless ok; what names the shapes that disagree."""
    if not ok:
        raise ValueError(f"kernel called with inconsistent shapes: {what}")
    return 0


cdef inline int thread_count(int n_threads) noexcept nogil:
    """n_threads clamped to 1..MAX_THREADS."""
    return max(1, min(n_threads, <int>MAX_THREADS))


cdef inline int isa_level(name, dict names, int cpu_isa) except -1:
    """For a module's _use_isa (tests): the level of the SIMD path named (names: level -> name),
    or cpu_isa, the CPU's best, for None. ValueError for a name unknown or beyond the CPU."""
    levels = {v: k for k, v in names.items()}
    if name is None:
        return cpu_isa
    if name not in levels:
        raise ValueError(f"unknown kernel path {name!r}; expected one of {sorted(levels)}")
    if levels[name] > cpu_isa:
        raise ValueError(f"this CPU cannot run the {name} path")
    return levels[name]
