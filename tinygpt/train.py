"""``python -m tinygpt.train``: train on tiny_shakespeare (or any text), checkpoint, sample."""
import argparse
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import data, ops
from .checkpoint import load_checkpoint, save_checkpoint
from .files import atomic_write_text
from .model import TinyGPT
from .plot import plot_history
from .tokenizer import CharTokenizer
from .trainer import Trainer, _positive_int

def _flag(parser, name, **kwargs):
    """Add --a-flag also spelled --a_flag."""
    spellings = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
    parser.add_argument(*spellings, **kwargs)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m tinygpt.train",
        description="Train a tiny GPT on tiny_shakespeare (or any text file) and sample from it.")
    _flag(p, "data", default=None, help="text file to train on (default: tiny_shakespeare, "
          "found through $TINYGPT_DATA, the user cache, or a download)")
    _flag(p, "out-dir", default="out", help="where ckpt.npz, history.json, samples.txt go")
    _flag(p, "epochs", type=int, default=12)
    _flag(p, "max-steps", type=int, default=None, help="stop after this many steps")
    _flag(p, "batch-size", type=int, default=16,
          help="sequences per step (the lab suggests 64; 16 reaches a lower val loss in the same "
          "time, see README)")
    _flag(p, "seq-len", type=int, default=128)
    _flag(p, "d-model", type=int, default=128)
    _flag(p, "n-heads", type=int, default=4)
    _flag(p, "n-layers", type=int, default=5,
          help="transformer blocks (the lab suggests 4; 5 reaches a lower val loss, see README)")
    _flag(p, "max-seq-len", type=int, default=None, help="position table size (default: seq-len)")
    _flag(p, "dropout", type=float, default=0.0,
          help="dropout rate of the embeddings and residual branches while training")
    _flag(p, "lr", type=float, default=2.5e-3,
          help="peak learning rate (the lab suggests 1e-3; 2.5e-3 reaches a lower val loss in the "
          "same time, see README)")
    _flag(p, "ema-decay", type=float, default=0.998,
          help="evaluate, sample and save a moving average of the weights with this decay per "
          "step (0: off, the raw weights)")
    _flag(p, "warmup-steps", type=int, default=100)
    _flag(p, "weight-decay", type=float, default=0.1)
    _flag(p, "max-grad-norm", type=float, default=1.0)
    _flag(p, "eval-interval", type=int, default=None, help="steps between evaluations")
    _flag(p, "seed", type=int, default=0)
    _flag(p, "threads", type=int, default=None, help="CPU threads for kernels and BLAS")
    _flag(p, "prompt", default="ROMEO:", help="prompt for the final sample")
    _flag(p, "sample-tokens", type=int, default=500, help="length of the final sample")
    _flag(p, "checkpoint-interval", type=int, default=100,
          help="steps between checkpoints (one is also written at every evaluation and the end)")
    _flag(p, "resume", action="store_true",
          help="continue the run saved in --out-dir (its own settings are used)")
    return p


def _format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Progress:
    """A tqdm bar on a terminal; elsewhere a plain line every ``every`` steps. Evals get a line."""

    def __init__(self, trainer, every=50):
        self.every, self.total = every, trainer.total_steps
        self.start_step, self.start = trainer.step, time.perf_counter()
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=trainer.step, unit="step", dynamic_ncols=True)

    def step(self, info):
        step = info["step"]
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {info['loss']:.4f} | {info['tokens_per_sec']:,.0f} tok/s")
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total or step == self.start_step + 1:
            elapsed = time.perf_counter() - self.start
            eta = elapsed / (step - self.start_step) * (self.total - step)
            print(f"step {step:5d}/{self.total} | loss {info['loss']:.4f} | "
                  f"lr {info['lr']:.2e} | grad norm {info['grad_norm']:.3f} | "
                  f"{info['tokens_per_sec']:,.0f} tok/s | ETA {_format_eta(eta)}", flush=True)

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _encode_prompt(tokenizer, prompt):
    """The prompt's ids, or the first vocabulary character when the prompt does not fit."""
    try:
        return tokenizer.encode(prompt) or [0]
    except ValueError:
        return [0]


