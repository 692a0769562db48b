"""One function per op: checks its input, then runs the compiled kernel or the NumPy reference.

Backends (TINYGPT_BACKEND sets the one at import):
  "auto"    the default: each op on its compiled kernel where it was built, else the reference
  "cython"  compiled kernels, required: choosing it with any kernel missing raises
  "numpy"   the NumPy reference for every op

A kernel module that fails to import warns once, at import, naming the ops that fall back.
``op_backends`` and ``backend_summary`` say what each op really runs on. Kernel threads default
to OMP_NUM_THREADS or the CPUs this process may run on; ``set_num_threads`` changes them.
"""
import contextlib
import importlib
import itertools
import math
import os
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from . import reference

BACKENDS = ("auto", "cython", "numpy")
_REBUILD = ("reinstall tinygpt so that its kernels build (`pip install -e .` in a checkout; "
            "needs a C compiler)")
_KERNEL_MODULES = {
    "layernorm_forward": "_layernorm",
    "layernorm_backward": "_layernorm",
    "gelu_forward": "_gelu",
    "gelu_backward": "_gelu",
    "attention_forward": "_attention",
    "attention_backward": "_attention",
    "softmax_cross_entropy": "_cross_entropy",
    "linear_forward": "_linear",
    "linear_backward": "_linear",
    "relu2_forward": "_relu2",
    "relu2_backward": "_relu2",
    "rotary_forward": "_rotary",
    "rotary_backward": "_rotary",
    "embedding_backward": "_embedding",
    "adamw_update": "_adamw",
}


def _ops_of(module_name):
    return [op for op, module in _KERNEL_MODULES.items() if module == module_name]


def _load_kernels():
    """Import every kernel module, warning once for each that fails.

    Returns (op name -> compiled function, module name -> its import error's text).
    """
    found, failed = {}, {}
    for module_name in dict.fromkeys(_KERNEL_MODULES.values()):
        try:
            module = importlib.import_module(f"tinygpt.{module_name}")
        except ImportError as error:
            failed[module_name] = f"{type(error).__name__}: {error}"
            warnings.warn(
                f"tinygpt: compiled kernel tinygpt.{module_name} failed to import "
                f"({failed[module_name]}); {', '.join(_ops_of(module_name))} will run on the "
                f"slower NumPy reference; {_REBUILD}",
                RuntimeWarning, stacklevel=2)
            continue
        for op in _ops_of(module_name):
            found[op] = getattr(module, op)
    return found, failed


# How long an idle OpenMP thread of the kernels spins before it sleeps (libgomp reads this once,
# when the first kernel loads it). libgomp's default, 300,000 spins, kept both cores busy into
# Muon's update, whose own threads then waited for a core: 21 against 15 ms a step of the
# default model. 10,000 still bridges the gap between two kernels. A value the user set stays.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_kernels, _kernel_errors = _load_kernels()
_state = {"backend": None, "threads": None}


def available_kernels():
    """Names of the ops that have a compiled kernel in this install."""
    return sorted(_kernels)


def _missing_kernels_message():
    lines = [f"  tinygpt.{module} ({', '.join(_ops_of(module))}): {error}"
             for module, error in _kernel_errors.items()]
    return ("backend 'cython' needs every compiled kernel, but these failed to import:\n"
            + "\n".join(lines)
            + f"\nChoose the backend 'auto' or 'numpy', or {_REBUILD}")


def set_backend(name):
    """Select "auto", "cython" (raises RuntimeError if any kernel is missing) or "numpy"."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if name == "cython" and _kernel_errors:
        raise RuntimeError(_missing_kernels_message())
    _state["backend"] = name


def get_backend():
    return _state["backend"]


@contextlib.contextmanager
def using_backend(name):
    """Run the ops inside a ``with`` block on another backend, then restore the previous one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def op_backends():
    """Op name -> "cython" or "numpy": what each op runs on under the current backend."""
    compiled = _state["backend"] != "numpy"
    return {op: "cython" if compiled and op in _kernels else "numpy" for op in _KERNEL_MODULES}


