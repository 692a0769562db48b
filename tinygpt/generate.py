"""Sampling from a TinyGPT: the key/value cache, the one-position decode step, and the sampler.

A decode step is ``model.transformer_forward`` itself, run over one new position per row: the
same blocks as training, on ``RowOps`` (plain NumPy into preallocated rows: at one position the
ops' checks and the kernels' thread start-up would cost more than the arithmetic), with an
attention that reads the keys and values cached for the positions before. The prompt is read by
the ordinary forward, whose attention also fills the cache.
"""
import dataclasses
import math
from typing import Callable, Optional

import numpy as np

from . import ops, reference
from .model import new_activations, transformer_forward


class RowOps:
    """The ops ``transformer_forward`` calls, for a few rows (B, ...): the same arithmetic as
    tinygpt.ops up to rounding, without its checks and thread start-up. Plain NumPy, but for
    LayerNorm's compiled kernel on one thread where the kernels are built."""

    def __init__(self, batch_size, d_model, dtype):
        self.mean_w = np.full((d_model, 1), 1.0 / d_model, dtype)  # x @ mean_w: row means
        self.scratch = np.empty((batch_size, 4 * d_model), dtype)
        self.stat = np.empty((batch_size, 1), dtype)  # a per-row statistic
        self.stat_flat = self.stat[:, 0]
        # the compiled LayerNorm on one thread, where it is built: a third of NumPy's time
        self.layernorm_kernel = ops._kernel("layernorm_forward")
        self.rstd = np.empty(batch_size, dtype)
        self.ones, self.zeros = np.ones(d_model, dtype), np.zeros(d_model, dtype)

    def layernorm_forward(self, x, weight, bias, eps=1e-5, *, out):
        """out's first array receives the normalized rows; its mean and rstd, which only a
        backward reads, are left unwritten. With weight and bias None, the normalization
        alone (see ``decode_weights``)."""
        y, stat = out[0], self.stat  # (B, C), (B, 1)
        if self.layernorm_kernel is not None:
            self.layernorm_kernel(x, self.ones if weight is None else weight,
                                  self.zeros if bias is None else bias, eps, y, self.stat_flat,
                                  self.rstd, 1)
            return out
        np.matmul(x, self.mean_w, out=stat)  # the means
        np.subtract(x, stat, out=y)
        np.vecdot(y, y, out=self.stat_flat)  # sums of squares
        stat *= 1.0 / x.shape[1]
        stat += eps
        np.sqrt(stat, out=stat)
        y /= stat
        if weight is not None:
            y *= weight
            y += bias
        return out

    def linear_forward(self, x, weight, bias=None, residual=None, *, activation=None, out):
        """out = residual + x @ weight + bias; with an activation, out = (pre, post): pre in
        place of ops.linear_forward's slope, which only a backward reads."""
        pre = out if activation is None else out[0]
        np.matmul(x, weight, out=pre)
        if bias is not None:
            pre += bias
        if residual is not None:
            pre += residual
        if activation is not None:
            getattr(self, f"{activation}_forward")(pre, out=out[1])
        return out

    def gelu_forward(self, x, *, out):
        """0.5 x (1 + tanh(c (x + 0.044715 x^3))), with c (x + a x^3) as x (c + c a x^2):
        products only (x ** 3 is a pow call, about 25 us on 512 float32 values)."""
        s = self.scratch[:, :x.shape[1]]
        np.multiply(x, x, out=s)
        s *= reference.GELU_C * 0.044715
        s += reference.GELU_C
        s *= x
        np.tanh(s, out=s)
        s *= 0.5
        s += 0.5
        return np.multiply(x, s, out=out)

    @staticmethod
    def relu2_forward(x, *, out):
        np.maximum(x, 0, out=out)
        return np.multiply(out, out, out=out)

    @staticmethod
    def rotary_forward(qkv, n_heads, cos, sin):
        """qkv (B, 1, 3C): q and k rotated in place at the one position of cos, sin (1, D/2)."""
        B = qkv.shape[0]
        qk = qkv.reshape(B, 3, n_heads, -1)[:, :2]  # (B, 2, H, D)
        half = qk.shape[-1] // 2
        x1, x2 = qk[..., :half], qk[..., half:]
        c, s = cos[0], sin[0]
        x1_sin = x1 * s
        x1 *= c
        x1 -= x2 * s
        x2 *= c
        x2 += x1_sin
        return qkv


