"""Benchmark tinygpt on this machine: kernels, thread scaling, training step, generation, memory.

    python bench/run.py [--quick] [--json PATH] [--threads N] [--no-torch]

The kernels, the generation and the first training step run at the lab's configuration (vocab 65,
d_model 128, 4 heads, 4 layers, batch 64, sequence length 128); a second training step at a
larger model (d_model 384, 6 heads, 6 layers, batch 16, sequence length 256). Figures are medians.
In the training-step and generation sections the contenders take turns round by round, and the
sgemm peak that MFU and the linear kernels' share divide by is measured in turns with what it
judges, so a change in the machine's load hits both alike. bench/README.md explains each figure.
"""
import argparse
import functools
import importlib.metadata
import inspect
import json
import operator
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import blas_env  # before NumPy, which loads OpenBLAS
import numpy as np
from threadpoolctl import threadpool_info

import tinygpt
from tinygpt import TinyGPT, ops
from tinygpt.optim import AdamW, clip_grad_norm

REPO = Path(__file__).resolve().parent.parent
VOCAB = 65
LR, MAX_GRAD_NORM = 1e-3, 1.0
SGEMM_SIZE = 2048
SGEMM_FLOPS = 2 * SGEMM_SIZE ** 3
ATTENTION = ("attention_forward", "attention_backward")  # timed together as "attention" too
BLAS_BOUND = ("linear_forward", "linear_backward")  # the twin is sgemm itself: judged by the peak


@dataclass(frozen=True)
class Shape:
    """A model and the batch its training step is timed on."""
    d_model: int
    n_heads: int
    n_layers: int
    seq_len: int
    batch: int

    def describe(self):
        return (f"d={self.d_model}, {self.n_layers} layers, {self.n_heads} heads, "
                f"T={self.seq_len}, B={self.batch}")


SMALL = Shape(d_model=128, n_heads=4, n_layers=4, seq_len=128, batch=64)  # the lab's
LARGE = Shape(d_model=384, n_heads=6, n_layers=6, seq_len=256, batch=16)
OPTIONS = dict(position="rotary", mlp="relu2")  # the block options, whose ops GPT-2's lacks


@dataclass(frozen=True)
class Plan:
    """How many times each section repeats its measurement."""
    kernel_rounds: int
    train_rounds: int
    large_rounds: int
    warmup_rounds: int  # untimed rounds before a training step's timed ones
    generate_tokens: int
    generate_rounds: int
    memory_steps: int


PLANS = {
    "full": Plan(kernel_rounds=20, train_rounds=15, large_rounds=5, warmup_rounds=1,
                 generate_tokens=500, generate_rounds=3, memory_steps=5),
    "quick": Plan(kernel_rounds=3, train_rounds=3, large_rounds=2, warmup_rounds=1,
                  generate_tokens=200, generate_rounds=1, memory_steps=3),
    "smoke": Plan(kernel_rounds=1, train_rounds=1, large_rounds=1, warmup_rounds=0,
                  generate_tokens=20, generate_rounds=1, memory_steps=1),
}


# ---------------------------------------------------------------- timing helpers

_START = time.perf_counter()


