"""Trainer and train_model(): the training loop, evaluation, and resumable data order."""
import contextlib
import dataclasses
import itertools
import math
import time
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from . import data, distributed, ops
from .config import TrainConfig
from .model import TinyGPT
from .optim import AdamW, Muon, WeightAverage, clip_grad_norm, hidden_matrices, lr_at


def evaluate(model: TinyGPT, tokens, batch_size: int, seq_len: int, group=None,
             max_batches: Optional[int] = None) -> float:
    """Mean next-token loss over every non-overlapping seq_len window of ``tokens`` (of the
    first ``max_batches`` batches of them, if given). With a process group, the ranks take the
    batches in turn and their sums are added up."""
    group = group or distributed.SingleProcess()
    sums = np.zeros(2)  # loss x tokens, tokens
    batches = data.sequential_batches(tokens, batch_size, seq_len)
    for i, (x, y) in enumerate(itertools.islice(batches, max_batches)):
        if i % group.size != group.rank:
            continue
        logits = model.forward(x)
        loss, _ = ops.softmax_cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        sums += loss * y.size, y.size
    group.allreduce_sum(sums)
    return float(sums[0] / sums[1])


class Trainer:
    """The training loop's state: model, optimizer, data order and step count.

    ``run`` trains until the step budget is spent; ``train_model`` is the one-call wrapper.
    """

    def __init__(self, model: TinyGPT, train_data, config: TrainConfig = TrainConfig(), *,
                 val_data=None, callback: Optional[Callable[[dict], None]] = None, group=None):
        if not isinstance(model, TinyGPT):
            raise TypeError(f"model must be a TinyGPT, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if config.seq_len > model.config.max_seq_len:
            raise ValueError(f"seq_len {config.seq_len} exceeds the model's max_seq_len "
                             f"{model.config.max_seq_len}")
        self.group = group or distributed.SingleProcess()
        shares = self.group.size * config.grad_accum
        if config.batch_size % shares:
            raise ValueError(f"batch_size {config.batch_size} must divide by the number of ranks "
                             f"({self.group.size}) times grad_accum ({config.grad_accum})")
        self.config = config
        self.seq_len, self.batch_size = config.seq_len, config.batch_size
        self.train_data = self._check_tokens(model, train_data, "train_data")
        self.val_data = None
        if val_data is not None:
            self.val_data = self._check_tokens(model, val_data, "val_data")
        self.drop_last = config.last_batch == "drop"
        steps_per_epoch = data.batches_per_epoch(len(self.train_data), self.batch_size,
                                                 self.seq_len, self.drop_last)
        self.total_steps = config.max_steps or config.epochs * steps_per_epoch
        self.eval_interval = config.eval_interval or math.ceil(self.total_steps / 10)
        self.callback = callback
        self.model = model
        if config.optimizer == "muon":
            self.optimizer = Muon(model.params, model.grads, model.decay_mask(),
                                  hidden_matrices(model.shapes), momentum=config.muon_momentum,
                                  lr_ratio=(config.muon_lr or config.lr) / config.lr,
                                  weight_decay=config.weight_decay)
        else:
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
        self._grad_sum = None  # the micro-batches' gradient sum, when there are several
        self._stop_agreed = False  # with several ranks: whether any asked to stop, as of the
        # last step (a rank's own stop_requested may change at any moment, a Ctrl-C handler)

    def _check_tokens(self, model, tokens, name):
        """A 1-D id array with at least one (seq_len + 1) window, every id in the vocabulary.
        A memory-mapped corpus is not read through here (it may be larger than memory): its
        ids were checked as it was written, and every batch is checked as it is used."""
        tokens = data.check_tokens(tokens, name, self.seq_len)
        if isinstance(tokens, np.memmap):
            return tokens
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
            epoch = data.epoch_batches(self.train_data, self.batch_size, self.seq_len, self.rng,
                                       self.drop_last)
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

    def _shares(self, rows):
        """This rank's micro-batches of a global batch of ``rows`` rows: [(slot, start, stop)].
        The batch is cut into ranks x grad_accum slots as evenly as it goes (a short last
        batch of an epoch may leave some empty); rank r takes slots r*A .. r*A + A - 1."""
        slots = self.group.size * self.config.grad_accum
        cuts = [slot * rows // slots for slot in range(slots + 1)]
        first = self.group.rank * self.config.grad_accum
        return [(slot, cuts[slot], cuts[slot + 1])
                for slot in range(first, first + self.config.grad_accum)]

    def _gradients(self, x, y):
        """Fill model.grads with the gradient of the mean loss over the whole global batch
        (x, y) (B, T), summed over the ranks; returns that loss.

        One process with one micro-batch is a plain loss + backward. Otherwise each
        micro-batch's gradient is weighted by its share of the rows, summed into a buffer, and
        the buffer is summed over the ranks by one Allreduce. Dropout masks come from a
        generator seeded by (seed, step[, slot]), so a resumed run draws the same ones without
        carrying any RNG state.
        """
        model, seed, shares = self.model, self.config.seed, self._shares(len(x))
        if self.group.size == 1 and len(shares) == 1:
            loss = model.loss(x, y, dropout_rng=np.random.default_rng([seed, self.step]))
            model.backward()
            return loss
        if self._grad_sum is None:
            self._grad_sum = np.empty_like(model.grads)
        self._grad_sum[...] = 0.0
        loss = 0.0
        for slot, start, stop in shares:
            if start == stop:
                continue
            weight = (stop - start) / len(x)
            rng = np.random.default_rng([seed, self.step, slot])
            loss += weight * model.loss(x[start:stop], y[start:stop], dropout_rng=rng)
            model.backward()
            model.grads *= weight
            self._grad_sum += model.grads
        model.grads[...] = self._grad_sum
        self.group.allreduce_sum(model.grads)
        return loss

    def train_step(self, x, y):
        """Gradients of the global batch (x, y), clip, optimizer step: returns (loss, lr, grad
        norm before clipping). With several ranks, every rank sees the same summed loss and the
        same stop request, so all of them stop, or fail, at the same step."""
        loss = self._gradients(x, y)
        if self.group.size > 1:
            shared = np.array([loss, float(self.stop_requested)])
            self.group.allreduce_sum(shared)
            loss, self._stop_agreed = float(shared[0]), bool(shared[1])
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.step}; stopping")
        grad_norm = clip_grad_norm(self.model.grads, self.config.max_grad_norm)
        lr = lr_at(self.step, self.config.lr, self.config.warmup_steps, self.total_steps,
                   self.config.min_lr_ratio)
        self.optimizer.step(lr)
        if self.average is not None:
            self.average.update()
        self.step += 1
        return loss, lr, grad_norm

    def sync_from_root(self) -> None:
        """Every rank takes rank 0's weights, optimizer state, weight average and place in the
        data stream (at the start of a run and on resume), so all of them start the same."""
        optimizer = self.optimizer.state()
        arrays = [self.model.params] + [a for name, a in optimizer.items() if name != "t"]
        if self.average is not None:
            arrays.append(self.average.avg)
        for array in arrays:
            self.group.broadcast(array)
        counts = self.group.broadcast_object(
            (self.state(), int(optimizer["t"]), self.average.t if self.average else 0))
        self.load_state(counts[0])
        self.optimizer.load_state({**optimizer, "t": counts[1]})
        if self.average is not None:
            self.average.t = counts[2]

    def stopping(self) -> bool:
        """Whether training stops before the next step: asked for (``stop_requested``, by any
        rank as of the last step)."""
        return self._stop_agreed if self.group.size > 1 else self.stop_requested

    def eval_weights(self):
        """Context in which the model holds the weights to evaluate: the average, if kept."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def run(self) -> dict:
        """Train until ``total_steps``; evaluate every ``eval_interval`` steps and at the end."""
        h = self.history
        self._run_start = time.perf_counter()
        for index, x, y in self._batches():
            if self.step >= self.total_steps or self.stopping():
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
                self.group.check_same_parameters(self.model.params, self.step)
                with self.eval_weights():
                    val_loss = evaluate(self.model, self.val_data, self.batch_size, self.seq_len,
                                        self.group, self.config.eval_batches)
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
    min_lr_ratio=0.1 (the cosine's end, as a fraction of lr), weight_decay=0.01,
    optimizer="adamw" ("muon": Muon for the blocks' matrices), muon_momentum=0.95, muon_lr=lr,
    last_batch="keep" ("drop": no short batch at an epoch's end), max_grad_norm=1.0,
    ema_decay=0 (> 0: evaluate an exponential moving average of the weights, and leave it in
    the model), eval_interval (default: a tenth of the run), eval_batches (default: the whole
    of val_data), max_steps (replaces the epoch count), grad_accum=1, seed=0.
    ``val_data`` is evaluated every eval_interval steps; ``callback`` is called with a dict
    after every step; ``progress`` shows a progress bar (tqdm's, in a terminal or a notebook).
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
