"""Data-parallel scaling over MPI: 1 rank x 2 threads against 2 ranks x 1 thread, and what the
measurements project for more machines.

    python bench/scaling.py [--rounds 5] [--steps 8] [--json PATH]

needs the mpi extra (`pip install -e ".[mpi]"`: mpi4py and an MPI with its `mpiexec`). It starts
itself under `mpiexec -n 1` and `mpiexec -n 2` in turns, round after round, so that a change in
the machine's load hits both alike. Each run trains the command line's default model (d_model 128,
4 heads, 5 layers, batch 16 x 128, AdamW) on random tokens and times steps after a warm-up,
with the time spent in the gradient Allreduce measured apart. Then it projects, with the
allreduce's cost model, the step time and the scaling efficiency on more machines.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VOCAB, D_MODEL, N_HEADS, N_LAYERS, SEQ_LEN, BATCH = 65, 128, 4, 5, 128, 16
LINKS_GBIT = (1, 10, 100)
MACHINES = (2, 4, 8, 16)
LATENCY_S = {1: 50e-6, 10: 20e-6, 100: 5e-6}  # per message, a typical Ethernet/IB round


def worker(steps):
    """Run under mpiexec: time ``steps`` training steps; rank 0 prints one JSON line."""
    from tinygpt import TinyGPT, TrainConfig, Trainer, distributed

    group = distributed.group()
    reduce_seconds = []
    allreduce = group.allreduce_sum

    def timed_allreduce(array):
        start = time.perf_counter()
        allreduce(array)
        if array.size > 2:  # the gradients, not the (loss, stop) pair
            reduce_seconds.append(time.perf_counter() - start)

    group.allreduce_sum = timed_allreduce
    model = TinyGPT(VOCAB, D_MODEL, N_HEADS, N_LAYERS, SEQ_LEN)
    tokens = np.random.default_rng(0).integers(0, VOCAB, 200_000)
    trainer = Trainer(model, tokens, TrainConfig(batch_size=BATCH, seq_len=SEQ_LEN,
                                                 max_steps=steps + 2), group=group)
    step_seconds = []
    trainer.callback = lambda info: step_seconds.append(BATCH * SEQ_LEN / info["tokens_per_sec"])
    trainer.run()
    if group.rank == 0:
        print(json.dumps({"ranks": group.size, "step_s": step_seconds[2:],
                          "allreduce_s": reduce_seconds[2:], "params": model.num_parameters()}))


def launch(ranks, threads, steps):
    """One timed run under mpiexec -> the worker's JSON."""
    mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker",
                           "--steps", str(steps)], capture_output=True, text=True, env=env,
                          timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"mpiexec -n {ranks} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def allreduce_seconds(n_bytes, machines, gbit):
    """Ring allreduce: each machine sends and receives 2 (m - 1) / m of the buffer, in
    2 (m - 1) messages."""
    if machines == 1:
        return 0.0
    share = 2 * (machines - 1) / machines
    return share * n_bytes * 8 / (gbit * 1e9) + 2 * (machines - 1) * LATENCY_S[gbit]


def project(compute_s, n_bytes):
    """Step time and efficiency on m machines (each like this one, the global batch split m
    ways): compute / m + allreduce. Efficiency = one machine's time / (m x the step time)."""
    rows = []
    for gbit in LINKS_GBIT:
        for machines in MACHINES:
            step = compute_s / machines + allreduce_seconds(n_bytes, machines, gbit)
            rows.append({"gbit": gbit, "machines": machines, "step_ms": 1e3 * step,
                         "efficiency": compute_s / (machines * step)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps)
    runs = {"1x2": [], "2x1": []}
    for round_ in range(args.rounds):
        for name, ranks, threads in (("1x2", 1, 2), ("2x1", 2, 1)):
            runs[name].append(launch(ranks, threads, args.steps))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    step = {name: statistics.median(s for run in rs for s in run["step_s"])
            for name, rs in runs.items()}
    reduce = statistics.median(s for run in runs["2x1"] for s in run["allreduce_s"])
    params = runs["1x2"][0]["params"]
    n_bytes = 4 * params
    tokens = BATCH * SEQ_LEN
    result = {
        "model": {"d_model": D_MODEL, "n_layers": N_LAYERS, "batch": BATCH, "seq_len": SEQ_LEN,
                  "params": params},
        "tokens_per_s": {name: tokens / s for name, s in step.items()},
        "ratio_2x1_vs_1x2": step["1x2"] / step["2x1"],
        "allreduce_ms": 1e3 * reduce,
        "allreduce_share": reduce / step["2x1"],
        "bytes_per_step_per_rank": {"buffer": n_bytes, "sent_ring_2_ranks": n_bytes},
        "spread_ms": {name: [1e3 * min(s for run in rs for s in run["step_s"]),
                             1e3 * max(s for run in rs for s in run["step_s"])]
                      for name, rs in runs.items()},
        "projection": {"today": project(step["1x2"], n_bytes),
                       "10x": project(10 * step["1x2"], 10 * n_bytes)},
        "tokens_per_machine_for_90_percent": {  # the same for a 10x model: both scale by 10
            gbit: {m: math.ceil(9 * allreduce_seconds(n_bytes, m, gbit) / (step["1x2"] / tokens))
                   for m in (2, 16)} for gbit in LINKS_GBIT},
    }
    print(f"1 rank x 2 threads: {result['tokens_per_s']['1x2']:,.0f} tokens/s "
          f"({1e3 * step['1x2']:.1f} ms/step)")
    print(f"2 ranks x 1 thread: {result['tokens_per_s']['2x1']:,.0f} tokens/s "
          f"({1e3 * step['2x1']:.1f} ms/step): {result['ratio_2x1_vs_1x2']:.2f}x (goal >= 0.9)")
    print(f"allreduce of {n_bytes / 1e6:.1f} MB: {result['allreduce_ms']:.2f} ms, "
          f"{100 * result['allreduce_share']:.1f}% of a step")
    for name, rows in result["projection"].items():
        print(f"projection, {name} model (compute per step on one machine x"
              f"{1 if name == 'today' else 10}):")
        for row in rows:
            print(f"  {row['gbit']:>3} Gbit/s, {row['machines']:>2} machines: "
                  f"{row['step_ms']:8.1f} ms/step, efficiency {row['efficiency']:.2f}")
    print("tokens each machine must process per step for 90% efficiency (compute >= 9x the "
          "allreduce):")
    for gbit, need in result["tokens_per_machine_for_90_percent"].items():
        print(f"  {gbit:>3} Gbit/s: {need[2]:,} on 2 machines, {need[16]:,} on 16 "
              f"(today's batch: {tokens:,} tokens per step in all)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
