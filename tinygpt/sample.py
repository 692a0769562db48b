"""``tinygpt sample`` (or ``python -m tinygpt.sample``): generate text from a trained model,
streamed as it comes."""
import argparse
import sys

import numpy as np

from . import ops
from .textgen import load


def build_parser():
    p = argparse.ArgumentParser(prog="tinygpt sample",
                                description="Generate text from a tinygpt model.")
    p.add_argument("--checkpoint", default="out/ckpt.npz",
                   help="a checkpoint (.npz), a .safetensors file or a Hugging Face directory "
                        "written by tinygpt export")
    p.add_argument("--prompt", default="ROMEO:", help="text to continue")
    p.add_argument("--prompt-file", "--prompt_file", default=None,
                   help="read the prompt from this file instead")
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = always the likeliest")
    p.add_argument("--top-k", "--top_k", type=int, default=None, help="keep the k likeliest")
    p.add_argument("--top-p", "--top_p", type=float, default=None,
                   help="keep the smallest set of tokens whose probability reaches p")
    p.add_argument("--repetition-penalty", "--repetition_penalty", type=float, default=1.0,
                   help="> 1 makes characters already in the text less likely (1: off)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end a sample where this text first appears (repeatable; backslash "
                        "escapes such as \\n are understood)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", "--num_samples", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the CPUs this process may use)")
    return p


def _unescape(text):
    """'\\n' typed on a command line -> a newline (and the other backslash escapes)."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
        if args.threads is not None:
            ops.set_num_threads(args.threads)
        text = args.prompt
        if args.prompt_file is not None:
            with open(args.prompt_file, encoding="utf-8") as f:
                text = f.read()
        if not text:
            raise ValueError("the prompt must not be empty")
        stops = [_unescape(s) for s in args.stop or []]
        generator = load(args.checkpoint)
        generator.tokenizer.encode(text)  # a character outside the vocabulary: say so first
        rng = np.random.default_rng(args.seed)

        def stream(new_text):
            sys.stdout.write(new_text)
            sys.stdout.flush()

        for i in range(args.num_samples):
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---")
            sys.stdout.write(text)
            generator.generate(text, args.max_new_tokens, args.temperature, top_k=args.top_k,
                               top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                               stop=stops, seed=rng.integers(2**63), on_text=stream)
            print(flush=True)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
