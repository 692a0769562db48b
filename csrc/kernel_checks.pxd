# Input checks shared by the kernel wrappers: the memory-safety boundary between Python and C.
#
# Every wrapper passes its arrays through float_arrays() and then checks ranks and shapes with
# check_shape(), so a kernel only ever sees C-contiguous float32/float64 arrays of the shapes it
# indexes. Errors name the argument: TypeError for a wrong dtype, ValueError for a wrong shape.

# Upper bound on the OpenMP team size; larger requests are clamped (results do not depend on it).
cdef enum:
    MAX_THREADS = 256


cdef inline tuple float_arrays(tuple names, tuple arrays):
    """Return the arrays C-contiguous, after checking they are float32 or float64, all one dtype."""
    import numpy as np
    cdef list out = []
    first_name = None
    dtype = None
    for name, a in zip(names, arrays):
        a = np.asarray(a)
        if a.dtype != np.float32 and a.dtype != np.float64:
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
        if dtype is None:
            first_name, dtype = name, a.dtype
        elif a.dtype != dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but {first_name} has dtype {dtype}; "
                            f"all arrays must share one dtype")
        out.append(np.ascontiguousarray(a))
    return tuple(out)


cdef inline check_shape(str name, a, tuple shape, str layout):
    """Raise ValueError unless a.shape == shape; layout names the axes, e.g. '(N, C)'."""
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {a.shape}")


cdef inline check_ndim(str name, a, int ndim, str layout):
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {a.shape}")


cdef inline Py_ssize_t positive_int(str name, value) except -1:
    """Validate an integer argument >= 1 (TypeError or ValueError naming it)."""
    import operator
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


cdef inline int thread_count(n_threads) except -1:
    """Validate n_threads (an int >= 1) and clamp it to MAX_THREADS."""
    return min(positive_int("n_threads", n_threads), MAX_THREADS)


cdef inline tuple out_arrays(tuple names, out, tuple shapes, dtype):
    """The arrays a kernel writes into: new ones when out is None; otherwise out (one array, or a
    tuple of them, one per name), each checked to be a writeable C-contiguous array of the
    given shape and dtype."""
    import numpy as np
    cdef list fresh = []
    if out is None:
        for shape in shapes:
            fresh.append(np.empty(shape, dtype))
        return tuple(fresh)
    cdef tuple outs = out if isinstance(out, tuple) else (out,)
    if len(outs) != len(names):
        raise ValueError(f"out must hold {len(names)} arrays {names}, got {len(outs)}")
    for name, a, shape in zip(names, outs, shapes):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype}, got {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{name} must be a writeable C-contiguous array")
    return outs