def backend_summary():
    """One line for banners: the backend and which ops run compiled."""
    backend = _state["backend"]
    if backend == "numpy":
        return "numpy (reference)"
    on_numpy = [op for op, where in op_backends().items() if where == "numpy"]
    total = len(_KERNEL_MODULES)
    if not on_numpy:
        compiled = f"cython ({total} of {total} ops compiled)"
        return compiled if backend == "cython" else f"auto: {compiled}"
    if len(on_numpy) == total:
        return f"auto: numpy for all {total} ops (kernels missing)"
    return (f"auto: numpy for {', '.join(on_numpy)} (kernels missing); "
            f"cython for the other {total - len(on_numpy)}")


def set_num_threads(n):
    """Threads for the compiled kernels and for BLAS outside them (an int >= 1).

    The kernel that calls BLAS from its OpenMP threads (linear) holds it to one thread there,
    so OpenMP and OpenBLAS threads never compete for the same cores.
    """
    _expect_count("number of threads", n)
    _state["threads"] = int(n)
    threadpool_limits(limits=int(n), user_api="blas")


def get_num_threads():
    return _state["threads"]


def _default_threads():
    """OMP_NUM_THREADS if set, else the CPUs this process may run on (its affinity)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


set_backend(os.environ.get("TINYGPT_BACKEND", "auto"))
_state["threads"] = _default_threads()


ALIGNMENT = 64  # bytes: a cache line, and an AVX-512 vector


def empty(shape, dtype):
    """np.empty(shape, dtype) whose data starts on a 64-byte boundary. NumPy's large arrays
    start 16 bytes past one, so a kernel's vector loads and stores straddle two cache lines
    and a head's row of 32 floats spans three: on 64-byte boundaries attention runs 7-10%
    faster (AMD EPYC, 2 threads). The model's activations and the ops' new outputs use it."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


def _kernel(op):
    """The compiled kernel that runs op on the current backend, or None: the reference."""
    return None if _state["backend"] == "numpy" else _kernels.get(op)


def _run(op, args, out, shapes):
    """The op on the current backend, args checked by the caller. Its array results go into
    ``out`` when given (checked by _expect_out), else into new arrays: of the given shapes and
    the first argument's dtype for a kernel, which writes into the arrays it is handed."""
    kernel = _kernel(op)
    if kernel is not None:
        outs = tuple(empty(shape, args[0].dtype) for shape in shapes) if out is None else \
            out if isinstance(out, tuple) else (out,)
        loss = kernel(*args, *outs, _state["threads"])
        arrays = outs if len(outs) > 1 else outs[0]
        return (loss, arrays) if op == "softmax_cross_entropy" else arrays
    result = getattr(reference, op)(*args)
    if out is None:
        return result
    if isinstance(out, tuple):
        for target, value in zip(out, result):
            target[...] = value
        return out
    if isinstance(result, tuple):  # softmax_cross_entropy: (loss, dlogits)
        out[...] = result[1]
        return result[0], out
    out[...] = result
    return out


# ---------------------------------------------------------------- input checks

def _float_arrays(**arrays):
    """Check that every array is float32/float64 with one shared dtype; return them C-contiguous."""
    first = None
    out = []
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
        if first is None:
            first = name, a.dtype
        elif a.dtype != first[1]:
            raise TypeError(f"{name} has dtype {a.dtype} but {first[0]} has dtype {first[1]}; "
                            f"all inputs must share one dtype")
        out.append(np.ascontiguousarray(a))
    return out


def _expect_out(out, specs, dtype, inputs):
    """Check ``out``, the arrays an op is to write into: None, or one array per (name, shape) in
    specs (a tuple of them when there are several), each writeable, C-contiguous, of the inputs'
    dtype, and sharing no memory with the inputs or with each other."""
    if out is None:
        return
    outs = out if isinstance(out, tuple) else (out,)
    if len(outs) != len(specs) or (len(specs) > 1) != isinstance(out, tuple):
        names = tuple(name for name, _ in specs)
        raise ValueError(f"out must be {'a tuple of ' if len(specs) > 1 else ''}"
                         f"{len(specs)} array{'s' if len(specs) > 1 else ''} {names}")
    for i, ((name, shape), a) in enumerate(zip(specs, outs)):
        label = "out" if len(specs) == 1 else f"out {name}"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{label} must be a numpy array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{label} must have dtype {dtype}, got {a.dtype}")
        _expect_shape(label, a, shape)
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{label} must be a writeable C-contiguous array")
        if any(np.may_share_memory(a, other) for other in (*inputs, *outs[:i])):
            raise ValueError(f"{label} overlaps an input or another output")


