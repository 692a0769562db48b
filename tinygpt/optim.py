"""AdamW and Muon over one flat parameter buffer, the weight average, the learning-rate schedule,
and gradient clipping."""
import math
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from . import ops
from .blas_threads import one_blas_thread


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

    def step(self, lr):
        """One update with learning rate ``lr`` from the gradients now in ``grads``
        (ops.adamw_update: decoupled weight decay, bias corrections folded into the step)."""
        self.t += 1
        ops.adamw_update(self.params, self.grads, self.m, self.v, self.decay, lr, self.beta1,
                         self.beta2, self.eps, self.t)

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


# the quintic Newton-Schulz iteration's coefficients (Keller Jordan's Muon): X <- a X + (b A +
# c A^2) X with A = X X^T pushes the singular values of X in (0, 1], all but the tiniest, into roughly
# [0.7, 1.2] in five steps, and keeps the singular vectors
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5


def hidden_matrices(shapes):
    """The matrices Muon trains: every 2-D parameter inside a block (named "h{i}.*"), as
    [(name, offset in the flat buffer, shape)]; ``shapes`` is the model's [(name, shape)] in
    buffer order. Embeddings, the head (head_w), biases and LayerNorm gains stay with AdamW."""
    matrices, offset = [], 0
    for name, shape in shapes:
        if len(shape) == 2 and re.match(r"h\d+\.", name):
            matrices.append((name, offset, tuple(shape)))
        offset += math.prod(shape)
    return matrices


class NewtonSchulz:
    """Scratch for orthogonalising one shape of matrix; ``__call__(g, out)`` writes into out
    (g's shape) an approximation of U V^T, where g = U S V^T.

    g / (||g||_F + eps) has spectral norm <= 1; the iteration runs on the wide orientation
    (rows <= cols, transposing a tall g), X (m, n) with m <= n.

    It is the quintic iteration X <- P(A) X with A = X X^T and P(A) = a I + b A + c A^2, run on
    the m x m Gram matrix alone: every P is a polynomial in the first A, so the P's commute with
    it and with each other, and after the steps X = Q X_0 with Q = P_last ... P_first, while the
    Gram matrix of the next X is P A P = P^2 A. Each step then costs four m x m products
    instead of two m x n ones and one m x m; for the model's 128 x 512 matrices that halves the
    work (tests/test_optim.py checks it against the iteration written out)."""

    def __init__(self, shape, dtype, eps=1e-7):
        rows, cols = shape
        self.tall = rows > cols
        small, large = sorted(shape)
        self.x, self.result = np.empty((small, large), dtype), np.empty((small, large), dtype)
        self.gram, self.poly, self.product, self.tmp = (np.empty((small, small), dtype)
                                                        for _ in range(4))
        self.eps = eps

    def __call__(self, g, out):
        a, b, c = NEWTON_SCHULZ
        x, gram, poly, product, tmp = self.x, self.gram, self.poly, self.product, self.tmp
        x[...] = g.T if self.tall else g
        x *= 1.0 / (math.sqrt(np.dot(x.ravel(), x.ravel())) + self.eps)
        np.matmul(x, x.T, out=gram)                # A = X X^T
        diagonal = poly.reshape(-1)[::poly.shape[0] + 1]  # a view of P's diagonal
        for step in range(NEWTON_SCHULZ_STEPS):
            np.matmul(gram, gram, out=poly)
            poly *= c
            np.multiply(gram, b, out=tmp)
            poly += tmp
            diagonal += a                          # P = a I + b A + c A^2
            if step == 0:
                product[...] = poly                # Q = P
            else:
                np.matmul(poly, product, out=tmp)
                product[...] = tmp                 # Q = P Q
            if step < NEWTON_SCHULZ_STEPS - 1:
                np.matmul(poly, gram, out=tmp)
                np.matmul(poly, tmp, out=gram)     # A = P^2 A: the Gram matrix of P X
        np.matmul(product, x, out=self.result)     # X = Q X_0
        out[...] = self.result.T if self.tall else self.result