def log(message):
    """Progress, with the seconds since start, goes to stderr; stdout holds only the table."""
    print(f"[bench {time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def alternate(contenders, rounds, warmup=1):
    """Call each function ``warmup`` times, then time ``rounds`` rounds in turn (a, b, a, b, ...).

    Returns name -> list of seconds, one per round.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def measure(fn, rounds, warmup_s=0.2):
    """Seconds of each of ``rounds`` back-to-back calls of fn.

    Untimed calls come first, for at least ``warmup_s`` seconds: long enough for threads that
    earlier work left spinning (OpenBLAS's spin for about 0.1 s) to go to sleep.
    """
    end = time.perf_counter() + warmup_s
    fn()
    while time.perf_counter() < end:
        fn()
    return alternate({"fn": fn}, rounds, warmup=0)["fn"]


def in_turns(contenders, rounds):
    """One timed call of each function per round, in turns, each after ``measure``'s warm-up of
    that function: unlike ``alternate``, no call is timed while the threads of the previous
    contender still spin. Returns name -> list of seconds, one per round."""
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name] += measure(fn, 1)
    return times


def median_ms(seconds):
    return 1e3 * statistics.median(seconds)


def spread(seconds):
    """(slowest - fastest) / median of one contender's rounds: how far the load moved it."""
    return (max(seconds) - min(seconds)) / statistics.median(seconds)


def ratio(a, b):
    """a / b, or None when either is missing."""
    return None if a is None or b is None else a / b


def on_backend(name, fn):
    """fn, run with tinygpt's ops on the given backend ("auto" or "numpy")."""
    def run():
        ops.set_backend(name)
        return fn()
    return run


def batch(shape=SMALL, seed=0):
    """A fixed (x, y) batch of random token ids, (batch, seq_len) int64 each."""
    rng = np.random.default_rng(seed)
    size = (shape.batch, shape.seq_len)
    return rng.integers(0, VOCAB, size), rng.integers(0, VOCAB, size)


def make_model(shape=SMALL, **options):
    return TinyGPT(VOCAB, d_model=shape.d_model, n_heads=shape.n_heads, n_layers=shape.n_layers,
                   max_seq_len=shape.seq_len, **options)


# ---------------------------------------------------------------- machine and peak

def machine_info(threads, torch_used):
    """CPU, cores, library versions and thread pools, so a result can be read in context."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pools = threadpool_info()
    blas = [{"library": Path(pool["filepath"]).name, "from": Path(pool["filepath"]).parent.name,
             **{key: pool.get(key) for key in ("internal_api", "version", "threading_layer",
                                               "architecture", "num_threads")}}
            for pool in pools if pool["user_api"] == "blas"]
    openmp = [Path(pool["filepath"]).name for pool in pools if pool["user_api"] == "openmp"]
    return {
        "cpu": cpu,
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "openblas_coretype_dropped": blas_env.DROPPED_CORETYPE,
        "openmp": openmp,
        "torch": installed_version("torch"),
        "torch_used": torch_used,
        "tinygpt": tinygpt.__version__,
        "tinygpt_commit": git_commit(),
        "kernels_built": tinygpt.available_kernels(),
        "backend": ops.backend_summary(),
        "op_backends": ops.op_backends(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": os.getloadavg()[0],
    }


def cpu_features():
    """The SIMD extensions that decide the float32 peak, as NumPy detected them at run time
    ({"avx512f": ..., "avx2": ..., "fma3": ...}; None where NumPy does not say)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as found
    return {name.lower(): found.get(name) for name in ("AVX512F", "AVX2", "FMA3")}


def installed_version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit():
    """Short commit of the checkout, with "+dirty" for uncommitted changes; None outside git."""
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                                  text=True, check=True).stdout.strip()
        dirty = "+dirty" if git("status", "--porcelain") else ""
        return git("rev-parse", "--short", "HEAD") + dirty
    except (OSError, subprocess.CalledProcessError):
        return None


def sgemm_call():
    """A float32 2048^3 np.matmul, the machine's practical peak: MFU's denominator. It is timed
    in turns with what it judges, rounds for rounds."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((SGEMM_SIZE, SGEMM_SIZE), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    return lambda: np.matmul(a, b, out=out)


def peak_gflops(seconds, pick=statistics.median):
    """The sgemm peak from its rounds' seconds: their median, or the round that pick (min,
    max) chooses."""
    return SGEMM_FLOPS / pick(seconds) / 1e9


def sgemm_summary(r):
    """Every sgemm round of the run, from the sections that timed one in turns."""
    seconds = [ms / 1e3 for section in sgemm_sections(r) for ms in section["rounds_ms"]["sgemm"]]
    return {"size": SGEMM_SIZE, "rounds": len(seconds), "median_gflops": peak_gflops(seconds),
            "min_gflops": peak_gflops(seconds, max), "max_gflops": peak_gflops(seconds, min)}


def sgemm_sections(r):
    """The results that hold sgemm rounds: linear kernels and training steps."""
    return [r["kernels"][name] for name in BLAS_BOUND if name in r["kernels"]] + [
        r[key] for key in ("train_step", "train_step_large")]


# ---------------------------------------------------------------- kernels

def kernel_ops():
    """The ops that have a compiled kernel (each has a NumPy twin in tinygpt.reference)."""
    return list(ops.op_backends())


def snapshot(value):
    """A copy of an array argument on a 64-byte boundary, as the model's own arrays are."""
    if not isinstance(value, np.ndarray):
        return value
    copy = ops.empty(value.shape, value.dtype)
    copy[...] = value
    return copy


