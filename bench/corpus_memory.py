"""Peak memory of training from a prepared corpus: 500 MB of tokens against 1 MB.

    python bench/corpus_memory.py [--megabytes 500] [--steps 30] [--work-dir DIR] [--json PATH]

Writes a text of about --megabytes MB (tiny_shakespeare, repeated) into a temporary folder,
encodes it and the 1 MB original with `tinygpt prepare`'s code, then trains the command line's
default model (d_model 128, 5 layers, batch 16 x 128) for --steps steps from each, in a fresh
process each, and reports each process's peak resident memory (ru_maxrss). The goal: the large
corpus costs at most 100 MB more than the small one. The training processes build the split and
the Trainer as `tinygpt train --data DIR` does, without the validation pass (on 50 MB of
validation tokens that pass alone would take hours on two cores).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_MB = 100


def worker(directory, steps):
    """Train from a prepared corpus; the parent reads this process's peak memory."""
    from tinygpt import RunConfig, TinyGPT, Trainer, corpus, data

    tokenizer, ids = corpus.load(directory)
    train_ids, _ = data.split(ids)
    config = RunConfig(max_steps=steps, ema_decay=0.0)
    model = TinyGPT(tokenizer.vocab_size, config.d_model, config.n_heads, config.n_layers,
                    config.model_max_seq_len)
    Trainer(model, train_ids, config.train_config()).run()
    print(json.dumps({"tokens": len(ids)}))


def peak_mb(directory, steps):
    """(peak RSS in MB, tokens) of a worker process training from ``directory``."""
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(directory),
                             "--steps", str(steps)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"the worker on {directory} failed")
    return usage.ru_maxrss / 1024, json.loads(out.strip().splitlines()[-1])["tokens"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--work-dir", default=None, help="where the large files go (deleted)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps)
    from tinygpt import corpus, data

    source = data.dataset_path()
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        piece = source.read_bytes()
        with open(tmp / "big.txt", "wb") as f:
            for _ in range(max(1, args.megabytes * 10**6 // len(piece))):
                f.write(piece)
        start = time.perf_counter()
        corpus.prepare(tmp / "big.txt", tmp / "big")
        prepare_s = time.perf_counter() - start
        (tmp / "big.txt").unlink()
        corpus.prepare(source, tmp / "small")
        small_mb, small_tokens = peak_mb(tmp / "small", args.steps)
        big_mb, big_tokens = peak_mb(tmp / "big", args.steps)
    result = {"steps": args.steps, "small": {"tokens": small_tokens, "peak_rss_mb": small_mb},
              "large": {"tokens": big_tokens, "peak_rss_mb": big_mb},
              "difference_mb": big_mb - small_mb, "goal_mb": GOAL_MB,
              "prepare_seconds": prepare_s, "met": big_mb - small_mb <= GOAL_MB}
    print(f"prepare {big_tokens / 1e6:,.0f} M tokens: {prepare_s:.1f} s")
    print(f"peak RSS over {args.steps} steps: {small_mb:.0f} MB from {small_tokens / 1e6:.1f} M "
          f"tokens, {big_mb:.0f} MB from {big_tokens / 1e6:,.0f} M tokens: "
          f"{big_mb - small_mb:+.0f} MB (goal <= {GOAL_MB}: {'met' if result['met'] else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
