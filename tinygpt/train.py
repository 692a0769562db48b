"""train_model() and the ``python -m tinygpt.train`` command line."""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import data, ops
from .checkpoint import save_checkpoint
from .files import atomic_write_text
from .model import TinyGPT
from .optim import AdamW, clip_grad_norm, lr_at
from .tokenizer import CharTokenizer


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _non_negative(name, value):
    if not isinstance(value, (int, float, np.number)) or not value >= 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def evaluate(model, tokens, batch_size, seq_len):
    """Mean next-token loss over every non-overlapping seq_len window of ``tokens``."""
    total, count = 0.0, 0
    for x, y in data.sequential_batches(tokens, batch_size, seq_len):
        logits = model.forward(x)
        loss, _ = ops.softmax_cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        total += loss * y.size
        count += y.size
    return total / count


class Trainer:
    """The training loop's state: model, optimizer, data order and step count.

    ``run`` trains until the step budget is spent; ``train_model`` is the one-call wrapper.
    """

    def __init__(self, model, train_data, epochs=10, batch_size=32, seq_len=64, lr=1e-3, *,
                 val_data=None, warmup_steps=100, weight_decay=0.01, max_grad_norm=1.0,
                 eval_interval=None, max_steps=None, seed=0, callback=None):
        if not isinstance(model, TinyGPT):
            raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
        self.epochs = _positive_int("epochs", epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.seq_len = _positive_int("seq_len", seq_len)
        if self.seq_len > model.config.max_seq_len:
            raise ValueError(f"seq_len {seq_len} exceeds the model's max_seq_len "
                             f"{model.config.max_seq_len}")
        if not isinstance(lr, (int, float, np.number)) or not lr > 0 or math.isinf(lr):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        self.lr = float(lr)
        self.warmup_steps = int(_non_negative("warmup_steps", warmup_steps))
        self.max_grad_norm = _non_negative("max_grad_norm", max_grad_norm)
        self.train_data = self._check_ids(model, data.check_tokens(train_data, "train_data", self.seq_len), "train_data")
        self.val_data = None
        if val_data is not None:
            self.val_data = self._check_ids(model, data.check_tokens(val_data, "val_data", self.seq_len), "val_data")
        steps_per_epoch = math.ceil(data.windows_per_epoch(len(self.train_data), self.seq_len)
                                    / self.batch_size)
        max_steps = _positive_int("max_steps", max_steps, allow_none=True)
        self.total_steps = max_steps if max_steps is not None else self.epochs * steps_per_epoch
        eval_interval = _positive_int("eval_interval", eval_interval, allow_none=True)
        self.eval_interval = eval_interval or max(1, self.total_steps // 10)
        self.callback = callback
        self.model = model
        self.optimizer = AdamW(model.params, model.grads, model.decay_mask(),
                               weight_decay=_non_negative("weight_decay", weight_decay))
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.history = {"step": [], "train_loss": [], "lr": [], "grad_norm": [],
                        "tokens_per_sec": [], "eval_step": [], "val_loss": [], "val_perplexity": []}

    @staticmethod
    def _check_ids(model, tokens, name):
        if tokens.min() < 0 or tokens.max() >= model.config.vocab_size:
            raise ValueError(f"{name} holds ids outside [0, {model.config.vocab_size})")
        return tokens

    def _batches(self):
        """Endless stream of training batches, one shuffled epoch after another."""
        while True:
            yield from data.epoch_batches(self.train_data, self.batch_size, self.seq_len, self.rng)

    def train_step(self, x, y):
        """Forward, backward, clip, AdamW: returns (loss, lr, grad norm before clipping)."""
        loss = self.model.loss(x, y)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.step}; stopping")
        self.model.backward()
        grad_norm = clip_grad_norm(self.model.grads, self.max_grad_norm)
        lr = lr_at(self.step, self.lr, self.warmup_steps, self.total_steps)
        self.optimizer.step(lr)
        self.step += 1
        return loss, lr, grad_norm

    def run(self):
        """Train until ``total_steps``; evaluate every ``eval_interval`` steps and at the end."""
        h = self.history
        for x, y in self._batches():
            if self.step >= self.total_steps:
                break
            start = time.perf_counter()
            loss, lr, grad_norm = self.train_step(x, y)
            tokens_per_sec = x.size / (time.perf_counter() - start)
            for key, value in (("step", self.step), ("train_loss", loss), ("lr", lr),
                               ("grad_norm", grad_norm), ("tokens_per_sec", tokens_per_sec)):
                h[key].append(value)
            info = {"step": self.step, "total_steps": self.total_steps, "loss": loss, "lr": lr,
                    "grad_norm": grad_norm, "tokens_per_sec": tokens_per_sec}
            if self.val_data is not None and (self.step % self.eval_interval == 0
                                              or self.step == self.total_steps):
                val_loss = evaluate(self.model, self.val_data, self.batch_size, self.seq_len)
                h["eval_step"].append(self.step)
                h["val_loss"].append(val_loss)
                h["val_perplexity"].append(math.exp(val_loss))
                info.update(val_loss=val_loss, val_perplexity=math.exp(val_loss))
            if self.callback is not None:
                self.callback(info)
        return h


def train_model(model, train_data, epochs=10, batch_size=32, seq_len=64, lr=1e-3, **options):
    """Train ``model`` on a 1-D array of token ids; returns the history dict.

    One epoch is one pass over train_data in shuffled non-overlapping windows from a random
    offset. ``max_steps`` (if given) replaces the epoch count. Keyword options: val_data,
    warmup_steps=100, weight_decay=0.01, max_grad_norm=1.0, eval_interval (default: a tenth of
    the run), max_steps, seed=0, callback (called with a dict after every step).
    History keys: step, train_loss, lr, grad_norm, tokens_per_sec (per step) and eval_step,
    val_loss, val_perplexity (per evaluation).
    """
    return Trainer(model, train_data, epochs, batch_size, seq_len, lr, **options).run()


# ---------------------------------------------------------------- command line

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
    _flag(p, "epochs", type=int, default=10)
    _flag(p, "max-steps", type=int, default=None, help="stop after this many steps")
    _flag(p, "batch-size", type=int, default=64)
    _flag(p, "seq-len", type=int, default=128)
    _flag(p, "d-model", type=int, default=128)
    _flag(p, "n-heads", type=int, default=4)
    _flag(p, "n-layers", type=int, default=4)
    _flag(p, "max-seq-len", type=int, default=None, help="position table size (default: seq-len)")
    _flag(p, "lr", type=float, default=1e-3)
    _flag(p, "warmup-steps", type=int, default=100)
    _flag(p, "weight-decay", type=float, default=0.01)
    _flag(p, "max-grad-norm", type=float, default=1.0)
    _flag(p, "eval-interval", type=int, default=None, help="steps between evaluations")
    _flag(p, "seed", type=int, default=0)
    _flag(p, "threads", type=int, default=None, help="CPU threads for kernels and BLAS")
    _flag(p, "prompt", default="ROMEO:", help="prompt for the final sample")
    _flag(p, "sample-tokens", type=int, default=500, help="length of the final sample")
    return p


def _format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _ProgressPrinter:
    """Prints a line every few steps (step, loss, tokens/s, ETA) and every evaluation."""

    def __init__(self, total_steps, every=10):
        self.every = every
        self.start = time.perf_counter()
        self.total_steps = total_steps

    def __call__(self, info):
        step = info["step"]
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (self.total_steps - step)
        if step % self.every == 0 or step == self.total_steps or step == 1:
            print(f"step {step:5d}/{self.total_steps} | loss {info['loss']:.4f} | "
                  f"lr {info['lr']:.2e} | grad norm {info['grad_norm']:.3f} | "
                  f"{info['tokens_per_sec']:,.0f} tok/s | ETA {_format_eta(eta)}", flush=True)
        if "val_loss" in info:
            print(f"eval step {step}: val loss {info['val_loss']:.4f} | "
                  f"val perplexity {info['val_perplexity']:.2f}", flush=True)


def _sample_text(model, tokenizer, prompt, n_tokens, seed):
    try:
        ids = tokenizer.encode(prompt)
    except ValueError:
        ids = []
    if not ids:
        ids = [0]
    out = model.generate(np.array(ids), n_tokens, temperature=0.8, seed=seed)
    return tokenizer.decode(out)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        ops.set_num_threads(args.threads if args.threads is not None else ops.get_num_threads())
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        text = data.load_text(args.data)
    except (FileNotFoundError, ValueError, UnicodeDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tokenizer = CharTokenizer(text)
    ids = np.array(tokenizer.encode(text), dtype=np.int32)
    train_ids, val_ids = data.split(ids)
    out_dir = Path(args.out_dir)
    try:
        model = TinyGPT(tokenizer.vocab_size, args.d_model, args.n_heads, args.n_layers,
                        args.max_seq_len or args.seq_len, seed=args.seed)
        trainer = Trainer(model, train_ids, args.epochs, args.batch_size, args.seq_len, args.lr,
                          val_data=val_ids, warmup_steps=args.warmup_steps,
                          weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                          eval_interval=args.eval_interval, max_steps=args.max_steps,
                          seed=args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    trainer.callback = _ProgressPrinter(trainer.total_steps)
    print(f"tinygpt: {model.num_parameters():,} parameters | vocab {tokenizer.vocab_size} | "
          f"{len(train_ids):,} train / {len(val_ids):,} val tokens | {trainer.total_steps} steps | "
          f"backend {ops.get_backend()} | {ops.get_num_threads()} threads", flush=True)

    def save():
        save_checkpoint(out_dir / "ckpt.npz", model, tokenizer, trainer.optimizer, trainer.step,
                        extra={"args": vars(args)})
        atomic_write_text(out_dir / "history.json", json.dumps(trainer.history, indent=1))

    try:
        trainer.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {trainer.step}; saving a checkpoint", flush=True)
        save()
        print(f"saved {out_dir / 'ckpt.npz'} and {out_dir / 'history.json'}")
        return 130
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    save()
    print(f"saved {out_dir / 'ckpt.npz'} and {out_dir / 'history.json'}")
    history = trainer.history
    if history["val_loss"]:
        print(f"final val loss {history['val_loss'][-1]:.4f} | "
              f"val perplexity {history['val_perplexity'][-1]:.2f}")
    sample = _sample_text(model, tokenizer, args.prompt, args.sample_tokens, args.seed)
    atomic_write_text(out_dir / "samples.txt", sample + "\n")
    print(f"--- sample (temperature 0.8) ---\n{sample}\n---")
    print(f"saved {out_dir / 'samples.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