def _expect_count(name, value):
    """value: an integer >= 1 (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _expect_shape(name, a, shape):
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")


def _expect_ndim(name, a, ndim):
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")


def _expect_rows(x):
    """x (N, C) with C >= 1: rows to normalize."""
    _expect_ndim("x", x, 2)
    if x.shape[1] == 0:
        raise ValueError(f"x must have at least one channel (C >= 1), got shape {x.shape}")


def _elementwise(op, args, out):
    """An elementwise op on arrays of one shape: the kernels see them flat (views of the
    C-contiguous arrays), and the result has the arrays' shape."""
    flat = _run(op, tuple(a.reshape(-1) for a in args), None if out is None else out.reshape(-1),
                [(args[0].size,)])
    return flat.reshape(args[0].shape) if out is None else out


def _expect_matmul(x, weight):
    """x (N, K) and weight (K, M), both non-empty."""
    _expect_ndim("x", x, 2)
    _expect_ndim("weight", weight, 2)
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must have {x.shape[1]} rows to multiply x {x.shape}, "
                         f"got shape {weight.shape}")
    if x.size == 0 or weight.size == 0:
        raise ValueError(f"x {x.shape} and weight {weight.shape} must not be empty")


# ---------------------------------------------------------------- ops

ACTIVATIONS = ("gelu", "relu2")  # what a linear layer can run on its output


def _expect_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {activation!r}")


def _fused_linear(op, dtype):
    """_linear's op (linear_act_forward or _backward), which runs the activation on each work
    item's rows while they are in cache: where linear runs compiled on its own float32 GEMM.
    None elsewhere: the activation is then an op of its own."""
    if _kernel("linear_forward") is None or dtype != np.float32:
        return None
    linear = importlib.import_module("tinygpt._linear")
    return getattr(linear, op) if linear._kernel_isa() != "blas" else None


def _new_or(out, shapes, dtype):
    """out, or new arrays of the shapes."""
    return out if out is not None else tuple(empty(shape, dtype) for shape in shapes)


def linear_forward(x, weight, bias=None, residual=None, *, activation=None, out=None):
    """x (N, K), weight (K, M), bias (M,) or None, residual (N, M) or None
    -> out (N, M) = residual + x @ weight + bias.

    With an activation ("gelu" or "relu2"; no residual then): out is (slope, post), each
    (N, M): with pre = x @ weight + bias, post = activation(pre) and slope = activation'(pre),
    what linear_backward(..., slope=) multiplies by (the bits of this op, the activation's
    forward, and its backward of ones)."""
    optional = {name: a for name, a in (("bias", bias), ("residual", residual)) if a is not None}
    x, weight, *rest = _float_arrays(x=x, weight=weight, **optional)
    optional = dict(zip(optional, rest))
    _expect_matmul(x, weight)
    if "bias" in optional:
        _expect_shape("bias", optional["bias"], weight.shape[1:])
    if "residual" in optional:
        _expect_shape("residual", optional["residual"], (x.shape[0], weight.shape[1]))
    shape = (x.shape[0], weight.shape[1])
    inputs = (x, weight, *optional.values())
    if activation is None:
        _expect_out(out, [("out", shape)], x.dtype, inputs)
        return _run("linear_forward", (x, weight, optional.get("bias"),
                                       optional.get("residual")), out, [shape])
    _expect_activation(activation)
    if "residual" in optional:
        raise ValueError("linear_forward takes a residual or an activation, not both")
    _expect_out(out, [("slope", shape), ("post", shape)], x.dtype, inputs)
    slope, post = _new_or(out, [shape, shape], x.dtype)
    fused = _fused_linear("linear_act_forward", x.dtype)
    if fused is not None:
        fused(x, weight, optional.get("bias"), activation, slope, post, _state["threads"])
    else:
        pre = slope  # pre is read before slope is written over it, element by element
        _run("linear_forward", (x, weight, optional.get("bias"), None), pre, [shape])
        _elementwise(f"{activation}_forward", (pre,), post)
        _elementwise(f"{activation}_backward", (np.ones_like(pre), pre), slope)
    return slope, post


