"""``python -m tinygpt.sample``: generate text from a trained checkpoint, streamed as it comes."""
import argparse
import sys

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint
from .model import check_sampling


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tinygpt.sample",
                                description="Generate text from a tinygpt checkpoint.")
    p.add_argument("--checkpoint", default="out/ckpt.npz", help="path to ckpt.npz")
    p.add_argument("--prompt", default="ROMEO:", help="text to continue")
    p.add_argument("--prompt-file", "--prompt_file", default=None,
                   help="read the prompt from this file instead")
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = always the likeliest")
    p.add_argument("--top-k", "--top_k", type=int, default=None, help="keep the k likeliest")
    p.add_argument("--top-p", "--top_p", type=float, default=None,
                   help="keep the smallest set of tokens whose probability reaches p")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", "--num_samples", type=int, default=1)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
        text = args.prompt
        if args.prompt_file is not None:
            with open(args.prompt_file, encoding="utf-8") as f:
                text = f.read()
        model, tokenizer, _, _ = load_checkpoint(args.checkpoint)
        prompt = np.array(tokenizer.encode(text), dtype=np.int64)
        if prompt.size == 0:
            raise ValueError("the prompt must not be empty")
        check_sampling(args.temperature, args.top_k, args.top_p)
        rng = np.random.default_rng(args.seed)

        def stream(ids):
            sys.stdout.write(tokenizer.decode(ids))
            sys.stdout.flush()

        for i in range(args.num_samples):
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---")
            sys.stdout.write(text)
            model.generate(prompt, args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=rng.integers(2**63),
                           on_token=stream)
            print(flush=True)
    except (OSError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