def capture_calls(names):
    """Op name -> (args, kwargs) of its largest call in one training step (forward, backward,
    AdamW) of the small model, with GPT-2's block and with OPTIONS, copied (the model reuses its
    buffers).

    The MLP's activation runs inside its linear layers (linear_forward with activation=...,
    linear_backward with its slope=...): the forward's arrays stand for the activation ops'
    (forward: its input, recomputed, and output; backward: the output as the gradient, whose
    values do not change the time, and the input), and the linear op's own entry keeps its
    plain calls."""
    largest = {}

    def keep(name, args, kwargs):
        size = sum(a.size for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray))
        if name not in largest or size > largest[name][0]:
            largest[name] = (size, [snapshot(a) for a in args],
                             {key: snapshot(a) for key, a in kwargs.items()})

    def recording(name, fn):
        def record(*args, **kwargs):
            result = fn(*args, **kwargs)
            activation = kwargs.get("activation")
            if activation is not None:  # result: (slope, post = activation(pre))
                pre = originals.get("linear_forward", ops.linear_forward)(*args)
                keep(f"{activation}_forward", [pre], {"out": result[1]})
                keep(f"{activation}_backward", [result[1], pre], {})
            elif kwargs.get("slope") is None:
                keep(name, args, kwargs)
            return result
        return record

    originals = {name: getattr(ops, name) for name in names}
    try:
        for name, fn in originals.items():
            setattr(ops, name, recording(name, fn))
        x, y = batch()
        for options in ({}, OPTIONS):  # GPT-2's block, then the other options' ops
            model = make_model(**options)
            model.loss(x, y)
            model.backward()
            AdamW(model.params, model.grads, model.decay_mask()).step(LR)
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)
    return {name: (args, kwargs) for name, (_, args, kwargs) in largest.items() if name in names}


def kernel_cases(names):
    """Table entry -> (a call through tinygpt.ops, the shapes of its array arguments).

    Each op is called with the arguments of its largest call in a training step of the default
    configuration; "attention" is attention_forward then attention_backward.
    """
    cases = {}
    for name, (args, kwargs) in capture_calls(names).items():
        arrays = [a for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray)]
        cases[name] = (functools.partial(getattr(ops, name), *args, **kwargs),
                       [list(a.shape) for a in arrays])
    if all(name in cases for name in ATTENTION):
        forward, backward = (cases[name][0] for name in ATTENTION)
        cases["attention"] = (lambda: (forward(), backward()),
                              cases[ATTENTION[0]][1] + cases[ATTENTION[1]][1])
    return {name: cases[name] for name in table_order(cases)}


def table_order(names):
    """Each op's forward, backward (and combined entry) together, ops in first-call order."""
    def stem(name):
        return name.removesuffix("_forward").removesuffix("_backward")

    def phase(name):
        return 0 if name.endswith("_forward") else 1 if name.endswith("_backward") else 2

    stems = list(dict.fromkeys(stem(name) for name in names))
    return sorted(names, key=lambda name: (stems.index(stem(name)), phase(name)))


def linear_flops(name, arg_shapes):
    """The matrix products' FLOPs of a linear op with x (N, K) and weight (K, M): 2NKM forward,
    4NKM backward (dx and dweight, 2NKM each). Bias, residual and dbias are not counted."""
    (n, k), (_, m) = arg_shapes[:2] if name == "linear_forward" else arg_shapes[1:3]
    return (2 if name == "linear_forward" else 4) * n * k * m


def bench_kernels(plan, threads):
    """Compiled kernel vs its NumPy twin for every built op, at 1 thread and at ``threads``.

    Each is timed in a block of back-to-back calls rather than interleaved with its twin: after
    a NumPy call, OpenBLAS's idle threads spin on for a while and would slow down a multithreaded
    kernel that runs next. At ``threads``, the linear kernels take turns with the sgemm peak
    instead (``in_turns``), which gives their share of it.
    """
    built = set(tinygpt.available_kernels())
    names = kernel_ops()
    counts = sorted({1, threads})
    results, shapes, sgemm = {}, {}, sgemm_call()
    for name, (call, arg_shapes) in kernel_cases([n for n in names if n in built]).items():
        log(f"kernel {name}")
        per_thread, turns = {}, None
        for n in counts:
            tinygpt.set_num_threads(n)
            kernel = on_backend("auto", call)
            if name in BLAS_BOUND and n == threads:
                turns = in_turns({"kernel": kernel, "sgemm": sgemm}, plan.kernel_rounds)
                kernel_ms = median_ms(turns["kernel"])
            else:
                kernel_ms = median_ms(measure(kernel, plan.kernel_rounds))
            per_thread[str(n)] = {
                "kernel_ms": kernel_ms,
                "numpy_ms": median_ms(measure(on_backend("numpy", call), plan.kernel_rounds))}
        top, one = per_thread[str(threads)], per_thread["1"]
        results[name] = {
            "kernel_ms": top["kernel_ms"],
            "numpy_ms": top["numpy_ms"],
            "speedup": top["numpy_ms"] / top["kernel_ms"],
            "threads": per_thread,
            "scaling": one["kernel_ms"] / top["kernel_ms"] if threads > 1 else None,
            "numpy_scaling": one["numpy_ms"] / top["numpy_ms"] if threads > 1 else None,
        }
        if turns is not None:
            flops = linear_flops(name, arg_shapes)
            gflops, peak = flops / (top["kernel_ms"] / 1e3) / 1e9, peak_gflops(turns["sgemm"])
            results[name].update({
                "flops": flops, "gflops": gflops, "peak_gflops": peak, "peak_share": gflops / peak,
                "spread": {side: spread(ts) for side, ts in turns.items()},
                "rounds_ms": {side: [1e3 * t for t in ts] for side, ts in turns.items()}})
        shapes[name] = arg_shapes
    tinygpt.set_num_threads(threads)
    ops.set_backend("auto")
    setup = {"rounds": plan.kernel_rounds, "thread_counts": counts,
             "missing": [name for name in names if name not in built], "arg_shapes": shapes}
    return results, setup