def linear_backward(dout, x, weight, *, slope=None, out=None):
    """dout (N, M), then forward's x (N, K), weight (K, M) -> dx (N, K), dweight, dbias (M,).

    With slope (N, K): x was an activation's output and slope its derivative at the input
    (linear_forward's with an activation); dx is the gradient at that input, dx * slope (the
    same bits as this op and the activation's backward in turn)."""
    optional = {} if slope is None else {"slope": slope}
    dout, x, weight, *rest = _float_arrays(dout=dout, x=x, weight=weight, **optional)
    _expect_matmul(x, weight)
    (N, K), M = x.shape, weight.shape[1]
    _expect_shape("dout", dout, (N, M))
    shapes = [(N, K), (K, M), (M,)]
    _expect_out(out, list(zip(("dx", "dweight", "dbias"), shapes)), x.dtype,
                (dout, x, weight, *rest))
    if slope is None:
        return _run("linear_backward", (dout, x, weight), out, shapes)
    (slope,) = rest
    _expect_shape("slope", slope, (N, K))
    dx, dweight, dbias = _new_or(out, shapes, x.dtype)
    fused = _fused_linear("linear_act_backward", x.dtype)
    if fused is not None:
        fused(dout, x, weight, slope, dx, dweight, dbias, _state["threads"])
    else:
        # the gradient at x, the activation's output, then times the activation's slope
        _run("linear_backward", (dout, x, weight), (dx, dweight, dbias), shapes)
        np.multiply(dx, slope, out=dx)
    return dx, dweight, dbias


def layernorm_forward(x, weight, bias, eps=1e-5, *, out=None):
    """x (N, C), weight (C,), bias (C,) -> out (N, C), mean (N,), rstd (N,)."""
    x, weight, bias = _float_arrays(x=x, weight=weight, bias=bias)
    _expect_rows(x)
    _expect_shape("weight", weight, x.shape[1:])
    _expect_shape("bias", bias, x.shape[1:])
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    shapes = [x.shape, x.shape[:1], x.shape[:1]]
    _expect_out(out, list(zip(("out", "mean", "rstd"), shapes)), x.dtype, (x, weight, bias))
    return _run("layernorm_forward", (x, weight, bias, float(eps)), out, shapes)


def layernorm_backward(dout, x, weight, mean, rstd, residual=None, *, out=None):
    """dout (N, C), then forward's x, weight, mean, rstd, and residual (N, C) or None
    -> dx (N, C) = residual + the gradient through the norm, dweight (C,), dbias (C,).

    residual is the gradient that reaches x by another path (the residual stream); out's dx may
    be residual itself, which then accumulates in place."""
    optional = {} if residual is None else {"residual": residual}
    dout, x, weight, mean, rstd, *rest = _float_arrays(dout=dout, x=x, weight=weight, mean=mean,
                                                       rstd=rstd, **optional)
    _expect_rows(x)
    _expect_shape("dout", dout, x.shape)
    _expect_shape("weight", weight, x.shape[1:])
    _expect_shape("mean", mean, x.shape[:1])
    _expect_shape("rstd", rstd, x.shape[:1])
    residual = rest[0] if rest else None
    if residual is not None:
        _expect_shape("residual", residual, x.shape)
    shapes = [x.shape, weight.shape, weight.shape]
    in_place = isinstance(out, tuple) and out[0] is residual  # dx accumulates into residual
    inputs = (dout, x, weight, mean, rstd, *([] if in_place or residual is None else [residual]))
    _expect_out(out, list(zip(("dx", "dweight", "dbias"), shapes)), x.dtype, inputs)
    return _run("layernorm_backward", (dout, x, weight, mean, rstd, residual), out, shapes)


