"""TinyGPT: a GPT-2-style (pre-LayerNorm) character model with a hand-written backward pass.

All parameters live in one flat array (``model.params``); each weight is a named view into it
(``model.p["h0.attn_w"]``), and the gradients mirror it (``model.grads``, ``model.g``).
Linear layers compute ``y = x @ W + b`` with W of shape (in, out).

    tok_emb + pos_emb -> n_layers x [x += proj(attn(ln1(x))); x += fc2(gelu(fc1(ln2(x))))]
    -> ln_f -> head -> logits

With ``dropout`` p > 0, a training loss (``loss(x, y, dropout_rng=...)``) zeroes each element of
the embeddings and of every residual branch (proj's and fc2's outputs) with probability p and
scales the rest by 1 / (1 - p); forward, generate and a loss without dropout_rng never drop.
"""
import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np

from . import ops, reference

INIT_STD = 0.02


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    max_seq_len: int = 256
    dropout: float = 0.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name == "dropout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        p = self.dropout
        if isinstance(p, bool) or not isinstance(p, (int, float, np.number)) or not 0 <= p < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )


def parameter_shapes(cfg):
    """[(name, shape)] in the order they sit in the flat buffer."""
    C, V = cfg.d_model, cfg.vocab_size
    shapes = [("wte", (V, C)), ("wpe", (cfg.max_seq_len, C))]
    for i in range(cfg.n_layers):
        shapes += [
            (f"h{i}.ln1_w", (C,)), (f"h{i}.ln1_b", (C,)),
            (f"h{i}.attn_w", (C, 3 * C)), (f"h{i}.attn_b", (3 * C,)),
            (f"h{i}.proj_w", (C, C)), (f"h{i}.proj_b", (C,)),
            (f"h{i}.ln2_w", (C,)), (f"h{i}.ln2_b", (C,)),
            (f"h{i}.fc_w", (C, 4 * C)), (f"h{i}.fc_b", (4 * C,)),
            (f"h{i}.fc2_w", (4 * C, C)), (f"h{i}.fc2_b", (C,)),
        ]
    shapes += [("lnf_w", (C,)), ("lnf_b", (C,)), ("head_w", (C, V))]
    return shapes


