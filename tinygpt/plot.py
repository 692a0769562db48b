"""loss.png from a training history, and ``tinygpt plot OUT_DIR`` (or ``python -m tinygpt.plot``)."""
import argparse
import io
import json
import sys
from pathlib import Path

from .files import atomic_write_bytes


def plot_history(history: dict, path) -> None:
    """Write a PNG: train/val loss, learning rate and gradient norm against step."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is

    fig = Figure(figsize=(8, 9))
    ax_loss, ax_lr, ax_norm = fig.subplots(3, 1, sharex=True,
                                           gridspec_kw={"height_ratios": [2, 1, 1]})
    ax_loss.plot(history["step"], history["train_loss"], lw=0.8, alpha=0.8, label="train")
    if history["eval_step"]:
        ax_loss.plot(history["eval_step"], history["val_loss"], "o-", label="val")
    ax_loss.set_ylabel("loss (nats)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(history["step"], history["lr"], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    ax_norm.plot(history["step"], history["grad_norm"], lw=0.8, color="tab:red")
    ax_norm.set_ylabel("grad norm\n(before clipping)")
    ax_norm.set_xlabel("step")
    ax_norm.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tinygpt plot",
                                     description="Draw OUT_DIR/loss.png from OUT_DIR/history.json.")
    parser.add_argument("out_dir", nargs="?", default="out")
    args = parser.parse_args(argv)
    source = Path(args.out_dir) / "history.json"
    try:
        history = json.loads(source.read_text())
        plot_history(history, Path(args.out_dir) / "loss.png")
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot plot {source}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out_dir) / 'loss.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
