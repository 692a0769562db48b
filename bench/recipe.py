"""Quality at a fixed time budget: the recipe on several seeds, and the recipe minus each lever.

    python bench/recipe.py seeds [--seeds 0 1 2] [--out runs] [--jobs 1]
    python bench/recipe.py ablation [--seed 0] [--out runs] [--jobs 1]
    python bench/recipe.py seeds ablation ...   (both, in one queue)
    python bench/recipe.py table [--out runs]

The recipe is the command line's defaults: `tinygpt train` with no flags. ``seeds`` runs it as it
is, once per seed. ``ablation`` runs it and, for each lever in LEVERS, the recipe with that one
lever taken out, each for the same wall time: first every variant's training step is timed on
this machine (in turns, so that a change of load hits them alike), then each one gets the
number of steps (``--max-steps``) that its step time fits into the recipe's own training time.
That plan is saved as OUT/plan.json and reused by a later call: time it on a quiet machine.
Each run writes its usual files into OUT/<variant>-seed<k>/, and a run already finished there
(its run.json written) is not run again; ``table`` prints the finished runs as Markdown (final
validation loss, minutes of training, steps), as docs/results.md shows them.

Runs go one after another with all of the machine's CPUs; nothing else should run meanwhile.
``--jobs N`` runs N at a time instead, each on its share of the CPUs: the losses are the same
(a run's bits do not depend on its thread count; the steps are still planned from timings on
all the CPUs), but the minutes in the table are then those of the shared machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tinygpt import TinyGPT, Trainer, data
from tinygpt.config import RunConfig

# lever -> the flags that take it out of the recipe (each is a default of RunConfig)
LEVERS = {
    "rotary positions": {"position": "learned"},
    "squared-ReLU MLP": {"mlp": "gelu"},
    "Muon": {"optimizer": "adamw"},
    "dropping the short batch": {"last_batch": "keep"},
    "weight decay 0.6": {"weight_decay": 0.1},
    "the weight average": {"ema_decay": 0.0},
}
TIMED_STEPS = 12  # per variant and round, after 3 warm-up steps


def step_seconds(settings, rounds=10):
    """Median seconds of a training step of each variant (name -> settings), timed in turns on
    random tokens with the variant's model and optimizer."""
    tokens = np.random.default_rng(0).integers(0, 65, 200_000)
    trainers = {}
    for name, values in settings.items():
        config = RunConfig(**values)
        model = TinyGPT(65, config.d_model, config.n_heads, config.n_layers,
                        config.model_max_seq_len, position=config.position, mlp=config.mlp)
        trainers[name] = Trainer(model, tokens, config.train_config())
    times = {name: [] for name in settings}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            batches = trainer._batches()
            for i in range(3 + TIMED_STEPS):
                _, x, y = next(batches)
                start = time.perf_counter()
                trainer.train_step(x, y)
                if i >= 3:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def flags(values):
    return [part for key, value in values.items()
            for part in (f"--{key.replace('_', '-')}", str(value))]


def train(name, values, seed, out, threads=None):
    """One `tinygpt train` run into out/<name>-seed<seed>, unless it has finished there."""
    run_dir = Path(out) / f"{name.replace(' ', '-')}-seed{seed}"
    if (run_dir / "run.json").exists():
        print(f"{run_dir}: finished before", flush=True)
        return
    command = [sys.executable, "-m", "tinygpt.train", "--seed", str(seed),
               "--out-dir", str(run_dir), *flags(values)]
    if threads is not None:
        command += ["--threads", str(threads)]
    print(" ".join(command[1:]), flush=True)
    start = time.perf_counter()
    if threads is None:
        subprocess.run(command, check=True)
    else:  # beside other runs: its progress goes to a log of its own
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    summary = {"name": name, "seed": seed, "flags": values, "threads": threads,
               "wall_seconds": time.perf_counter() - start}
    (run_dir / "run.json").write_text(json.dumps(summary, indent=1))


def train_all(runs, out, jobs):
    """The runs [(name, values, seed)], ``jobs`` at a time, each on its share of the CPUs (all
    of them, unsplit, with one job)."""
    if jobs == 1:
        for run in runs:
            train(*run, out)
        return
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda run: train(*run, out, threads), runs))


def recipe_steps():
    """The recipe's number of steps on tiny_shakespeare's training split."""
    config = RunConfig()
    _, train_ids, _ = data.load_dataset()
    model = TinyGPT(65, config.d_model, config.n_heads, config.n_layers, config.model_max_seq_len)
    return Trainer(model, train_ids, config.train_config()).total_steps


def ablation_runs(seed, out):
    """The recipe and each variant without one lever, with the steps that fit the recipe's
    time: [(name, flags, seed)], from OUT/plan.json when an earlier call saved one."""
    plan_path = Path(out) / "plan.json"
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
    else:
        variants = {"recipe": {}, **{f"without {lever}": values
                                     for lever, values in LEVERS.items()}}
        seconds = step_seconds(variants)
        steps = recipe_steps()
        plan = {name: {"flags": values, "step_ms": 1000 * seconds[name],
                       "steps": int(steps * seconds["recipe"] / seconds[name])}
                for name, values in variants.items()}
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps(plan, indent=1))
    runs = []
    for name, entry in plan.items():
        print(f"{name}: {entry['step_ms']:.1f} ms a step -> {entry['steps']} steps", flush=True)
        values = entry["flags"] if name == "recipe" else {**entry["flags"],
                                                          "max_steps": entry["steps"]}
        runs.append((name, values, seed))
    return runs


def table(args):
    rows = []
    for summary_path in sorted(Path(args.out).glob("*/run.json")):
        summary = json.loads(summary_path.read_text())
        history = json.loads((summary_path.parent / "history.json").read_text())
        rows.append((summary["name"], summary["seed"], history["val_loss"][-1],
                     history["eval_seconds"][-1] / 60, summary["wall_seconds"] / 60,
                     history["step"][-1]))
    print("| run | seed | final val loss | minutes of training | minutes in all | steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, seed, loss, train_min, wall_min, steps in rows:
        print(f"| {name} | {seed} | {loss:.4f} | {train_min:.1f} | {wall_min:.1f} | {steps} |")
    recipe = [row[2] for row in rows if row[0] == "recipe"]
    if len(recipe) > 1:
        print(f"\nrecipe over {len(recipe)} seeds: mean {statistics.mean(recipe):.4f}, "
              f"spread {max(recipe) - min(recipe):.4f} (min {min(recipe):.4f}, "
              f"max {max(recipe):.4f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="+", choices=("seeds", "ablation", "table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed", type=int, default=0, help="the ablation's seed")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "tinygpt-recipe"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    args = parser.parse_args(argv)
    runs = [("recipe", {}, seed) for seed in args.seeds] if "seeds" in args.what else []
    if "ablation" in args.what:
        runs += [run for run in ablation_runs(args.seed, args.out) if run not in runs]
    train_all(runs, args.out, args.jobs)
    if "table" in args.what:
        table(args)


if __name__ == "__main__":
    main()