# ---------------------------------------------------------------- training step

def flops_per_step(n_params, shape):
    """nanoGPT's estimate of one training step's FLOPs: (6 N + 12 L T d) per token."""
    per_token = 6 * n_params + 12 * shape.n_layers * shape.seq_len * shape.d_model
    return per_token * shape.batch * shape.seq_len


def tinygpt_step(model, x, y):
    """One training step of ``model`` on (x, y): forward, backward, clip, AdamW."""
    optimizer = AdamW(model.params, model.grads, model.decay_mask())

    def step():
        model.loss(x, y)
        model.backward()
        clip_grad_norm(model.grads, MAX_GRAD_NORM)
        optimizer.step(LR)
    return step


def torch_setup(threads, shape, x, y, weights_from=None):
    """PyTorch's twin of the model of ``shape``: its step function and its loss before any step.

    ``weights_from`` (a TinyGPT) is copied in when given, so both models start identical.
    """
    import torch
    import torch_model

    torch.set_num_threads(threads)
    model = torch_model.TorchGPT(VOCAB, shape.d_model, shape.n_heads, shape.n_layers,
                                 shape.seq_len)
    if weights_from is not None:
        torch_model.load_tinygpt_weights(model, weights_from)
    optimizer = torch_model.make_optimizer(model, lr=LR)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        first_loss = model(x, y).item()
    return (lambda: torch_model.train_step(model, optimizer, x, y, MAX_GRAD_NORM)), first_loss


# tinygpt's and PyTorch's loss before the first step, same weights and batch, both float32, must
# agree to this relative tolerance, or the step times compare two different computations. They
# differ by 2e-8 (0.2 float32 ulps) on three seeds here; a model that loses one layer's attention
# output at initialization moves the loss by 6e-5 to 2e-4. 1e-5 leaves 400x the measured gap for
# other PyTorch builds, CPUs and thread counts, and still catches a mistake of that size.
FIRST_LOSS_RTOL = 1e-5


class BenchmarkError(RuntimeError):
    """A check of the benchmark's own soundness failed: its figures would mislead."""


def check_first_loss(first_loss, rtol=FIRST_LOSS_RTOL):
    """The relative difference of the first losses ({"tinygpt": ..., "torch": ...}), or None
    without PyTorch; a difference above ``rtol`` (or a nan) raises BenchmarkError."""
    tiny, torch_loss = first_loss["tinygpt"], first_loss["torch"]
    if torch_loss is None:
        return None
    difference = abs(tiny - torch_loss) / abs(torch_loss)
    if not difference <= rtol:
        raise BenchmarkError(
            f"tinygpt and PyTorch disagree on the loss of the same weights and batch before the "
            f"first step: tinygpt {tiny!r}, pytorch {torch_loss!r}, relative difference "
            f"{difference:.2e} > {rtol:g}. bench/torch_model.py no longer computes what "
            f"tinygpt.TinyGPT does, so their step times would not be comparable")
    return difference