def _views(flat, shapes):
    """Named views into a flat buffer, laid out in ``shapes`` order."""
    views, offset = {}, 0
    for name, shape in shapes:
        size = math.prod(shape)
        views[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    return views


class TinyGPT:
    """GPT-2-style character model. float32 by default; float64 works too (for gradient checks).

    >>> model = TinyGPT(vocab_size=65)
    >>> model.forward(np.zeros((2, 8), dtype=np.int64)).shape
    (2, 8, 65)
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 4,
                 max_seq_len: int = 256, *, dropout: float = 0.0, seed: int = 0,
                 dtype=np.float32):
        self.config = GPTConfig(vocab_size, d_model, n_heads, n_layers, max_seq_len, dropout)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.shapes = parameter_shapes(self.config)
        n = sum(math.prod(shape) for _, shape in self.shapes)
        self.params = np.zeros(n, dtype=self.dtype)
        self.grads = np.zeros(n, dtype=self.dtype)
        self.p = _views(self.params, self.shapes)
        self.g = _views(self.grads, self.shapes)
        self._cache = None
        self._buffers = None  # see _step_buffers
        self._init_weights(seed)

    # ------------------------------------------------------------ parameters

    def _init_weights(self, seed):
        """GPT-2 init: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layers)."""
        rng = np.random.default_rng(seed)
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for name, view in self.p.items():
            kind = name.split(".")[-1]
            if kind.endswith("_b"):
                view[...] = 0.0
            elif kind in ("ln1_w", "ln2_w", "lnf_w"):
                view[...] = 1.0
            else:
                std = residual_std if kind in ("proj_w", "fc2_w") else INIT_STD
                view[...] = rng.normal(0.0, std, size=view.shape)

    def decay_mask(self) -> np.ndarray:
        """Flat 0/1 array: 1 where weight decay applies (matrices and embeddings, not biases or LN)."""
        mask = np.zeros(self.params.size, dtype=self.dtype)
        for name, view in _views(mask, self.shapes).items():
            if view.ndim == 2:
                view[...] = 1.0
        return mask

    def num_parameters(self) -> int:
        return int(self.params.size)

    # ------------------------------------------------------------ forward

    def _check_ids(self, x, name="x", limit_length=True):
        """Token ids (B, T) or (T,) -> int64 (B, T), with a clear error for anything else."""
        x = np.asarray(x)
        if x.dtype == bool or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{name} must hold integer token ids, got dtype {x.dtype}")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape (B, T) or (T,), got {x.shape}")
        B, T = x.shape
        if B < 1 or T < 1:
            raise ValueError(f"{name} must hold at least one token, got shape {x.shape}")
        if limit_length and T > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {T} exceeds max_seq_len {self.config.max_seq_len}"
            )
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside [0, {self.config.vocab_size})")
        return x.astype(np.int64, copy=False)

    def forward(self, x) -> np.ndarray:
        """Token ids (B, T) or (T,) -> logits (B, T, vocab) or (T, vocab), in the model's dtype."""
        squeeze = np.asarray(x).ndim == 1
        logits, _ = self._forward(self._check_ids(x), keep=False)
        return logits[0] if squeeze else logits

    __call__ = forward

    def _forward(self, idx, keep, kv_cache=None, dropout_rng=None):
        """idx (B, T) int64 -> logits (B, T, V).

        With keep, every op writes into the step buffers (``_step_buffers``), which then hold
        what backward needs; returns them too. Without, each op allocates its output. With a
        kv_cache (from ``_new_kv_cache``), each layer's keys and values are written into it at
        positions 0..T-1, for ``_decode_step`` to go on from. With keep, a dropout_rng and
        config.dropout > 0, new dropout masks are drawn into the buffers and applied.
        """
        cfg, p = self.config, self.p
        B, T = idx.shape
        C, H = cfg.d_model, cfg.n_heads
        N = B * T
        bufs = self._step_buffers(B, T) if keep else None
        drop = keep and dropout_rng is not None and cfg.dropout > 0
        # the ids are checked already; mode="clip" lets np.take write straight into out
        x = np.take(p["wte"], idx, axis=0, mode="clip",
                    out=None if bufs is None else bufs["layers"][0]["x"].reshape(B, T, C))
        x += p["wpe"][:T]
        x = x.reshape(N, C)  # (N, C) residual stream
        if drop:
            x *= _draw_dropout_mask(bufs["mask_emb"], cfg.dropout, dropout_rng)
        for i in range(cfg.n_layers):
            h, L = f"h{i}.", bufs["layers"][i] if keep else None
            ln1, _, _ = ops.layernorm_forward(x, p[h + "ln1_w"], p[h + "ln1_b"],
                                              out=_outs(L, "ln1", "mean1", "rstd1"))
            qkv = ops.linear_forward(ln1, p[h + "attn_w"], p[h + "attn_b"],
                                     out=_outs(L, "qkv"))  # (N, 3C)
            heads_in = qkv.reshape(B, T, 3 * C)  # a view: rows grouped by sequence
            if kv_cache is not None:
                _store_keys_values(kv_cache[i], heads_in, H)
            att, _ = ops.attention_forward(heads_in, H, out=_outs(L, "att", "lse"))  # (B, T, C)
            x_mid = self._residual_branch(att.reshape(N, C), h + "proj", x, _outs(L, "x_mid"),
                                          L["mask_att"] if drop else None, dropout_rng)
            ln2, _, _ = ops.layernorm_forward(x_mid, p[h + "ln2_w"], p[h + "ln2_b"],
                                              out=_outs(L, "ln2", "mean2", "rstd2"))
            fc = ops.linear_forward(ln2, p[h + "fc_w"], p[h + "fc_b"], out=_outs(L, "fc"))
            act = ops.gelu_forward(fc, out=_outs(L, "act"))  # (N, 4C)
            x = self._residual_branch(act, h + "fc2", x_mid, _outs(L, "x_out"),
                                      L["mask_mlp"] if drop else None, dropout_rng)
        lnf, _, _ = ops.layernorm_forward(x, p["lnf_w"], p["lnf_b"],
                                          out=_outs(bufs, "lnf", "meanf", "rstdf"))
        logits = ops.linear_forward(lnf, p["head_w"], out=_outs(bufs, "logits"))  # (N, V)
        return logits.reshape(B, T, cfg.vocab_size), bufs

    def _residual_branch(self, x, layer, residual, out, mask, dropout_rng):
        """residual + dropout(x @ W + b) for the linear layer named ``layer`` (W = layer_w);
        mask is the buffer for the new dropout mask, None for no dropout."""
        w, b = self.p[layer + "_w"], self.p[layer + "_b"]
        if mask is None:
            return ops.linear_forward(x, w, b, residual=residual, out=out)
        y = ops.linear_forward(x, w, b, out=out)
        y *= _draw_dropout_mask(mask, self.config.dropout, dropout_rng)
        y += residual
        return y

    def _step_buffers(self, B, T):
        """The arrays one training step of shape (B, T) writes: per layer what backward needs,
        then backward's scratch. Allocated on first use and reused while the shape stays."""
        if self._buffers is not None and self._buffers["shape"] == (B, T):
            return self._buffers
        self._buffers = None  # let the old set go before the new one is allocated
        cfg, dtype = self.config, self.dtype
        C, H, V, N = cfg.d_model, cfg.n_heads, cfg.vocab_size, B * T

        def new(*shape):
            return np.empty(shape, dtype)

        residual = [new(N, C) for _ in range(cfg.n_layers + 1)]  # layer i reads i, writes i + 1
        layers = [dict(x=residual[i], ln1=new(N, C), mean1=new(N), rstd1=new(N),
                       qkv=new(N, 3 * C), att=new(B, T, C), lse=new(B, H, T), x_mid=new(N, C),
                       ln2=new(N, C), mean2=new(N), rstd2=new(N), fc=new(N, 4 * C),
                       act=new(N, 4 * C), x_out=residual[i + 1])
                  for i in range(cfg.n_layers)]
        self._buffers = dict(
            shape=(B, T), layers=layers, x=residual[-1], lnf=new(N, C), meanf=new(N),
            rstdf=new(N), logits=new(N, V),
            # backward's scratch, reused by every layer
            dlogits=new(N, V), dhead_b=new(V), dx=new(N, C), dx_ln=new(N, C), dln=new(N, C),
            datt=new(N, C), dqkv=new(B, T, 3 * C), dact=new(N, 4 * C), dfc=new(N, 4 * C))
        if cfg.dropout > 0:  # the masks (zero or 1 / (1 - p)) and a scratch for their gradients
            self._buffers.update(mask_emb=new(N, C), dbranch=new(N, C))
            for layer in layers:
                layer.update(mask_att=new(N, C), mask_mlp=new(N, C))
        return self._buffers

    def _decode_step(self, ids, position, kv_cache):
        """One new token per row: ids (B,) at ``position`` -> logits (B, V).

        The forward pass of a single position against the keys and values cached for the
        positions before it (adding its own), in plain NumPy: at one position the ops' checks
        and the kernels' thread start-up would cost more than the arithmetic. What is left is
        per-call overhead, so each op writes into the cache's scratch rows, and the weights come
        from the cache, prepared for the step (``_DecodeCache``, ``_DecodeLayer``). The same
        arithmetic as ``forward`` up to rounding: the logits agree to about 1e-15 in float64.
        """
        c, t = kv_cache, position + 1
        x = np.take(c.wte, ids, axis=0, out=c.x)  # (B, C) residual stream
        x += c.wpe[position]
        for L in c.layers:
            # attention: x += proj(attn(ln1(x))), with ln1's weight and bias inside attn_w/attn_b
            np.matmul(_normalize_rows(x, c), L.attn_w, out=c.qkv)  # (B, 3C) = [q | k | v]
            c.qkv += L.attn_b
            L.keys[..., position] = c.k  # keys (B, H, D, T) <- k (B, H, D)
            L.values[:, :, position] = c.v  # values (B, H, T, D) <- v (B, H, D)
            scores = np.matmul(c.q, L.keys[..., :t])  # (B, H, 1, D) @ (B, H, D, t): scaled
            scores -= np.maximum.reduce(scores, axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= np.add.reduce(scores, axis=-1, keepdims=True)  # (B, H, 1, t) weights
            np.matmul(scores, L.values[:, :, :t], out=c.att)  # (B, H, 1, D)
            np.matmul(c.att_rows, L.proj_w, out=c.branch)  # (B, C)
            c.branch += L.proj_b
            x += c.branch
            # MLP: x += fc2(gelu(fc(ln2(x)))), with ln2's weight and bias inside fc_w/fc_b
            np.matmul(_normalize_rows(x, c), L.fc_w, out=c.fc)  # (B, 4C)
            c.fc += L.fc_b
            np.matmul(_gelu_rows(c.fc, c.gelu), L.fc2_w, out=c.branch)  # (B, C)
            c.branch += L.fc2_b
            x += c.branch
        logits = _normalize_rows(x, c) @ c.head_w  # (B, V), new: the caller may keep it
        logits += c.head_b
        return logits

    def _new_kv_cache(self, batch_size):
        """An empty ``_DecodeCache`` for batch_size rows."""
        return _DecodeCache(self, batch_size)

    def loss(self, x, y, dropout_rng: Optional[np.random.Generator] = None) -> float:
        """Mean cross-entropy of next-token predictions. x, y (B, T) ids (y = -1 is ignored).

        Keeps what ``backward`` needs; returns the loss as a float. With a dropout_rng (a
        numpy Generator) and config.dropout > 0, the loss is a training loss with dropout
        masks drawn from it; the same generator state gives the same masks.
        """
        idx = self._check_ids(x)
        y = np.asarray(y)
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"targets must be integer ids, got dtype {y.dtype}")
        if y.ndim == 1:
            y = y[None, :]
        if y.shape != idx.shape:
            raise ValueError(f"targets have shape {y.shape} but inputs have {idx.shape}")
        if dropout_rng is not None and not isinstance(dropout_rng, np.random.Generator):
            raise TypeError(f"dropout_rng must be a numpy Generator or None, "
                            f"got {type(dropout_rng).__name__}")
        logits, bufs = self._forward(idx, keep=True, dropout_rng=dropout_rng)
        loss, _ = ops.softmax_cross_entropy(logits.reshape(-1, self.config.vocab_size),
                                            y.reshape(-1), out=bufs["dlogits"])
        self._cache = dict(idx=idx, dropout=dropout_rng is not None and self.config.dropout > 0)
        return loss

    # ------------------------------------------------------------ backward

    def backward(self) -> None:
        """Fill ``self.grads`` with d(loss)/d(params) for the last ``loss`` call (overwrites)."""
        if self._cache is None:
            raise RuntimeError("backward() needs a loss(x, y) call first")
        cfg, p, g, S = self.config, self.p, self.g, self._buffers
        idx, drop = self._cache["idx"], self._cache["dropout"]
        B, T = idx.shape
        C, H = cfg.d_model, cfg.n_heads
        N = B * T

        dlnf, _, _ = ops.linear_backward(S["dlogits"], S["lnf"], p["head_w"],
                                         out=(S["dln"], g["head_w"], S["dhead_b"]))
        dx, _, _ = ops.layernorm_backward(dlnf, S["x"], p["lnf_w"], S["meanf"], S["rstdf"],
                                          out=(S["dx"], g["lnf_w"], g["lnf_b"]))
        for i in reversed(range(cfg.n_layers)):
            h, L = f"h{i}.", S["layers"][i]
            # MLP: x_out = x_mid + fc2(gelu(fc(ln2(x_mid))))
            dbranch = np.multiply(dx, L["mask_mlp"], out=S["dbranch"]) if drop else dx
            dact, _, _ = ops.linear_backward(dbranch, L["act"], p[h + "fc2_w"],
                                             out=(S["dact"], g[h + "fc2_w"], g[h + "fc2_b"]))
            dfc = ops.gelu_backward(dact, L["fc"], out=S["dfc"])
            dln2, _, _ = ops.linear_backward(dfc, L["ln2"], p[h + "fc_w"],
                                             out=(S["dln"], g[h + "fc_w"], g[h + "fc_b"]))
            dx_ln2, _, _ = ops.layernorm_backward(
                dln2, L["x_mid"], p[h + "ln2_w"], L["mean2"], L["rstd2"],
                out=(S["dx_ln"], g[h + "ln2_w"], g[h + "ln2_b"]))
            dx += dx_ln2
            # attention: x_mid = x + proj(attn(ln1(x)))
            dbranch = np.multiply(dx, L["mask_att"], out=S["dbranch"]) if drop else dx
            datt, _, _ = ops.linear_backward(dbranch, L["att"].reshape(N, C), p[h + "proj_w"],
                                             out=(S["datt"], g[h + "proj_w"], g[h + "proj_b"]))
            dqkv = ops.attention_backward(datt.reshape(B, T, C), L["qkv"].reshape(B, T, 3 * C),
                                          L["att"], L["lse"], H, out=S["dqkv"])
            dln1, _, _ = ops.linear_backward(dqkv.reshape(N, 3 * C), L["ln1"], p[h + "attn_w"],
                                             out=(S["dln"], g[h + "attn_w"], g[h + "attn_b"]))
            dx_ln1, _, _ = ops.layernorm_backward(
                dln1, L["x"], p[h + "ln1_w"], L["mean1"], L["rstd1"],
                out=(S["dx_ln"], g[h + "ln1_w"], g[h + "ln1_b"]))
            dx += dx_ln1

        if drop:
            dx *= S["mask_emb"]
        dx = dx.reshape(B, T, C)
        dx.sum(axis=0, out=g["wpe"][:T])
        g["wpe"][T:] = 0.0
        _token_gradient(idx.reshape(-1), dx.reshape(N, C), out=g["wte"], scratch=S["dx_ln"])
        self._cache = None

    # ------------------------------------------------------------ sampling

    def generate(self, prompt, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, seed=None, *, top_p: Optional[float] = None,
                 repetition_penalty: float = 1.0, use_cache: bool = True,
                 on_token: Optional[Callable[[np.ndarray], Optional[bool]]] = None) -> np.ndarray:
        """Sample ``max_new_tokens`` ids after ``prompt`` (ids, (T,) or (B, T)).

        Returns prompt + new ids with the prompt's rank. The model sees the last max_seq_len
        tokens. temperature 0 picks the likeliest token; top_k keeps the k likeliest, top_p the
        smallest set whose probability reaches p; repetition_penalty > 1 makes every token
        already in a row (prompt included) less likely (its logit divided by the penalty where
        positive, multiplied where negative). With use_cache (the default), keys and values
        are kept between steps, so each new token costs one position instead of the whole
        context; the tokens are the same either way. on_token(ids (B,)) sees each new token;
        when it returns True, generation stops there.
        """
        squeeze = np.asarray(prompt).ndim == 1
        ids = self._check_ids(prompt, name="prompt", limit_length=False)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        check_sampling(temperature, top_k, top_p, repetition_penalty)
        rng = np.random.default_rng(seed)
        max_len = self.config.max_seq_len
        kv_cache = self._new_kv_cache(ids.shape[0]) if use_cache else None
        seen = None  # (B, V) bool: the tokens each row holds, for the repetition penalty
        if repetition_penalty != 1:
            seen = np.zeros((ids.shape[0], self.config.vocab_size), dtype=bool)
            np.put_along_axis(seen, ids, True, axis=1)
        n = ids.shape[1]  # tokens so far: the prompt, then out[:, :n]
        out = np.empty((ids.shape[0], n + max_new_tokens), dtype=np.int64)
        out[:, :n] = ids
        logits = None
        for _ in range(max_new_tokens):
            if logits is None:  # first step, or the window moved: (re)read the whole context
                context = out[:, max(0, n - max_len):n]
                logits = self._forward(context, keep=False, kv_cache=kv_cache)[0][:, -1]  # (B, V)
            next_ids = sample_next(logits, temperature, top_k, top_p, rng,
                                   repetition_penalty, seen)
            out[:, n] = next_ids
            n += 1
            if seen is not None:
                seen[np.arange(len(next_ids)), next_ids] = True
            if on_token is not None and on_token(next_ids):
                break
            position = n - 1
            if use_cache and position < max_len:
                logits = self._decode_step(next_ids, position, kv_cache)
            else:
                logits = None
        ids = out if n == out.shape[1] else out[:, :n].copy()
        return ids[0] if squeeze else ids