class Muon:
    """Muon for the given matrices of the flat buffer, AdamW for every other element.

    Each matrix W (fan_in, fan_out) with gradient G keeps a momentum buffer M:
        M = mu M + (1 - mu) G;  U = (1 - mu) G + mu M           (Nesterov)
        W *= 1 - r lr wd;  W -= r lr * 0.2 sqrt(max(fan_in, fan_out)) * orthogonalise(U)
    The factor gives the update an RMS of about 0.2, AdamW's, so one learning rate can serve both
    groups (Moonlight's scaling); ``lr_ratio`` r sets the matrices' own. The other elements take
    exactly AdamW's update at lr (with ``decay_mask``'s weight decay); ``matrices`` is
    [(name, offset, shape)], see hidden_matrices.
    """

    RMS = 0.2  # the update's target RMS, per unit of learning rate

    def __init__(self, params, grads, decay_mask, matrices, momentum=0.95, lr_ratio=1.0,
                 weight_decay=0.01, **adamw_options):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon's momentum must lie in [0, 1), got {momentum}")
        if not lr_ratio > 0:
            raise ValueError(f"Muon's lr_ratio must be > 0, got {lr_ratio}")
        self.params, self.grads = params, grads
        self.mu, self.lr_ratio, self.weight_decay = momentum, lr_ratio, weight_decay
        in_matrix = np.zeros(params.shape, dtype=bool)
        sizes = [math.prod(shape) for _, _, shape in matrices]
        self.momentum = np.zeros(sum(sizes), dtype=params.dtype)
        self._matrices, start = [], 0  # (w, g, m, update scale), each (fan_in, fan_out)
        for (name, offset, shape), size in zip(matrices, sizes):
            if in_matrix[offset:offset + size].any() or offset + size > params.size:
                raise ValueError(f"matrix {name} overlaps another or lies outside the buffer")
            in_matrix[offset:offset + size] = True
            views = (a[o:o + size].reshape(shape) for a, o in ((params, offset), (grads, offset),
                                                              (self.momentum, start)))
            self._matrices.append((*views, self.RMS * math.sqrt(max(shape))))
            start += size
        self._lanes = {}  # number of threads -> the matrices each one updates, and its scratch
        self._pool, self._pool_threads = None, 0  # threads beside the caller's, made when needed
        self._other = np.flatnonzero(~in_matrix)  # AdamW's elements, gathered for each step
        self.adamw = AdamW(params[self._other], np.empty(self._other.size, params.dtype),
                           decay_mask[self._other], weight_decay=weight_decay, **adamw_options)

    def step(self, lr):
        """One update with learning rate ``lr`` from the gradients now in ``grads``.

        The matrices are shared out among ``ops.get_num_threads()`` threads, each running BLAS
        on one thread: these products are too small to split well, and each matrix's update has
        the same bits whichever thread makes it."""
        adamw = self.adamw
        np.take(self.params, self._other, out=adamw.params)
        np.take(self.grads, self._other, out=adamw.grads)
        adamw.step(lr)
        self.params[self._other] = adamw.params
        lr *= self.lr_ratio
        first, *others = self._lanes_for(min(ops.get_num_threads(), len(self._matrices)))
        with one_blas_thread():
            if len(others) > self._pool_threads:
                self._pool = ThreadPoolExecutor(len(others), thread_name_prefix="muon")
                self._pool_threads = len(others)
            futures = [self._pool.submit(self._update, lane, lr) for lane in others]
            try:
                self._update(first, lr)
            finally:  # no thread still writes the weights once step returns or raises
                for future in futures:
                    future.result()

    def _lanes_for(self, n_threads):
        """The matrices split into n_threads lanes of about equal Newton-Schulz cost (largest
        first, each to the lightest lane), each lane as [(w, g, m, scale, u, s, solver)] with
        its own scratch."""
        if n_threads not in self._lanes:
            def cost(matrix):  # NewtonSchulz's multiply-adds
                small, large = sorted(matrix[0].shape)
                return 2 * small * small * large + 17 * small ** 3
            loads, lanes = [0] * n_threads, [[] for _ in range(n_threads)]
            for matrix in sorted(self._matrices, key=cost, reverse=True):
                lightest = loads.index(min(loads))
                loads[lightest] += cost(matrix)
                lanes[lightest].append(matrix)
            self._lanes[n_threads] = [self._with_scratch(lane) for lane in lanes]
        return self._lanes[n_threads]

    @staticmethod
    def _with_scratch(lane):
        scratch = {}  # shape -> (u, s, NewtonSchulz), shared by the lane's matrices of that shape
        for w, *_ in lane:
            if w.shape not in scratch:
                scratch[w.shape] = (np.empty_like(w), np.empty_like(w),
                                    NewtonSchulz(w.shape, w.dtype))
        return [(*matrix, *scratch[matrix[0].shape]) for matrix in lane]

    def _update(self, lane, lr):
        mu = self.mu
        for w, g, m, scale, u, s, orthogonalise in lane:
            np.multiply(g, 1.0 - mu, out=u)
            m *= mu
            m += u                      # M = mu M + (1 - mu) G
            np.multiply(m, mu, out=s)
            u += s                      # U = (1 - mu) G + mu M
            orthogonalise(u, out=u)
            w *= 1.0 - lr * self.weight_decay
            u *= lr * scale
            w -= u

    def state(self):
        """AdamW's moments and step count (for the other elements) and the matrices' momentum."""
        return {**self.adamw.state(), "momentum": self.momentum}

    def load_state(self, state):
        if "momentum" not in state:
            raise ValueError("optimizer state has no Muon momentum: it was saved by AdamW")
        if state["momentum"].shape != self.momentum.shape:
            raise ValueError(f"optimizer state momentum has shape {state['momentum'].shape}, "
                             f"expected {self.momentum.shape}")
        self.adamw.load_state(state)
        self.momentum[...] = state["momentum"]


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


def lr_at(step, base_lr, warmup_steps, total_steps, min_ratio):
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_ratio * base_lr`` at the end."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    min_lr = min_ratio * base_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def clip_grad_norm(grads, max_norm):
    """Scale grads in place so their global L2 norm is at most max_norm; return the norm before.

    The dot product runs on one BLAS thread, so that no OpenBLAS thread is left spinning after
    it: one kept a core busy into the next step's kernels, about 10 ms of a 125 ms step of the
    default model."""
    with one_blas_thread():
        norm = float(np.sqrt(np.dot(grads, grads)))
    if max_norm and norm > max_norm:
        grads *= max_norm / (norm + 1e-6)
    return norm
