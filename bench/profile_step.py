"""Where a training step's time goes: milliseconds, share and GFLOP/s per op.

    python bench/profile_step.py [--steps 10] [--threads N] [--d-model 128 --n-layers 4 ...]

Times ``loss`` + ``backward`` + gradient clipping + AdamW of the lab's model (d_model 128, 4
layers, 4 heads) at batch 64 x 128, the benchmark's training step, over ``--steps`` steps after
3 warm-up steps, with every tinygpt.ops function wrapped in a timer. "everything else" is the
step's time outside the ops (the embedding lookup, clipping, Python). The linear layers' GFLOP/s
count 2NKM multiply-adds forward and 4NKM backward (dx and dW); a linear layer that runs the
MLP's activation too ("linear_forward + gelu") has a row of its own, whose GFLOP/s count the
products alone.
"""
import argparse
import collections
import functools
import time

import blas_env  # noqa: F401  (before NumPy, which loads OpenBLAS: the peak is this CPU's)
import numpy as np

from tinygpt import TinyGPT, ops
from tinygpt.optim import AdamW, clip_grad_norm

LINEAR_FLOPS = {"linear_forward": 2, "linear_backward": 4}  # x NKM
SGEMM_SIZE = 2048


def sgemm_gflops(rounds=3):
    """The machine's practical peak: GFLOP/s of a float32 2048^3 np.matmul, best of rounds."""
    a, b = (np.random.default_rng(i).standard_normal((SGEMM_SIZE,) * 2, dtype=np.float32)
            for i in range(2))
    out = np.empty_like(a)
    best = min(_seconds(lambda: np.matmul(a, b, out=out)) for _ in range(rounds))
    return 2 * SGEMM_SIZE ** 3 / best / 1e9


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_ops(totals, flops):
    """Wrap every public tinygpt.ops op so that its seconds (and linear FLOPs) add up in
    totals and flops; returns the originals to restore."""
    names = [*ops.op_backends(), "relu2_forward", "relu2_backward", "rotary_forward",
             "rotary_backward"]
    originals = {name: getattr(ops, name) for name in dict.fromkeys(names)}

    last = {}  # the activation of the last linear forward that ran one

    def timer(name, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            # a linear layer that runs its activation too (forward), or its slope (backward:
            # the last such forward's activation), is a row of its own
            if kwargs.get("activation"):
                last["activation"] = kwargs["activation"]
            fused = kwargs.get("activation") or (kwargs.get("slope") is not None
                                                 and last.get("activation"))
            label = name + (f" + {fused}" if fused else "")
            totals[label] += time.perf_counter() - start
            if name in LINEAR_FLOPS:
                x, weight = (args[1], args[2]) if name == "linear_backward" else args[:2]
                flops[label] += LINEAR_FLOPS[name] * x.shape[0] * x.shape[1] * weight.shape[1]
            return result
        return run

    for name, fn in originals.items():
        setattr(ops, name, timer(name, fn))
    return originals


def profile(model, x, y, steps):
    optimizer = AdamW(model.params, model.grads, model.decay_mask())

    def step():
        model.loss(x, y)
        model.backward()
        clip_grad_norm(model.grads, 1.0)
        optimizer.step(1e-3)

    for _ in range(3):
        step()
    totals, flops = collections.defaultdict(float), collections.defaultdict(float)
    originals = timed_ops(totals, flops)
    try:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        total = time.perf_counter() - start
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)
    return total / steps, {name: t / steps for name, t in totals.items()}, \
        {name: f / steps for name, f in flops.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--position", default="learned")
    parser.add_argument("--mlp", default="gelu")
    args = parser.parse_args(argv)
    if args.threads:
        ops.set_num_threads(args.threads)
    model = TinyGPT(65, args.d_model, args.n_heads, args.n_layers, args.seq_len,
                    position=args.position, mlp=args.mlp)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, 65, (args.batch, args.seq_len)) for _ in range(2))
    before = sgemm_gflops()
    step, per_op, flops = profile(model, x, y, args.steps)
    peak = max(before, sgemm_gflops())  # the better of before and after: load only lowers it
    print(f"step {1000 * step:.1f} ms ({args.steps} steps), {ops.get_num_threads()} threads, "
          f"backend {ops.backend_summary()}, sgemm peak {peak:.0f} GFLOP/s\n")
    print("| op | ms per step | share | GFLOP/s | of sgemm peak |")
    print("| --- | --- | --- | --- | --- |")
    rows = sorted(per_op.items(), key=lambda item: -item[1])
    rows.append(("everything else", step - sum(per_op.values())))
    for name, seconds in rows:
        rate = flops.get(name, 0) / seconds / 1e9 if name in flops else None
        extra = f"{rate:.0f} | {rate / peak:.0%}" if rate else "|"
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / step:.0%} | {extra} |")


if __name__ == "__main__":
    main()