def _activation_forward(op, x, out):
    """An elementwise activation: x (any shape) -> out (same shape)."""
    (x,) = _float_arrays(x=x)
    _expect_out(out, [("out", x.shape)], x.dtype, (x,))
    return _elementwise(op, (x,), out)


def _activation_backward(op, dout, x, out):
    """An elementwise activation's backward: dout, then forward's x (same shape) -> dx."""
    dout, x = _float_arrays(dout=dout, x=x)
    _expect_shape("dout", dout, x.shape)
    _expect_out(out, [("dx", x.shape)], x.dtype, (dout, x))
    return _elementwise(op, (dout, x), out)


def gelu_forward(x, *, out=None):
    """tanh-approximate GELU, elementwise: x (any shape) -> out (same shape)."""
    return _activation_forward("gelu_forward", x, out)


def gelu_backward(dout, x, *, out=None):
    """dout, then forward's x (same shape) -> dx."""
    return _activation_backward("gelu_backward", dout, x, out)


def relu2_forward(x, *, out=None):
    """Squared ReLU, elementwise: x (any shape) -> out (same shape) = max(x, 0)^2."""
    return _activation_forward("relu2_forward", x, out)


def relu2_backward(dout, x, *, out=None):
    """dout, then forward's x (same shape) -> dx."""
    return _activation_backward("relu2_backward", dout, x, out)


