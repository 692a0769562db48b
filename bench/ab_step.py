"""Time the benchmark's training step of two source trees in turns, one step each.

    python bench/ab_step.py TREE_A TREE_B [--pairs 40] [--threads 2] [--ops] [--large]

Each tree (a checkout whose kernels are built in place: `python setup.py build_ext --inplace`)
runs in a worker process of its own, `PYTHONPATH=<tree>`, on run.py's lab model and batch (with
--large, its larger model: d 384, 6 layers, T 256, batch 16). The
workers take turns step by step (which one goes first alternates), so that a change in the
machine's load hits both alike: on a shared host, whole runs of either side minutes apart
differed by more than the kernels did. Prints each side's median and fastest step and the
median of the paired differences B - A; with --ops, the same per tinygpt.ops op.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def worker(threads, with_ops, large):
    """Build the lab model (large: run.py's larger one), then time one step per line read from
    stdin; print its seconds (and, with_ops, each op's) as a JSON object per step."""
    import time
    from collections import defaultdict

    import profile_step
    import run
    import tinygpt

    tinygpt.set_num_threads(threads)
    shape = run.LARGE if large else run.SMALL
    x, y = run.batch(shape)
    model = run.make_model(shape)
    step = run.tinygpt_step(model, x, y)
    totals = defaultdict(float)
    if with_ops:
        profile_step.timed_ops(totals, defaultdict(float))
    for _ in range(3):
        step()
    print(f"ready {model.num_parameters()}", flush=True)
    for _ in sys.stdin:
        totals.clear()
        start = time.perf_counter()
        step()
        print(json.dumps({"step": time.perf_counter() - start, **totals}), flush=True)


def start(tree, threads, with_ops, large):
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    command = [sys.executable, str(BENCH / "ab_step.py"), "--worker", "--threads", str(threads)]
    command += ["--ops"] * with_ops + ["--large"] * large
    process = subprocess.Popen(command, env=env, text=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    ready, _, n_params = process.stdout.readline().partition(" ")
    if ready != "ready":
        raise SystemExit(f"ab_step: the worker for {tree} did not start")
    return process, int(n_params)


def one_step(process):
    process.stdin.write("step\n")
    process.stdin.flush()
    return json.loads(process.stdout.readline())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", metavar="TREE", help="TREE_A TREE_B")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--ops", action="store_true", help="also each op's time")
    parser.add_argument("--large", action="store_true", help="the benchmark's larger model")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.pairs < 1:
        parser.error("--threads and --pairs must be >= 1")
    if args.worker:
        return worker(args.threads, args.ops, args.large)
    if len(args.trees) != 2 or not all(Path(t, "tinygpt").is_dir() for t in args.trees):
        parser.error("give two source trees, each holding a tinygpt/ package")
    (a, n_params), (b, _) = (start(tree, args.threads, args.ops, args.large)
                             for tree in args.trees)
    rounds = []
    for i in range(args.pairs):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        done = {first: one_step(first), second: one_step(second)}
        rounds.append((done[a], done[b]))
    for process in (a, b):
        process.stdin.close()
        process.wait()
    model = "larger model" if args.large else "lab model"
    print(f"{args.pairs} pairs, {args.threads} threads, {model} ({n_params:,} parameters): "
          f"A = {args.trees[0]}, B = {args.trees[1]}")
    print(f"{'ms':24} {'A median':>9} {'B median':>9} {'A best':>8} {'B best':>8} "
          f"{'B - A':>8}  B faster")
    for key in rounds[0][0]:
        ta, tb = ([1e3 * r[side].get(key, 0.0) for r in rounds] for side in (0, 1))
        diffs = [y - x for x, y in zip(ta, tb)]
        print(f"{key:24} {statistics.median(ta):9.2f} {statistics.median(tb):9.2f} "
              f"{min(ta):8.2f} {min(tb):8.2f} {statistics.median(diffs):+8.2f}  "
              f"{sum(d < 0 for d in diffs)} of {args.pairs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
