"""Quality at a fixed time budget: the recipe on several seeds, and the recipe minus each lever.

    python bench/recipe.py seeds [--seeds 0 1 2] [--out runs]
    python bench/recipe.py ablation [--seed 0] [--out runs]
    python bench/recipe.py table [--out runs]

The recipe is the command line's defaults: `tinygpt train` with no flags. ``seeds`` runs it as it
is, once per seed. ``ablation`` runs it and, for each lever in LEVERS, the recipe with that one
lever taken out, each for the same wall time: first every variant's training step is timed on
this machine (in turns, so that a change of load hits them alike), then each one gets the
number of steps (``--max-steps``) that its step time fits into the recipe's own training time.
Each run writes its usual files into OUT/<variant>-seed<k>/; ``table`` prints the finished runs
as Markdown (final validation loss, minutes of training, steps), as docs/results.md shows them.
Runs go one after another with all of the machine's CPUs; nothing else should run meanwhile.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
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
}
TIMED_STEPS = 12  # per variant and round, after 3 warm-up steps


def step_seconds(settings, rounds=3):
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


def train(name, values, seed, out):
    """One `tinygpt train` run into out/<name>-seed<seed>; returns its directory."""
    run_dir = Path(out) / f"{name.replace(' ', '-')}-seed{seed}"
    command = [sys.executable, "-m", "tinygpt.train", "--seed", str(seed),
               "--out-dir", str(run_dir), *flags(values)]
    print(" ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    summary = {"name": name, "seed": seed, "flags": values,
               "wall_seconds": time.perf_counter() - start}
    (run_dir / "run.json").write_text(json.dumps(summary, indent=1))
    return run_dir


def recipe_steps():
    """The recipe's number of steps on tiny_shakespeare's training split."""
    config = RunConfig()
    _, train_ids, _ = data.load_dataset()
    model = TinyGPT(65, config.d_model, config.n_heads, config.n_layers, config.model_max_seq_len)
    return Trainer(model, train_ids, config.train_config()).total_steps


def run_ablation(args):
    variants = {"recipe": {}, **{f"without {lever}": values for lever, values in LEVERS.items()}}
    seconds = step_seconds(variants)
    steps = recipe_steps()
    for name, values in variants.items():
        planned = steps if name == "recipe" else int(steps * seconds["recipe"] / seconds[name])
        print(f"{name}: {1000 * seconds[name]:.1f} ms a step -> {planned} steps", flush=True)
        run_values = values if name == "recipe" else {**values, "max_steps": planned}
        train(name, run_values, args.seed, args.out)


def run_seeds(args):
    for seed in args.seeds:
        train("recipe", {}, seed, args.out)


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
    parser.add_argument("what", choices=("seeds", "ablation", "table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed", type=int, default=0, help="the ablation's seed")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "tinygpt-recipe"))
    args = parser.parse_args(argv)
    {"seeds": run_seeds, "ablation": run_ablation, "table": table}[args.what](args)


if __name__ == "__main__":
    main()
