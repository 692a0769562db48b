"""``tinygpt prepare`` (or ``python -m tinygpt.prepare``): encode a text file into a token
directory, so that training reads its corpus from disk (``tinygpt train --data DIR``) instead of
holding it in memory."""
import argparse
import sys

from . import corpus


def build_parser():
    p = argparse.ArgumentParser(
        prog="tinygpt prepare",
        description="Encode a UTF-8 text file, in constant memory, into DIR/tokens.bin (one id "
                    "per character, in the smallest unsigned type that holds the vocabulary) "
                    "and DIR/corpus.json (the vocabulary). Train from it with --data DIR.")
    p.add_argument("--data", required=True, help="the text file")
    p.add_argument("--out", required=True, help="the directory to write")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tokenizer, count = corpus.prepare(args.data, args.out, progress=sys.stderr.isatty())
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dtype = corpus.token_dtype(tokenizer.vocab_size)
    print(f"wrote {args.out}: {count:,} tokens ({dtype.name}), vocabulary of "
          f"{tokenizer.vocab_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
