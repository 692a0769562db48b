"""``tinygpt eval`` (or ``python -m tinygpt.eval``): a trained model's loss, perplexity and bits
per character on the validation split or on any text."""
import argparse
import math
import sys

import numpy as np

from . import data, ops
from .checkpoint import load_checkpoint
from .config import RunConfig
from .export import load_model
from .trainer import evaluate


def build_parser():
    p = argparse.ArgumentParser(
        prog="tinygpt eval",
        description="Report a model's mean next-character loss over non-overlapping windows: "
                    "on the validation split (the last 10%%) of its training text, or on all of "
                    "the text given with --data.")
    p.add_argument("--checkpoint", default="out/ckpt.npz",
                   help="a checkpoint (.npz), a .safetensors file or a Hugging Face directory")
    p.add_argument("--data", default=None,
                   help="evaluate on all of this text file (default: the validation split of "
                        "the run's own text, or of tiny_shakespeare)")
    p.add_argument("--seq-len", "--seq_len", type=int, default=None,
                   help="window length (default: the run's seq_len, else max_seq_len)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the CPUs this process may use)")
    return p


def _run_config(path):
    """The RunConfig a training checkpoint was saved with, or None (an exported file)."""
    if not str(path).endswith(".npz"):
        return None
    config = load_checkpoint(path)[2]["extra"].get("config")
    return None if config is None else RunConfig.from_dict(config, source=str(path))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.threads is not None:
            ops.set_num_threads(args.threads)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        model, tokenizer = load_model(args.checkpoint)
        run = _run_config(args.checkpoint)
        seq_len = args.seq_len or (run.seq_len if run else model.config.max_seq_len)
        if not 1 <= seq_len <= model.config.max_seq_len:
            raise ValueError(f"--seq-len must lie in [1, {model.config.max_seq_len}] for this "
                             f"model, got {seq_len}")
        source = args.data or (run.data if run else None)
        text = data.load_text(source)
        tokenizer.check_covers(text, source or "tiny_shakespeare")
        ids = np.array(tokenizer.encode(text), dtype=np.int32)
        if args.data is None:
            _, ids = data.split(ids)
            what = f"the validation split of {source or 'tiny_shakespeare'}"
        else:
            what = args.data
        if len(ids) < 2:
            raise ValueError(f"{what} has {len(ids)} characters; evaluation needs at least 2")
        seq_len = min(seq_len, len(ids) - 1)
        loss = evaluate(model, ids, args.batch_size, seq_len)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    windows = (len(ids) - 1) // seq_len
    print(f"{what}: {windows * seq_len:,} characters in {windows:,} windows of {seq_len}")
    print(f"loss {loss:.4f} nats | perplexity {math.exp(loss):.3f} | "
          f"{loss / math.log(2):.4f} bits per character")
    return 0


if __name__ == "__main__":
    sys.exit(main())