def bench_train_step(shape, rounds, warmup, threads, use_torch, with_numpy):
    """Step time of tinygpt (backend "auto": kernels where built), tinygpt on NumPy only (when
    ``with_numpy``) and PyTorch, in turns with the sgemm peak; MFU is the achieved rate over it,
    median against median (the target's), and best round against best round too ("best_mfu":
    each side as the machine's load left it alone, since load only ever slows a round)."""
    x, y = batch(shape)
    kernel_model = make_model(shape)
    contenders = {"tinygpt": on_backend("auto", tinygpt_step(kernel_model, x, y))}
    if with_numpy:
        contenders["numpy"] = on_backend("numpy", tinygpt_step(make_model(shape), x, y))
    contenders["sgemm"] = sgemm_call()  # after NumPy's BLAS, before PyTorch's threads
    first_loss = {"tinygpt": on_backend("auto", lambda: kernel_model.loss(x, y))(),
                  "torch": None}
    if use_torch:
        contenders["torch"], first_loss["torch"] = torch_setup(threads, shape, x, y,
                                                               kernel_model)
        check_first_loss(first_loss)  # a mismatch stops the benchmark before the timing
    log(f"training step ({shape.describe()}): {', '.join(contenders)} x {rounds} rounds")
    times = alternate(contenders, rounds, warmup)
    ops.set_backend("auto")

    n_params = kernel_model.num_parameters()
    flops = flops_per_step(n_params, shape)
    peak = peak_gflops(times["sgemm"])
    ms = {name: median_ms(times[name]) if name in times else None
          for name in ("tinygpt", "numpy", "torch")}
    result = {"tinygpt_ms": ms["tinygpt"], "numpy_ms": ms["numpy"], "torch_ms": ms["torch"],
              "ratio_vs_torch": ratio(ms["tinygpt"], ms["torch"]),
              "speedup_vs_numpy": ratio(ms["numpy"], ms["tinygpt"]), "peak_gflops": peak}
    for name, prefix in (("tinygpt", ""), ("numpy", "numpy_"), ("torch", "torch_")):
        seconds = None if ms[name] is None else ms[name] / 1e3
        gflops = ratio(flops / 1e9, seconds)
        result.update({f"{prefix}tokens_per_sec": ratio(shape.batch * shape.seq_len, seconds),
                       f"{prefix}gflops": gflops, f"{prefix}mfu": ratio(gflops, peak)})
    result["best_mfu"] = flops / min(times["tinygpt"]) / 1e9 / peak_gflops(times["sgemm"], min)
    result.update({"flops_per_step": flops, "n_params": n_params, "d_model": shape.d_model,
                   "n_heads": shape.n_heads, "n_layers": shape.n_layers,
                   "seq_len": shape.seq_len, "batch_size": shape.batch, "rounds": rounds,
                   "warmup_rounds": warmup, "contenders": list(contenders),
                   "first_loss": first_loss,
                   "spread": {name: spread(ts) for name, ts in times.items()},
                   "rounds_ms": {name: [1e3 * t for t in ts] for name, ts in times.items()}})
    return result


# ---------------------------------------------------------------- generation

def bench_generate(plan):
    """tokens/s of ``model.generate`` from a 1-token prompt, with and without the KV cache.

    ``use_cache`` is detected from generate's signature; without it only the full-recompute
    figure exists.
    """
    n = plan.generate_tokens
    # a context window that holds every new token: past the window, generate must re-read the
    # whole cropped context for each token (the positions shift), with or without a cache
    model = TinyGPT(VOCAB, d_model=SMALL.d_model, n_heads=SMALL.n_heads,
                    n_layers=SMALL.n_layers, max_seq_len=max(SMALL.seq_len, n + 1))
    prompt = np.array([0])
    has_cache = "use_cache" in inspect.signature(model.generate).parameters
    if has_cache:
        modes = {"cache": {"use_cache": True}, "no_cache": {"use_cache": False}}
    else:
        modes = {"no_cache": {}}
    runs = {name: (lambda kw=kw: model.generate(prompt, n, seed=0, **kw))
            for name, kw in modes.items()}
    for kw in modes.values():
        model.generate(prompt, 4, seed=0, **kw)  # warm up without a full-length run
    log(f"generation: {n} tokens, {', '.join(runs)} x {plan.generate_rounds} rounds")
    times = alternate(runs, plan.generate_rounds, warmup=0)
    rate = {name: n / statistics.median(ts) for name, ts in times.items()}
    return {"tokens_per_sec": rate.get("cache"), "no_cache_tokens_per_sec": rate["no_cache"],
            "cache_speedup": ratio(rate.get("cache"), rate["no_cache"]),
            "cache_available": has_cache, "new_tokens": n, "prompt_tokens": 1, "batch_size": 1,
            "context_window": model.config.max_seq_len,
            "rounds": plan.generate_rounds}


# ---------------------------------------------------------------- memory

