"""AdamW over one flat parameter buffer, the weight average, the learning-rate schedule, and
gradient clipping."""
import math
from contextlib import contextmanager

import numpy as np


class AdamW:
    """Adam with decoupled weight decay, applied where ``decay_mask`` is 1.

    params, grads and decay_mask are flat arrays of one length; ``step`` updates params in place.
    """

    def __init__(self, params, grads, decay_mask, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01):
        if not (params.shape == grads.shape == decay_mask.shape) or params.ndim != 1:
            raise ValueError("params, grads and decay_mask must be flat arrays of one length")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params, self.grads = params, grads
        self.decay = (weight_decay * decay_mask).astype(params.dtype)  # per-element decay rate
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.t = 0
        self._scratch = np.empty_like(params)

    def step(self, lr):
        """One update with learning rate ``lr`` from the gradients now in ``grads``."""
        self.t += 1
        b1, b2, g, s = self.beta1, self.beta2, self.grads, self._scratch
        self.m *= b1
        self.m += (1.0 - b1) * g
        self.v *= b2
        np.multiply(g, g, out=s)
        s *= 1.0 - b2
        self.v += s
        # decoupled weight decay: p -= lr * wd * p, only where decay applies
        np.multiply(self.decay, self.params, out=s)
        s *= lr
        self.params -= s
        # Adam step with bias correction folded into the step size and epsilon
        c1, c2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        np.sqrt(self.v, out=s)
        s += self.eps * math.sqrt(c2)
        np.divide(self.m, s, out=s)
        s *= lr * math.sqrt(c2) / c1
        self.params -= s

    def state(self):
        """What a checkpoint needs to continue exactly: moments and step count."""
        return {"m": self.m, "v": self.v, "t": np.int64(self.t)}

    def load_state(self, state):
        for name in ("m", "v"):
            if state[name].shape != self.params.shape:
                raise ValueError(f"optimizer state {name} has shape {state[name].shape}, "
                                 f"expected {self.params.shape}")
            getattr(self, name)[...] = state[name]
        self.t = int(state["t"])


class WeightAverage:
    """Exponential moving average of the flat parameter buffer: the weights to evaluate and ship.

    ``update`` after each optimizer step: avg += (1 - d) (params - avg) with
    d = min(decay, (1 + t) / (10 + t)) at update t, so the average forgets the random
    initialization within the first few dozen steps. Training itself continues on ``params``.
    """

    def __init__(self, params, decay):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must lie in (0, 1), got {decay}")
        self.params, self.decay = params, float(decay)
        self.avg = params.copy()
        self.t = 0
        self._scratch = np.empty_like(params)

    def update(self):
        self.t += 1
        d = min(self.decay, (1 + self.t) / (10 + self.t))
        np.subtract(self.params, self.avg, out=self._scratch)
        self._scratch *= 1.0 - d
        self.avg += self._scratch

    @contextmanager
    def applied(self):
        """Inside the block ``params`` holds the average; the trained weights come back after."""
        trained = self.params.copy()
        self.params[...] = self.avg
        try:
            yield
        finally:
            self.params[...] = trained

    def load_state(self, avg, t):
        if avg.shape != self.params.shape:
            raise ValueError(f"weight average has shape {avg.shape}, expected {self.params.shape}")
        self.avg[...] = avg
        self.t = int(t)


def lr_at(step, base_lr, warmup_steps, total_steps, min_ratio=0.1):
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_ratio * base_lr`` at the end."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    min_lr = min_ratio * base_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def clip_grad_norm(grads, max_norm):
    """Scale grads in place so their global L2 norm is at most max_norm; return the norm before."""
    norm = float(np.sqrt(np.dot(grads, grads)))
    if max_norm and norm > max_norm:
        grads *= max_norm / (norm + 1e-6)
    return norm