def decode_weights(w, n_heads):
    """The GPTParams w as a decode step reads them: in each block, each LayerNorm's weight and
    bias folded into the matrix that reads its output, (xhat * g + b) @ W + c
    = xhat @ (g[:, None] * W) + (b @ W + c), so that the step only normalizes; and the
    attention's 1/sqrt(D) folded into the query columns. New arrays for what changes."""
    def fold(ln_w, ln_b, weight, bias):
        return ln_w[:, None] * weight, ln_b @ weight + bias

    blocks = []
    for block in w.blocks:
        attn_w, attn_b = fold(block.ln1_w, block.ln1_b, block.attn_w, block.attn_b)
        C = attn_w.shape[0]
        scale = 1.0 / math.sqrt(C // n_heads)
        attn_w[:, :C] *= scale  # the queries: the scores come out scaled
        attn_b[:C] *= scale
        fc_w, fc_b = fold(block.ln2_w, block.ln2_b, block.fc_w, block.fc_b)
        blocks.append(dataclasses.replace(block, ln1_w=None, ln1_b=None, attn_w=attn_w,
                                          attn_b=attn_b, ln2_w=None, ln2_b=None, fc_w=fc_w,
                                          fc_b=fc_b))
    return dataclasses.replace(w, blocks=blocks)


class DecodeCache:
    """What cached generation keeps between decode steps, for B rows.

    Per layer, the keys (B, H, D, max_seq_len) and values (B, H, max_seq_len, D), laid out so
    that each head's scores and weighted sum are one matrix-vector product over contiguous rows;
    and one position's Activations, which each step overwrites; and the weights a step reads
    (``decode_weights``), made from the model's parameters when the cache is: they must not
    change while the cache is in use (generate makes a new one per call).
    """

    def __init__(self, model, batch_size):
        cfg, dtype = model.config, model.dtype
        B, H, D, T = batch_size, cfg.n_heads, cfg.head_size, cfg.max_seq_len
        self.model = model
        self.keys = [np.zeros((B, H, D, T), dtype) for _ in range(cfg.n_layers)]
        self.values = [np.zeros((B, H, T, D), dtype) for _ in range(cfg.n_layers)]
        self.acts = new_activations(cfg, B, 1, dtype, for_backward=False)
        # every layer's step writes the same arrays: views of them for attend_step
        heads = self.acts.layers[0].qkv.reshape(B, 3, H, D)
        self.q = heads[:, 0, :, None, :]  # (B, H, 1, D)
        self.k, self.v = heads[:, 1], heads[:, 2]  # (B, H, D) each
        self.att = self.acts.layers[0].att.reshape(B, H, 1, D)  # the heads side by side
        self.row_ops = RowOps(B, cfg.d_model, dtype)
        self.weights = decode_weights(model.weights, H)  # the parameters must not change
        self.position = 0  # of the row being decoded

    def attend_prompt(self, a, layer):
        """The prompt's attention: causal over its T positions, then its keys and values
        (a.qkv (N, 3C), N = B * T) cached at positions 0..T-1."""
        self.model._attend(a, layer)  # the training forward's own attention
        B, T, C = a.att.shape
        H = self.model.config.n_heads
        _, k, v = a.qkv.reshape(B, T, 3, H, C // H).transpose(2, 0, 3, 1, 4)  # (B, H, T, D)
        self.keys[layer][..., :T] = k.swapaxes(2, 3)
        self.values[layer][:, :, :T] = v

    def attend_step(self, a, layer):
        """One new position per row: a.qkv (B, 3C) -> a.att (B, 1, C), its key and value
        cached at self.position, attending to positions 0..self.position (the queries come
        scaled by 1/sqrt(D), see ``decode_weights``)."""
        keys, values = self.keys[layer], self.values[layer]
        p, t = self.position, self.position + 1
        keys[..., p] = self.k  # keys (B, H, D, T) <- k (B, H, D): a view of a.qkv
        values[:, :, p] = self.v  # values (B, H, T, D) <- v (B, H, D)
        scores = np.matmul(self.q, keys[..., :t])  # (B, H, 1, t)
        scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= np.add.reduce(scores, axis=-1, keepdims=True)
        np.matmul(scores, values[:, :, :t], out=self.att)  # a.att


def read_prompt(model, context, cache):
    """context (B, T) ids -> logits (B, V) at its last position, its keys and values cached."""
    return model._inference_forward(context, cache.attend_prompt)[:, -1]


def decode_step(model, ids, position, cache):
    """One new token per row: ids (B,) at ``position`` -> logits (B, V), against the keys and
    values cached for the positions before it (adding its own). The logits are the cache's
    array: the next step overwrites them."""
    cache.position = position
    return transformer_forward(cache.row_ops, model.config, cache.weights, ids[:, None],
                               position, cache.acts, cache.attend_step, model.rope)


def generate(model, prompt, max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, seed=None, *, top_p: Optional[float] = None,
             repetition_penalty: float = 1.0, use_cache: bool = True,
             on_token: Optional[Callable[[np.ndarray], Optional[bool]]] = None) -> np.ndarray:
    """``TinyGPT.generate``: see there."""
    squeeze = np.asarray(prompt).ndim == 1
    ids = model._check_ids(prompt, name="prompt", limit_length=False)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    check_sampling(temperature, top_k, top_p, repetition_penalty)
    rng = np.random.default_rng(seed)
    max_len = model.config.max_seq_len
    B = ids.shape[0]
    cache = DecodeCache(model, B) if use_cache else None
    seen = None  # (B, V) bool: the tokens each row holds, for the repetition penalty
    if repetition_penalty != 1:
        seen = np.zeros((B, model.config.vocab_size), dtype=bool)
        np.put_along_axis(seen, ids, True, axis=1)
    n = ids.shape[1]  # tokens so far: the prompt, then out[:, :n]
    out = np.empty((B, n + max_new_tokens), dtype=np.int64)
    out[:, :n] = ids
    logits = None
    for _ in range(max_new_tokens):
        if logits is None:  # first step, or the window moved: (re)read the whole context
            context = out[:, max(0, n - max_len):n]
            logits = (read_prompt(model, context, cache) if use_cache
                      else model._inference_forward(context)[:, -1])  # (B, V)
        next_ids = sample_next(logits, temperature, top_k, top_p, rng, repetition_penalty, seen)
        out[:, n] = next_ids
        n += 1
        if seen is not None:
            seen[np.arange(B), next_ids] = True
        if on_token is not None and on_token(next_ids):
            break
        position = n - 1
        logits = decode_step(model, next_ids, position, cache) \
            if use_cache and position < max_len else None
    ids = out if n == out.shape[1] else out[:, :n].copy()
    return ids[0] if squeeze else ids


def check_sampling(temperature, top_k=None, top_p=None, repetition_penalty=1.0):
    """Raise ValueError for a temperature < 0, top_k < 1, top_p outside (0, 1], or a
    repetition_penalty that is not a finite number > 0."""
    if not isinstance(temperature, (int, float, np.number)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                              or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float, np.number))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if not isinstance(repetition_penalty, (int, float, np.number)) \
            or not 0 < repetition_penalty < math.inf:
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1: none), "
                         f"got {repetition_penalty!r}")


def sample_next(logits, temperature, top_k, top_p, rng, repetition_penalty=1.0, seen=None):
    """logits (B, V) -> one sampled id per row (B,). temperature 0 is argmax. With a penalty
    other than 1, the logits of the tokens marked in seen (B, V) bool are pushed down first."""
    logits = logits.astype(np.float64)
    if seen is not None and repetition_penalty != 1:
        penalized = np.where(logits > 0, logits / repetition_penalty,
                             logits * repetition_penalty)
        logits = np.where(seen, penalized, logits)
    if temperature == 0:
        return logits.argmax(axis=1)
    if temperature != 1:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[1]:
        kth = np.partition(logits, -top_k, axis=1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        before = np.cumsum(sorted_probs, axis=1) - sorted_probs  # mass of the likelier tokens
        drop = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(drop, order, before >= top_p, axis=1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=1, keepdims=True)
    # rng.choice(V, p=row) for every row at once, with the same arithmetic and the same draws:
    # the row's cumulative distribution, one uniform u per row, and the first index whose
    # cumulative probability exceeds u (searchsorted side="right": the count of those <= u)
    cdf = probs.cumsum(axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(len(cdf))
    return (cdf <= u[:, None]).sum(axis=1)