def _token_gradient(ids, dx, out, scratch):
    """out (V, C) = sum of the rows of dx (N, C) per token id in ids (N,): the token embedding's
    gradient. The rows are sorted by id (stably) into scratch (N, C) and summed per run; the
    same order on every call, and about 3x faster than np.add.at."""
    order = np.argsort(ids, kind="stable")
    np.take(dx, order, axis=0, out=scratch, mode="clip")
    present, starts = np.unique(ids[order], return_index=True)
    out[...] = 0.0
    out[present] = np.add.reduceat(scratch, starts, axis=0)


def _draw_dropout_mask(mask, p, rng):
    """Fill mask (any shape) in place: 0 with probability p, else 1 / (1 - p); returns it."""
    rng.random(dtype=mask.dtype, out=mask)  # u in [0, 1): kept where u >= p
    mask += 1 - p
    np.floor(mask, out=mask)
    mask *= 1 / (1 - p)
    return mask


def _outs(buffers, *names):
    """The named arrays of ``buffers`` as an op's out= argument: one array, a tuple of several,
    or None when there are no buffers (the op then allocates)."""
    if buffers is None:
        return None
    return buffers[names[0]] if len(names) == 1 else tuple(buffers[n] for n in names)


def _store_keys_values(cache, qkv, n_heads):
    """Write the keys and values of qkv (B, T, 3C) into one layer's cache at positions 0..T-1."""
    keys, values = cache  # (B, H, D, max_seq_len) and (B, H, max_seq_len, D)
    B, T, C3 = qkv.shape
    _, k, v = qkv.reshape(B, T, 3, n_heads, C3 // 3 // n_heads).transpose(2, 0, 3, 1, 4)
    keys[..., :T] = k.swapaxes(2, 3)
    values[:, :, :T] = v


class _DecodeCache:
    """What cached generation keeps between ``_decode_step`` calls, for B rows.

    ``layers[i]``: layer i's keys (B, H, D, max_seq_len) and values (B, H, max_seq_len, D),
    laid out so that each head's scores and weighted sum are one matrix-vector product over
    contiguous rows, beside the weights one step uses (``_DecodeLayer``). ``cache[i]`` is
    (keys, values), which ``_forward`` fills for the prompt. The rest is scratch that each step
    overwrites: the residual stream x (B, C), q, k and v as views into qkv (B, 3C), and so on.

    The weights are read when the cache is made: a model's parameters must not change while a
    cache made from them is in use (generate makes a new one per call).
    """

    def __init__(self, model, batch_size):
        cfg, p, dtype = model.config, model.p, model.dtype
        B, C, H, T = batch_size, cfg.d_model, cfg.n_heads, cfg.max_seq_len
        D = C // H
        self.layers = [_DecodeLayer(p, f"h{i}.", 1.0 / math.sqrt(D),
                                    keys=np.zeros((B, H, D, T), dtype),
                                    values=np.zeros((B, H, T, D), dtype))
                       for i in range(cfg.n_layers)]
        self.wte, self.wpe = p["wte"], p["wpe"]
        self.head_w, self.head_b = _fold_layernorm(p["lnf_w"], p["lnf_b"], p["head_w"])
        self.mean_w = np.full((C, 1), 1.0 / C, dtype)  # x @ mean_w: the row means (B, 1)
        self.x, self.xhat, self.branch = (np.empty((B, C), dtype) for _ in range(3))
        self.stat = np.empty((B, 1), dtype)  # a per-row statistic of the normalization
        self.qkv = np.empty((B, 3 * C), dtype)
        heads = self.qkv.reshape(B, 3, H, D)
        self.q = heads[:, 0, :, None, :]  # (B, H, 1, D)
        self.k, self.v = heads[:, 1], heads[:, 2]  # (B, H, D) each
        self.att = np.empty((B, H, 1, D), dtype)
        self.att_rows = self.att.reshape(B, C)  # the heads' outputs side by side
        self.fc, self.gelu = np.empty((B, 4 * C), dtype), np.empty((B, 4 * C), dtype)

    def __getitem__(self, i):
        return self.layers[i].keys, self.layers[i].values


class _DecodeLayer:
    """One layer of a ``_DecodeCache``: its keys and values, and the weights a step reads.

    Each LayerNorm's weight and bias are folded into the matrix that reads its output (see
    ``_fold_layernorm``), so a step only normalizes; the attention's 1/sqrt(D) is folded into
    the query's columns. proj and fc2 are views of the model's parameters.
    """
    __slots__ = ("keys", "values", "attn_w", "attn_b", "proj_w", "proj_b", "fc_w", "fc_b",
                 "fc2_w", "fc2_b")

    def __init__(self, p, prefix, scale, keys, values):
        self.keys, self.values = keys, values
        attn_w, attn_b = _fold_layernorm(p[prefix + "ln1_w"], p[prefix + "ln1_b"],
                                         p[prefix + "attn_w"], p[prefix + "attn_b"])
        C = attn_w.shape[0]
        attn_w[:, :C] *= scale  # q's columns: the scores come out scaled
        attn_b[:C] *= scale
        self.attn_w, self.attn_b = attn_w, attn_b
        self.proj_w, self.proj_b = p[prefix + "proj_w"], p[prefix + "proj_b"]
        self.fc_w, self.fc_b = _fold_layernorm(p[prefix + "ln2_w"], p[prefix + "ln2_b"],
                                               p[prefix + "fc_w"], p[prefix + "fc_b"])
        self.fc2_w, self.fc2_b = p[prefix + "fc2_w"], p[prefix + "fc2_b"]


def _fold_layernorm(ln_w, ln_b, w, b=None):
    """The linear layer (w (C, M), b (M,) or None) that reads a LayerNorm's output, as one that
    reads the normalized rows xhat instead: (xhat * ln_w + ln_b) @ w + b
    = xhat @ (ln_w[:, None] * w) + (ln_b @ w + b). Returns new arrays (C, M) and (M,)."""
    folded_b = ln_b @ w
    if b is not None:
        folded_b += b
    return ln_w[:, None] * w, folded_b


def _normalize_rows(x, c):
    """LayerNorm without its weight and bias: x (B, C) -> c.xhat (B, C), (x - mean) / std."""
    xhat, stat = c.xhat, c.stat
    np.matmul(x, c.mean_w, out=stat)  # (B, 1) means
    np.subtract(x, stat, out=xhat)
    np.vecdot(xhat, xhat, out=stat[:, 0])  # sums of squares
    stat *= 1.0 / x.shape[1]  # variances
    stat += 1e-5
    np.sqrt(stat, out=stat)
    xhat /= stat
    return xhat


def _gelu_rows(x, scratch):
    """tanh-approximate GELU of x (any shape) in place, with scratch of x's shape; returns x.
    0.5 x (1 + tanh(c (x + 0.044715 x^3))), with c (x + a x^3) as x (c + c a x^2): products
    only (the reference's x ** 3 is a pow call, about 25 us on 512 float32 values)."""
    np.multiply(x, x, out=scratch)
    scratch *= reference.GELU_C * 0.044715
    scratch += reference.GELU_C
    scratch *= x
    np.tanh(scratch, out=scratch)
    scratch *= 0.5
    scratch += 0.5
    x *= scratch
    return x


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
