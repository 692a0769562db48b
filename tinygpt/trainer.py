"""Trainer and train_model(): the training loop, evaluation, and resumable data order."""
import contextlib
import math
import time

import numpy as np

from . import data, ops
from .model import TinyGPT
from .optim import AdamW, WeightAverage, clip_grad_norm, lr_at


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
                 eval_interval=None, max_steps=None, seed=0, callback=None, ema_decay=0.0):
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
        self.train_data = self._check_tokens(model, train_data, "train_data")
        self.val_data = None
        if val_data is not None:
            self.val_data = self._check_tokens(model, val_data, "val_data")
        steps_per_epoch = math.ceil(data.windows_per_epoch(len(self.train_data), self.seq_len)
                                    / self.batch_size)
        max_steps = _positive_int("max_steps", max_steps, allow_none=True)
        self.total_steps = max_steps if max_steps is not None else self.epochs * steps_per_epoch
        eval_interval = _positive_int("eval_interval", eval_interval, allow_none=True)
        self.eval_interval = eval_interval or math.ceil(self.total_steps / 10)
        self.callback = callback
        self.model = model
        self.optimizer = AdamW(model.params, model.grads, model.decay_mask(),
                               weight_decay=_non_negative("weight_decay", weight_decay))
        ema_decay = _non_negative("ema_decay", ema_decay)
        self.average = WeightAverage(model.params, ema_decay) if ema_decay else None
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.step = 0
        # where the data stream stands: the RNG state that starts the current epoch, and how
        # many of that epoch's batches finished steps have used
        self.epoch_rng_state = self.rng.bit_generator.state
        self.batches_done_in_epoch = 0
        self.stop_requested = False  # set (e.g. by a SIGINT handler) to end run() after a step
        self.history = {"step": [], "train_loss": [], "lr": [], "grad_norm": [],
                        "tokens_per_sec": [], "eval_step": [], "eval_seconds": [], "val_loss": [],
                        "val_perplexity": []}
        self.seconds_before = 0.0  # training time spent before this run() (by earlier sessions)
        self._run_start = None

    def _check_tokens(self, model, tokens, name):
        """A 1-D id array with at least one (seq_len + 1) window, every id in the vocabulary."""
        tokens = data.check_tokens(tokens, name, self.seq_len)
        if tokens.min() < 0 or tokens.max() >= model.config.vocab_size:
            raise ValueError(f"{name} holds ids outside [0, {model.config.vocab_size})")
        return tokens

    def _batches(self):
        """Endless stream of (index in epoch, x, y), one shuffled epoch after another.

        Starts where ``epoch_rng_state`` and ``batches_done_in_epoch`` say, so a resumed run
        sees exactly the batches an uninterrupted one would.
        """
        while True:
            self.rng.bit_generator.state = self.epoch_rng_state
            epoch = data.epoch_batches(self.train_data, self.batch_size, self.seq_len, self.rng)
            for i, (x, y) in enumerate(epoch):
                if i >= self.batches_done_in_epoch:
                    yield i, x, y
            self.epoch_rng_state = self.rng.bit_generator.state
            self.batches_done_in_epoch = 0

    def state(self):
        """JSON-able training state (with the model and optimizer, all a resume needs)."""
        return {"step": self.step, "epoch_rng_state": self.epoch_rng_state,
                "batches_done_in_epoch": self.batches_done_in_epoch, "history": self.history,
                "seconds": self.seconds_before + self._seconds_this_run()}

    def load_state(self, state):
        self.step = int(state["step"])
        self.epoch_rng_state = state["epoch_rng_state"]
        self.batches_done_in_epoch = int(state["batches_done_in_epoch"])
        self.history = state["history"]
        self.seconds_before = float(state["seconds"])

    def _seconds_this_run(self):
        return 0.0 if self._run_start is None else time.perf_counter() - self._run_start

    def train_step(self, x, y):
        """Forward, backward, clip, AdamW: returns (loss, lr, grad norm before clipping).

        Dropout masks (when the model has dropout) come from a generator seeded by (seed,
        step), so a resumed run draws the same ones without carrying any RNG state.
        """
        loss = self.model.loss(x, y, dropout_rng=np.random.default_rng([self.seed, self.step]))
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.step}; stopping")
        self.model.backward()
        grad_norm = clip_grad_norm(self.model.grads, self.max_grad_norm)
        lr = lr_at(self.step, self.lr, self.warmup_steps, self.total_steps)
        self.optimizer.step(lr)
        if self.average is not None:
            self.average.update()
        self.step += 1
        return loss, lr, grad_norm

    def eval_weights(self):
        """Context in which the model holds the weights to evaluate: the average, if kept."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def run(self):
        """Train until ``total_steps``; evaluate every ``eval_interval`` steps and at the end."""
        h = self.history
        self._run_start = time.perf_counter()
        for index, x, y in self._batches():
            if self.step >= self.total_steps or self.stop_requested:
                break
            start = time.perf_counter()
            loss, lr, grad_norm = self.train_step(x, y)
            self.batches_done_in_epoch = index + 1
            tokens_per_sec = x.size / (time.perf_counter() - start)
            for key, value in (("step", self.step), ("train_loss", loss), ("lr", lr),
                               ("grad_norm", grad_norm), ("tokens_per_sec", tokens_per_sec)):
                h[key].append(value)
            info = {"step": self.step, "total_steps": self.total_steps, "loss": loss, "lr": lr,
                    "grad_norm": grad_norm, "tokens_per_sec": tokens_per_sec}
            if self.val_data is not None and (self.step % self.eval_interval == 0
                                              or self.step == self.total_steps):
                with self.eval_weights():
                    val_loss = evaluate(self.model, self.val_data, self.batch_size, self.seq_len)
                h["eval_step"].append(self.step)
                h["eval_seconds"].append(self.seconds_before + self._seconds_this_run())
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
    the run), max_steps, seed=0, callback (called with a dict after every step), ema_decay=0
    (> 0: evaluate an exponential moving average of the weights, and leave it in the model).
    History keys: step, train_loss, lr, grad_norm, tokens_per_sec (per step) and eval_step,
    eval_seconds (training wall time so far), val_loss, val_perplexity (per evaluation).
    """
    trainer = Trainer(model, train_data, epochs, batch_size, seq_len, lr, **options)
    history = trainer.run()
    if trainer.average is not None:
        model.params[...] = trainer.average.avg
    return history
