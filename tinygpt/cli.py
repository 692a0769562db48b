"""The ``tinygpt`` command: one entry point for every subcommand.

    tinygpt train | sample | eval | export | plot | prepare [options]

Each subcommand is also ``python -m tinygpt.<name>``; ``tinygpt <name> --help`` lists its options.
"""
import importlib
import sys

from . import __version__

COMMANDS = {
    "train": "train a model (checkpoints, samples, loss plot; --resume continues a run)",
    "sample": "generate text from a checkpoint or exported model",
    "eval": "loss, perplexity and bits per character on the validation split or any text",
    "export": "write a checkpoint as safetensors or a Hugging Face (GPT-2 or NeoX) directory",
    "plot": "redraw OUT_DIR/loss.png from OUT_DIR/history.json",
    "prepare": "encode a large text file into a token directory to train from disk",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return ("usage: tinygpt {" + ",".join(COMMANDS) + "} [options]\n\n"
            "Train a tiny GPT on a CPU, sample from it, evaluate and export it.\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n"
            "'tinygpt COMMAND --help' lists a command's options; 'tinygpt --version'.")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"tinygpt {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tinygpt: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"tinygpt.{name}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