def _expect_qkv(qkv, n_heads):
    """qkv (B, T, 3C) with C divisible by n_heads; returns (B, T, C)."""
    _expect_ndim("qkv", qkv, 3)
    _expect_count("n_heads", n_heads)
    B, T, C3 = qkv.shape
    if C3 == 0 or C3 % 3 or (C3 // 3) % n_heads:
        raise ValueError(f"qkv's last axis must be 3C with C >= 1 divisible by n_heads "
                         f"= {n_heads}, got shape {qkv.shape}")
    return B, T, C3 // 3


def attention_forward(qkv, n_heads, *, out=None):
    """Causal self-attention. qkv (B, T, 3C) = [q | k | v] -> out (B, T, C), lse (B, H, T)."""
    (qkv,) = _float_arrays(qkv=qkv)
    B, T, C = _expect_qkv(qkv, n_heads)
    shapes = [(B, T, C), (B, n_heads, T)]
    _expect_out(out, list(zip(("out", "lse"), shapes)), qkv.dtype, (qkv,))
    return _run("attention_forward", (qkv, int(n_heads)), out, shapes)


def attention_backward(dout, qkv, att, lse, n_heads, *, out=None):
    """dout (B, T, C), then forward's qkv (B, T, 3C), att (its out, (B, T, C)), lse (B, H, T)
    -> dqkv (B, T, 3C)."""
    dout, qkv, att, lse = _float_arrays(dout=dout, qkv=qkv, att=att, lse=lse)
    B, T, C = _expect_qkv(qkv, n_heads)
    _expect_shape("dout", dout, (B, T, C))
    _expect_shape("att", att, (B, T, C))
    _expect_shape("lse", lse, (B, n_heads, T))
    _expect_out(out, [("dqkv", qkv.shape)], qkv.dtype, (dout, qkv, att, lse))
    return _run("attention_backward", (dout, qkv, att, lse, int(n_heads)), out, [qkv.shape])


def _rotary(op, qkv, n_heads, cos, sin):
    """Check a rotary op's arguments, then rotate q and k of qkv in place."""
    if not isinstance(qkv, np.ndarray) or not (qkv.flags.c_contiguous and qkv.flags.writeable):
        raise ValueError("qkv must be a writeable C-contiguous numpy array (rotated in place)")
    qkv, cos, sin = _float_arrays(qkv=qkv, cos=cos, sin=sin)
    B, T, C = _expect_qkv(qkv, n_heads)
    if (C // n_heads) % 2:
        raise ValueError(f"rotary positions need an even head size, got {C // n_heads}")
    _expect_shape("cos", cos, (T, C // n_heads // 2))
    _expect_shape("sin", sin, (T, C // n_heads // 2))
    kernel = _kernel(op)
    if kernel is None:
        qkv[...] = getattr(reference, op)(qkv, int(n_heads), cos, sin)
    else:
        kernel(qkv.reshape(-1, qkv.shape[-1]), int(n_heads), cos, sin, _state["threads"])
    return qkv


def rotary_forward(qkv, n_heads, cos, sin):
    """Rotary positions, in place: qkv (B, T, 3C) = [q | k | v], cos and sin (T, D/2) of each
    row's angles -> qkv with every head of q and k rotated (reference.rotary_forward)."""
    return _rotary("rotary_forward", qkv, n_heads, cos, sin)


def rotary_backward(dqkv, n_heads, cos, sin):
    """dqkv (B, T, 3C) at rotary_forward's output -> at its input, in place; forward's cos, sin."""
    return _rotary("rotary_backward", dqkv, n_heads, cos, sin)


def softmax_cross_entropy(logits, targets, *, out=None):
    """logits (N, V), targets (N,) ints with -1 = ignore -> (mean loss, dlogits (N, V));
    ``out`` receives dlogits."""
    (logits,) = _float_arrays(logits=logits)
    _expect_ndim("logits", logits, 2)
    targets = _ids("targets", targets, logits.shape[:1], -1, logits.shape[1])
    if not (targets >= 0).any():
        raise ValueError("every target is -1 (ignored): the mean loss is undefined")
    _expect_out(out, [("dlogits", logits.shape)], logits.dtype, (logits,))
    return _run("softmax_cross_entropy", (logits, targets), out, [logits.shape])


def embedding_backward(dout, ids, vocab_size, *, out=None):
    """dout (N, C), ids (N,) in [0, vocab_size) -> the token embedding's gradient
    (vocab_size, C): each row of dout added into its id's row, in row order."""
    (dout,) = _float_arrays(dout=dout)
    _expect_ndim("dout", dout, 2)
    _expect_count("vocab_size", vocab_size)
    ids = _ids("ids", ids, dout.shape[:1], 0, vocab_size)
    shapes = [(int(vocab_size), dout.shape[1])]
    _expect_out(out, [("out", shapes[0])], dout.dtype, (dout,))
    return _run("embedding_backward", (dout, ids, int(vocab_size)), out, shapes)


def _ids(name, ids, shape, low, high):
    """ids as C-contiguous int64, after checking that they are integers of the given shape,
    each in [low, high)."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {ids.dtype}")
    _expect_shape(name, ids, shape)
    # in the ids' own dtype: a uint64 beyond int64 would wrap to a negative value once cast
    bad = np.flatnonzero((ids < low) | (ids >= high))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {ids[i]} is outside [{low}, {high})")
    return np.ascontiguousarray(ids, dtype=np.int64)


def adamw_update(params, grads, m, v, decay, lr, beta1, beta2, eps, t):
    """One AdamW step t (1, 2, ...) in place: params, m, v (n,) from grads and decay (n,), the
    per-element weight decay rate. With the bias corrections c1 = 1 - beta1^t, c2 = 1 - beta2^t
    folded into the step size and epsilon:
        m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;  params -= lr decay params
        params -= lr sqrt(c2) / c1 * m / (sqrt(v) + eps sqrt(c2))
    Returns params."""
    arrays = {"params": params, "grads": grads, "m": m, "v": v, "decay": decay}
    _, grads, _, _, decay = _float_arrays(**arrays)  # strided grads or decay: copied
    _expect_ndim("params", params, 1)
    for name, a in arrays.items():
        _expect_shape(name, a, params.shape)
    for name, a in (("params", params), ("m", m), ("v", v)):
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{name} must be a writeable C-contiguous array (updated in place)")
    if any(np.may_share_memory(a, b) for a, b in itertools.combinations(arrays.values(), 2)):
        raise ValueError(f"{', '.join(arrays)} must not share memory")
    _expect_count("the step number t", t)
    c1, c2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
    scalars = (beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr, eps * math.sqrt(c2),
               lr * math.sqrt(c2) / c1)
    kernel = _kernel("adamw_update")
    if kernel is None:
        params[...], m[...], v[...] = reference.adamw_update(params, grads, m, v, decay, *scalars)
    else:
        kernel(params, grads, m, v, decay, *map(float, scalars), _state["threads"])
    return params