class _Run:
    """One command-line run: the trainer plus the files it keeps in the out dir."""

    def __init__(self, args, trainer, tokenizer):
        self.args, self.trainer, self.tokenizer = args, trainer, tokenizer
        self.out = Path(args.out_dir)
        self.samples = []
        if args.resume and (self.out / "samples.txt").is_file():
            self.samples.append((self.out / "samples.txt").read_text(encoding="utf-8"))
        self.progress = None

    def sample(self, n_tokens, temperature=0.8):
        prompt = np.array(_encode_prompt(self.tokenizer, self.args.prompt))
        with self.trainer.eval_weights():
            out = self.trainer.model.generate(prompt, n_tokens, temperature=temperature,
                                              seed=self.args.seed + self.trainer.step)
        return self.tokenizer.decode(out)

    def save(self, name="ckpt.npz", plot=True):
        """Checkpoint, history and (if ``plot``) loss plot, each written atomically."""
        t = self.trainer
        save_checkpoint(self.out / name, t.model, self.tokenizer, t.optimizer, t.step,
                        extra={"args": vars(self.args), "trainer": t.state()}, average=t.average)
        if name == "ckpt.npz":
            atomic_write_text(self.out / "history.json", json.dumps(t.history, indent=1))
            if plot and t.history["step"]:
                plot_history(t.history, self.out / "loss.png")

    def add_sample(self, header, text):
        self.samples.append(f"=== {header} ===\n{text}\n")
        atomic_write_text(self.out / "samples.txt", "\n".join(self.samples))

    def on_step(self, info):
        self.progress.step(info)
        step = info["step"]
        if "val_loss" in info:
            self.progress.write(f"eval step {step}: val loss {info['val_loss']:.4f} | "
                                f"val perplexity {info['val_perplexity']:.2f}")
            history = self.trainer.history
            self.add_sample(f"step {step}, val loss {info['val_loss']:.4f}", self.sample(200))
            if info["val_loss"] <= min(history["val_loss"]):
                self.save("best.npz")
        if step % self.args.checkpoint_interval == 0 or "val_loss" in info:
            self.save(plot="val_loss" in info)  # plotting takes ~0.5 s: only at evaluations


def _handle_sigint(trainer):
    """First Ctrl-C: finish the current step, then stop. A second one interrupts at once."""
    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint "
              "(press again to quit without saving)", file=sys.stderr, flush=True)
    return signal.signal(signal.SIGINT, handler)


def _build(args):
    """(trainer, tokenizer) for a fresh run, or for the run saved in out_dir with --resume."""
    text = data.load_text(args.data)
    tokenizer = CharTokenizer(text)
    ids = np.array(tokenizer.encode(text), dtype=np.int32)
    train_ids, val_ids = data.split(ids)
    model = TinyGPT(tokenizer.vocab_size, args.d_model, args.n_heads, args.n_layers,
                    args.max_seq_len or args.seq_len, seed=args.seed,
                    dropout=getattr(args, "dropout", 0.0))  # runs saved before --dropout: 0
    trainer = Trainer(model, train_ids, args.epochs, args.batch_size, args.seq_len, args.lr,
                      val_data=val_ids, warmup_steps=args.warmup_steps,
                      weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                      eval_interval=args.eval_interval, max_steps=args.max_steps, seed=args.seed,
                      ema_decay=getattr(args, "ema_decay", 0.0))
    return trainer, tokenizer


def _resume(args):
    """Reload the run in args.out_dir: its own arguments, model, optimizer and data position."""
    path = Path(args.out_dir) / "ckpt.npz"
    model, tokenizer, meta, optim = load_checkpoint(path)
    if optim is None or "trainer" not in meta["extra"]:
        raise ValueError(f"{path} holds no training state to resume from")
    saved = argparse.Namespace(**meta["extra"]["args"])
    saved.out_dir, saved.threads, saved.resume = args.out_dir, args.threads, True
    trainer, built_tokenizer = _build(saved)
    if built_tokenizer.chars != tokenizer.chars:
        raise ValueError(f"the data's vocabulary differs from the one in {path}")
    trainer.model.params[...] = optim.get("trained_params", model.params)
    trainer.optimizer.load_state(optim)
    if trainer.average is not None:
        trainer.average.load_state(model.params, optim.get("average_t", 0))
    trainer.load_state(meta["extra"]["trainer"])
    return saved, trainer, tokenizer


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.threads is not None:
            ops.set_num_threads(args.threads)
        if args.resume:
            args, trainer, tokenizer = _resume(args)
        else:
            trainer, tokenizer = _build(args)
        _positive_int("checkpoint_interval", args.checkpoint_interval)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = trainer.model
    print(f"tinygpt: {model.num_parameters():,} parameters | vocab {tokenizer.vocab_size} | "
          f"{len(trainer.train_data):,} train / {len(trainer.val_data):,} val tokens | "
          f"{'resuming at step ' + str(trainer.step) + ' of ' if args.resume else ''}"
          f"{trainer.total_steps} steps | backend {ops.get_backend()} | "
          f"{ops.get_num_threads()} threads", flush=True)
    run = _Run(args, trainer, tokenizer)
    run.progress = _Progress(trainer)
    trainer.callback = run.on_step
    previous_handler = _handle_sigint(trainer)
    try:
        trainer.run()
    except FloatingPointError as err:
        run.progress.close()
        print(f"error: {err}. The last good checkpoint in {run.out} is untouched.",
              file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    run.progress.close()
    run.save()
    print(f"saved {run.out / 'ckpt.npz'}, history.json and loss.png at step {trainer.step}")
    if trainer.stop_requested:
        print(f"stopped early; continue with: python -m tinygpt.train --resume --out-dir {run.out}")
        return 130
    history = trainer.history
    if history["val_loss"]:
        print(f"final val loss {history['val_loss'][-1]:.4f} | "
              f"val perplexity {history['val_perplexity'][-1]:.2f}")
    sample = run.sample(args.sample_tokens)
    run.add_sample(f"final, step {trainer.step}", sample)
    print(f"--- sample (temperature 0.8) ---\n{sample}\n---")
    print(f"saved {run.out / 'samples.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