def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB.

    Linux's VmHWM, which starts afresh at exec. ru_maxrss (the fallback elsewhere) does not: a
    child spawned by a big parent inherits the parent's high-water mark and would report it.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_child(which, steps, threads):
    """In a fresh process: train ``steps`` steps with ``which``, print the peak RSS as JSON."""
    tinygpt.set_num_threads(threads)
    x, y = batch()
    if which == "torch":
        import torch  # noqa: F401  (counted in the import figure)
    imported = peak_rss_mb()
    if which == "torch":
        step = torch_setup(threads, SMALL, x, y)[0]
    else:
        step = tinygpt_step(make_model(), x, y)
    for _ in range(steps):
        step()
    print(json.dumps({"import_rss_mb": imported, "peak_rss_mb": peak_rss_mb()}))


def bench_memory(plan, threads, use_torch):
    """Peak RSS of a short training run, each framework in its own fresh subprocess."""
    result = {"steps": plan.memory_steps}
    for which, prefix in (("tinygpt", ""), ("torch", "torch_")):
        figures = {"import_rss_mb": None, "peak_rss_mb": None}
        if which == "tinygpt" or use_torch:
            log(f"peak memory: {which}, {plan.memory_steps} steps in a subprocess")
            command = [sys.executable, __file__, "--memory-child", which,
                       "--memory-steps", str(plan.memory_steps), "--threads", str(threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
        result.update({prefix + key: value for key, value in figures.items()})
    return result


# ---------------------------------------------------------------- targets

COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


def target(value, op, bound, goal):
    """One goal: its figure, ``value op bound`` and whether it holds (None when either side is
    missing from this run)."""
    met = None if value is None or bound is None else bool(COMPARE[op](value, bound))
    return {"value": value, "op": op, "bound": bound, "goal": goal, "met": met}


def check_targets(r):
    """The project's speed and memory goals (issue #13), each against this run's own figures.

    name -> {"value", "op", "bound", "goal" (readable), "met"}. A figure this run lacks (PyTorch
    skipped, fewer than 500 tokens generated) leaves "met" None.
    """
    t, large, g, m = r["train_step"], r["train_step_large"], r["generate"], r["memory"]
    threads = r["machine"]["threads"]
    targets = {
        "train_step.mfu": target(t["mfu"], ">=", 0.80, ">= 0.80 of the sgemm peak"),
        "train_step.ratio_vs_torch": target(t["ratio_vs_torch"], "<=", 0.55,
                                            "<= 0.55x PyTorch's step time"),
        "train_step_large.mfu": target(large["mfu"], ">=", 0.75, ">= 0.75 of the sgemm peak"),
    }
    for name, k in r["kernels"].items():
        if name in ATTENTION:
            continue  # judged together, as "attention"
        if name in BLAS_BOUND:  # the twin is BLAS: held to the peak, not to 3x the twin
            targets[f"kernels.{name}.peak_share"] = target(
                k["peak_share"], ">=", 0.80, ">= 0.80 of the sgemm peak (not 3x: twin is BLAS)")
        else:
            goal = 10 if name == "attention" else 3
            targets[f"kernels.{name}.speedup"] = target(k["speedup"], ">=", goal,
                                                        f">= {goal}x numpy")
        if k["scaling"] is not None:
            targets[f"kernels.{name}.scaling"] = target(k["scaling"], ">=", 1.7,
                                                        f">= 1.7x from 1 thread to {threads}")
    at_500 = g["new_tokens"] >= 500  # --quick makes 200
    targets["generate.tokens_per_sec"] = target(
        g["tokens_per_sec"] if at_500 else None, ">=", 3000, ">= 3,000 tokens/s at 500 tokens")
    targets["generate.cache_speedup"] = target(
        g["cache_speedup"] if at_500 else None, ">=", 10, ">= 10x the recompute at 500 tokens")
    targets["memory.peak_rss_mb"] = target(m["peak_rss_mb"], "<", m["torch_peak_rss_mb"],
                                           "< PyTorch's peak")
    return targets


# ---------------------------------------------------------------- report

def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def simd(features):
    """The widest float32 SIMD the CPU has, as the header names it."""
    return ("AVX-512" if features["avx512f"] else "AVX2" if features["avx2"]
            else "no AVX2") + (" + FMA" if features["fma3"] else "")


def print_machine(r):
    m, sgemm = r["machine"], r["sgemm"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} from {b['from']} ({b['architecture']} "
                     f"kernel, {b['threading_layer']})" for b in m["blas"]) or "unknown BLAS"
    print(f"tinygpt benchmark ({r['mode']}), {m['date']}, commit {m['tinygpt_commit']}")
    print(f"machine: {m['cpu']} ({simd(m['cpu_features'])}), {m['cores']} cores, "
          f"{m['threads']} threads; numpy {m['numpy']}; "
          f"torch {m['torch'] if m['torch_used'] else 'not used'}")
    print(f"BLAS: {blas}")
    if m["openblas_coretype_dropped"]:
        print(f"      (OPENBLAS_CORETYPE={m['openblas_coretype_dropped']} from the environment "
              f"dropped: OpenBLAS picks its kernel for this CPU, as bench/blas_env.py says)")
    print(f"backend: {m['backend']}")
    print(f"sgemm {sgemm['size']}^3 float32, {sgemm['rounds']} rounds in turns with the sections "
          f"below: median {sgemm['median_gflops']:.1f} GFLOP/s, {sgemm['min_gflops']:.1f} to "
          f"{sgemm['max_gflops']:.1f}")


def print_kernels(r):
    setup, counts = r["kernel_setup"], r["kernel_setup"]["thread_counts"]
    print(f"\nkernels: median ms over {setup['rounds']} rounds, each op on its largest call in a "
          f"training step ({SMALL.describe()}, V={VOCAB})")
    heads = "  ".join(f"{f'kern {n}t':>9} {f'numpy {n}t':>9}" for n in counts)
    print(f"{'op':<22} {'backend':>7} {'kernel':>8} {'numpy':>8} {'speedup':>8}  {heads}  "
          f"{'scaling':>7} {'np scal':>7}")
    backends = r["machine"]["op_backends"]
    for name, k in r["kernels"].items():
        cells = "  ".join(f"{k['threads'][str(n)]['kernel_ms']:9.2f} "
                          f"{k['threads'][str(n)]['numpy_ms']:9.2f}" for n in counts)
        backend = backends.get(name, backends.get(f"{name}_forward"))  # "attention": both
        print(f"{name:<22} {backend:>7} {k['kernel_ms']:8.2f} {k['numpy_ms']:8.2f} "
              f"{k['speedup']:7.2f}x  {cells}  {fmt(k['scaling'], '6.2f')}x "
              f"{fmt(k['numpy_scaling'], '6.2f')}x")
    for name in table_order(setup["missing"]):
        print(f"{name:<22} {backends[name]:>7} no compiled kernel: runs on the NumPy reference "
              f"(not timed)")
    linear = [name for name in BLAS_BOUND if name in r["kernels"]]
    if linear:
        print(f"\nlinear kernels against the sgemm peak, in turns, {counts[-1]} threads "
              f"(spread: (max - min) / median of the rounds)")
        print(f"{'op':<22} {'GFLOP':>6} {'ms':>8} {'GFLOP/s':>8} {'peak':>8} {'share':>7} "
              f"{'spread':>7} {'sgemm':>7}")
    for name in linear:
        k = r["kernels"][name]
        print(f"{name:<22} {k['flops'] / 1e9:6.2f} {k['kernel_ms']:8.2f} {k['gflops']:8.1f} "
              f"{k['peak_gflops']:8.1f} {k['peak_share']:7.1%} {k['spread']['kernel']:7.1%} "
              f"{k['spread']['sgemm']:7.1%}")


def print_train_step(r):
    for key, title in (("train_step", "small model"), ("train_step_large", "large model")):
        t = r[key]
        shape = Shape(t["d_model"], t["n_heads"], t["n_layers"], t["seq_len"], t["batch_size"])
        print(f"\ntraining step, {title} ({shape.describe()}): {t['n_params']:,} params, "
              f"{t['flops_per_step'] / 1e9:.2f} GFLOP/step, median of {t['rounds']} rounds in "
              f"turns with the sgemm peak")
        print(f"{'':<16} {'ms':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>7} {'spread':>7}")
        rows = (("tinygpt", "tinygpt", ""), ("tinygpt (numpy)", "numpy", "numpy_"),
                ("pytorch", "torch", "torch_"))
        for label, name, prefix in rows:
            if name in t["contenders"] or name == "torch":
                print(f"{label:<16} {fmt(t[name + '_ms'], '.1f'):>9} "
                      f"{fmt(t[prefix + 'tokens_per_sec'], ',.0f'):>10} "
                      f"{fmt(t[prefix + 'gflops'], '.1f'):>9} {fmt(t[prefix + 'mfu'], '.1%'):>7} "
                      f"{fmt(t['spread'].get(name), '.1%'):>7}")
        print(f"{f'sgemm {SGEMM_SIZE}^3':<16} {statistics.median(t['rounds_ms']['sgemm']):>9.1f} "
              f"{'':>10} {t['peak_gflops']:>9.1f} {'peak':>7} {t['spread']['sgemm']:>7.1%}")
        print(f"best round against best round: MFU {t['best_mfu']:.1%}")
        print(f"tinygpt / pytorch: {fmt(t['ratio_vs_torch'], '.2f')}x the time"
              + (f"; kernels vs numpy backend: {t['speedup_vs_numpy']:.2f}x faster"
                 if t["speedup_vs_numpy"] is not None else
                 f" (small model: {fmt(r['train_step']['ratio_vs_torch'], '.2f')}x)"))
        losses = t["first_loss"]
        if losses["torch"] is not None:
            print(f"same weights, loss before the first step: tinygpt {losses['tinygpt']:.6f}, "
                  f"pytorch {losses['torch']:.6f} (relative difference "
                  f"{check_first_loss(losses):.1e}, at most {FIRST_LOSS_RTOL:g})")


def print_generate(r):
    g = r["generate"]
    print(f"\ngeneration: {g['new_tokens']} new tokens from a 1-token prompt, batch 1")
    print(f"KV cache:       {fmt(g['tokens_per_sec'], ',.0f', 'unavailable')} tokens/s")
    print(f"full recompute: {g['no_cache_tokens_per_sec']:,.0f} tokens/s")
    print(f"cache speedup:  {fmt(g['cache_speedup'], '.2f')}x")


def print_targets(r):
    print("\ntargets (each against this run's own figures)")
    for name, t in r["targets"].items():
        met = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        value = fmt(t["value"], ",.0f" if t["value"] is not None and t["value"] >= 100
                    else f".{target_digits(t['value'], t['bound'])}f")
        print(f"{name:<38} {value:>8}  {t['goal']:<50} {met}")


def target_digits(value, bound, digits=2):
    """Decimals enough that value and bound print apart (0.7997 is not shown as 0.80 >= 0.80)."""
    while (value is not None and bound is not None and value != bound and digits < 6
           and f"{value:.{digits}f}" == f"{bound:.{digits}f}"):
        digits += 1
    return digits


def print_memory(r):
    mem = r["memory"]
    print(f"\npeak RSS of {mem['steps']} training steps in a fresh process (after imports alone)")
    print(f"tinygpt: {mem['peak_rss_mb']:.0f} MiB ({mem['import_rss_mb']:.0f} MiB)")
    print(f"pytorch: {fmt(mem['torch_peak_rss_mb'], '.0f')} MiB "
          f"({fmt(mem['torch_import_rss_mb'], '.0f')} MiB)")


def print_report(r):
    """The human-readable summary of the results dict ``r`` (the same figures as the JSON)."""
    for section in (print_machine, print_kernels, print_train_step, print_generate, print_memory,
                    print_targets):
        section(r)
    m = r["machine"]
    print(f"\ntotal benchmark time: {r['elapsed_s']:.0f} s; 1-minute load average "
          f"{m['load_average_at_start']:.2f} at start, {m['load_average_at_end']:.2f} at end "
          f"(other work on the machine makes every figure noisier)")


# ---------------------------------------------------------------- main

def torch_importable():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repeats: under 2 minutes")
    mode.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # for the tests
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads for kernels, BLAS and PyTorch (default: all cores)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--memory-child", choices=("tinygpt", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-steps", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv=None):
    """Run the benchmark; returns the exit status: 0, or 1 when a check of its soundness (the
    first losses of tinygpt and PyTorch) fails."""
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_steps, args.threads)
        return 0
    try:
        return run_benchmark(args)
    except BenchmarkError as err:
        print(f"bench: FAILED: {err}", file=sys.stderr)
        return 1


def run_benchmark(args):
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = PLANS[mode]
    use_torch = not args.no_torch and torch_importable()
    tinygpt.set_num_threads(args.threads)
    ops.set_backend("auto")

    results = {"mode": mode, "plan": asdict(plan),
               "machine": machine_info(args.threads, use_torch)}
    results["kernels"], results["kernel_setup"] = bench_kernels(plan, args.threads)
    results["train_step"] = bench_train_step(SMALL, plan.train_rounds, plan.warmup_rounds,
                                             args.threads, use_torch, with_numpy=True)
    results["train_step_large"] = bench_train_step(LARGE, plan.large_rounds, plan.warmup_rounds,
                                                   args.threads, use_torch, with_numpy=False)
    results["sgemm"] = sgemm_summary(results)
    results["generate"] = bench_generate(plan)
    results["memory"] = bench_memory(plan, args.threads, use_torch)
    results["targets"] = check_targets(results)
    results["elapsed_s"] = time.perf_counter() - _START
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]

    print_report(results)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
