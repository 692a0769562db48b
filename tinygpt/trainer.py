"""Trainer and train_model(): the training loop, evaluation, and resumable data order."""
import contextlib
import dataclasses
import math
import time
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from . import data, ops
from .config import TrainConfig
from .model import TinyGPT
from .optim import AdamW, WeightAverage, clip_grad_norm, lr_at


def evaluate(model: TinyGPT, tokens, batch_size: int, seq_len: int) -> float:
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

    def __init__(self, model: TinyGPT, train_data, config: TrainConfig = TrainConfig(), *,
                 val_data=None, callback: Optional[Callable[[dict], None]] = None):
        if not isinstance(model, TinyGPT):
            raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if config.seq_len > model.config.max_seq_len:
            raise ValueError(f"seq_len {config.seq_len} exceeds the model's max_seq_len "
                             f"{model.config.max_seq_len}")
        self.config = config
        self.seq_len, self.batch_size = config.seq_len, config.batch_size
        self.train_data = self._check_tokens(model, train_data, "train_data")
        self.val_data = None
        if val_data is not None:
            self.val_data = self._check_tokens(model, val_data, "val_data")
        steps_per_epoch = math.ceil(data.windows_per_epoch(len(self.train_data), self.seq_len)
                                    / self.batch_size)
        self.total_steps = config.max_steps or config.epochs * steps_per_epoch
        self.eval_interval = config.eval_interval or math.ceil(self.total_steps / 10)
        self.callback = callback
        self.model = model
        self.optimizer = AdamW(model.params, model.grads, model.decay_mask(),
                               weight_decay=config.weight_decay)
        self.average = WeightAverage(model.params, config.ema_decay) if config.ema_decay else None
        self.rng = np.random.default_rng(config.seed)
        self.step = 0
        # where the data stream stands: the RNG state that starts the current epoch, and how
        # many of that epoch's batches finished steps have used
        self.epoch_rng_state = self.rng.bit_generator.state
        self.batches_done_in_epoch = 0
        self.stop_requested = False  # set (e.g. by a SIGINT handler) to end run() after a step
        self.history: dict[str, list] = {"step": [], "train_loss": [], "lr": [], "grad_norm": [],
                        "tokens_per_sec": [], "eval_step": [], "eval_seconds": [], "val_loss": [],
                        "val_perplexity": []}
        self.seconds_before = 0.0  # training time spent before this run() (by earlier sessions)
        self._run_start: Optional[float] = None

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

    def state(self) -> dict:
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
        rng = np.random.default_rng([self.config.seed, self.step])
        loss = self.model.loss(x, y, dropout_rng=rng)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.step}; stopping")
        self.model.backward()
        grad_norm = clip_grad_norm(self.model.grads, self.config.max_grad_norm)
        lr = lr_at(self.step, self.config.lr, self.config.warmup_steps, self.total_steps)
        self.optimizer.step(lr)
        if self.average is not None:
            self.average.update()
        self.step += 1
        return loss, lr, grad_norm

    def eval_weights(self):
        """Context in which the model holds the weights to evaluate: the average, if kept."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def run(self) -> dict:
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


def train_model(model: TinyGPT, train_data, epochs: int = TrainConfig.epochs,
                batch_size: int = TrainConfig.batch_size, seq_len: int = TrainConfig.seq_len,
                lr: float = TrainConfig.lr, *, val_data=None,
                callback: Optional[Callable[[dict], None]] = None, progress: bool = True,
                **options) -> dict:
    """Train ``model`` on a 1-D array of token ids; returns the history dict.

    One epoch is one pass over train_data in shuffled non-overlapping windows from a random
    offset. ``options`` are the other TrainConfig settings: warmup_steps=100,
    weight_decay=0.01, max_grad_norm=1.0, ema_decay=0 (> 0: evaluate an exponential moving
    average of the weights, and leave it in the model), eval_interval (default: a tenth of the
    run), max_steps (replaces the epoch count), seed=0. ``val_data`` is evaluated every
    eval_interval steps; ``callback`` is called with a dict after every step; ``progress``
    shows a progress bar (tqdm's, in a terminal or a notebook).
    History keys: step, train_loss, lr, grad_norm, tokens_per_sec (per step) and eval_step,
    eval_seconds (training wall time so far), val_loss, val_perplexity (per evaluation).
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"train_model got unknown options {sorted(unknown)}; the options are "
                        f"{[f.name for f in dataclasses.fields(TrainConfig)]}, val_data, "
                        f"callback and progress")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, seq_len=seq_len, lr=lr, **options)
    trainer = Trainer(model, train_data, config, val_data=val_data)
    bar = tqdm(total=trainer.total_steps, unit="step", disable=not progress)

    def on_step(info):
        bar.set_postfix_str(f"loss {info['loss']:.4f}"
                            + (f", val {info['val_loss']:.4f}" if "val_loss" in info else ""))
        bar.update(1)
        if callback is not None:
            callback(info)

    trainer.callback = on_step
    try:
        history = trainer.run()
    finally:
        bar.close()
    if trainer.average is not None:
        model.params[...] = trainer.average.avg
    return history
