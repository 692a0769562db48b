"""TinyGPT: a GPT-2-style (pre-LayerNorm) character model with a hand-written backward pass.

All parameters live in one flat array (``model.params``) and the gradients mirror it
(``model.grads``). ``model.weights`` and ``model.weight_grads`` give typed views into the two
(``model.weights.blocks[0].attn_w``); ``model.p`` and ``model.g`` give the same views by name
(``"h0.attn_w"``), the names checkpoints and exports use. Linear layers compute
``y = x @ W + b`` with W of shape (in, out).

    tok_emb (+ pos_emb) -> n_layers x [x += proj(attn(ln1(x))); x += fc2(act(fc(ln2(x))))]
    -> ln_f -> head -> logits

Options, keyword-only (the defaults are GPT-2's block, the lab's model):
- ``position``: "learned" adds a learned position table to the token embeddings; "rotary"
  rotates each head's queries and keys by angles that grow with the position instead
  (GPT-NeoX's half-split layout, base 10000) and has no position table.
- ``mlp``: the MLP's activation, "gelu" (tanh approximation) or "relu2" (squared ReLU).
- ``dropout`` p > 0: a training loss (``loss(x, y, dropout_rng=...)``) zeroes each element of
  the embeddings and of every residual branch (proj's and fc2's outputs) with probability p and
  scales the rest by 1 / (1 - p); forward, generate and a loss without dropout_rng never drop.

``transformer_forward`` is the one forward pass: training and evaluation run it on the ops
(compiled kernels) over whole sequences, cached generation (tinygpt.generate) on plain NumPy
over one new position per row.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import ops

INIT_STD = 0.02
POSITIONS = ("learned", "rotary")
MLPS = ops.ACTIVATIONS
ROTARY_BASE = 10000.0


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    max_seq_len: int = 256
    dropout: float = 0.0
    position: str = "learned"
    mlp: str = "gelu"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len"):
            value = getattr(self, name)
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
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.position == "rotary" and self.head_size % 2:
            raise ValueError(f"rotary positions need an even head size (d_model / n_heads), "
                             f"got {self.head_size}")

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        """Plain Python values (for JSON and checkpoints)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value):
    """A numpy number as the Python int or float it holds; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------- parameters

@dataclass
class BlockParams:
    """One block's parameters, or their gradients: views into a flat buffer. C = d_model."""
    ln1_w: np.ndarray   # (C,)
    ln1_b: np.ndarray   # (C,)
    attn_w: np.ndarray  # (C, 3C): columns [q | k | v], each with the heads side by side
    attn_b: np.ndarray  # (3C,)
    proj_w: np.ndarray  # (C, C)
    proj_b: np.ndarray  # (C,)
    ln2_w: np.ndarray   # (C,)
    ln2_b: np.ndarray   # (C,)
    fc_w: np.ndarray    # (C, 4C)
    fc_b: np.ndarray    # (4C,)
    fc2_w: np.ndarray   # (4C, C)
    fc2_b: np.ndarray   # (C,)


@dataclass
class GPTParams:
    """All the parameters, or their gradients, as views into a flat buffer. V = vocab_size."""
    wte: np.ndarray            # (V, C) token embeddings
    wpe: Optional[np.ndarray]  # (max_seq_len, C) position embeddings; None with rotary positions
    blocks: list               # n_layers x BlockParams
    lnf_w: np.ndarray          # (C,)
    lnf_b: np.ndarray          # (C,)
    head_w: np.ndarray         # (C, V)


def _block_shapes(C):
    """BlockParams' field -> shape, in the order the fields sit in the flat buffer."""
    return dict(ln1_w=(C,), ln1_b=(C,), attn_w=(C, 3 * C), attn_b=(3 * C,), proj_w=(C, C),
                proj_b=(C,), ln2_w=(C,), ln2_b=(C,), fc_w=(C, 4 * C), fc_b=(4 * C,),
                fc2_w=(4 * C, C), fc2_b=(C,))


def parameter_shapes(cfg):
    """[(name, shape)] in the order they sit in the flat buffer."""
    C, V = cfg.d_model, cfg.vocab_size
    shapes = [("wte", (V, C))]
    if cfg.position == "learned":
        shapes.append(("wpe", (cfg.max_seq_len, C)))
    for i in range(cfg.n_layers):
        shapes += [(f"h{i}.{field}", shape) for field, shape in _block_shapes(C).items()]
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


def _typed(views, cfg):
    """The named views of ``parameter_shapes`` as a GPTParams."""
    blocks = [BlockParams(**{field: views[f"h{i}.{field}"] for field in _block_shapes(1)})
              for i in range(cfg.n_layers)]
    return GPTParams(wte=views["wte"], wpe=views.get("wpe"), blocks=blocks,
                     lnf_w=views["lnf_w"], lnf_b=views["lnf_b"], head_w=views["head_w"])


def rotary_tables(max_seq_len, head_size, dtype):
    """cos and sin (max_seq_len, D/2) of the angles t * base^(-2i/D) at position t."""
    inverse_frequency = ROTARY_BASE ** (-np.arange(0, head_size, 2) / head_size)
    angles = np.outer(np.arange(max_seq_len), inverse_frequency)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


# ---------------------------------------------------------------- activations

@dataclass
class BlockActivations:
    """What one block's forward writes (and its backward reads), for N = B * T rows."""
    x: np.ndarray       # (N, C) the block's input: the residual stream
    ln1: np.ndarray     # (N, C)
    mean1: np.ndarray   # (N,)
    rstd1: np.ndarray   # (N,)
    qkv: np.ndarray     # (N, 3C) [q | k | v], q and k rotated with rotary positions
    att: np.ndarray     # (B, T, C) the heads' outputs side by side
    lse: np.ndarray     # (B, H, T) log-sum-exp of each row of attention scores
    x_mid: np.ndarray   # (N, C) the residual stream after attention
    ln2: np.ndarray     # (N, C)
    mean2: np.ndarray   # (N,)
    rstd2: np.ndarray   # (N,)
    fc: np.ndarray      # (N, 4C) the activation's slope at the MLP's pre-activation
    act: np.ndarray     # (N, 4C) the activation
    x_out: np.ndarray   # (N, C) the block's output: the next block's x
    mask_att: Optional[np.ndarray] = None  # (N, C) dropout masks (0 or 1 / (1 - p)), or None
    mask_mlp: Optional[np.ndarray] = None  # (N, C)


@dataclass
class Activations:
    """One forward pass's arrays for B sequences of T positions; N = B * T."""
    layers: list           # n_layers x BlockActivations
    lnf: np.ndarray        # (N, C)
    meanf: np.ndarray      # (N,)
    rstdf: np.ndarray      # (N,)
    logits: np.ndarray     # (N, V)
    mask_emb: Optional[np.ndarray] = None  # (N, C) dropout mask of the embeddings, or None

    @property
    def x(self):  # (N, C) the last block's output
        return self.layers[-1].x_out


@dataclass
class BackwardScratch:
    """Backward's arrays, reused by every layer. N = B * T."""
    dlogits: np.ndarray   # (N, V)
    dhead_b: np.ndarray   # (V,) the gradient of a head bias the model does not have
    dx: np.ndarray        # (N, C) the residual stream's gradient
    dln: np.ndarray       # (N, C)
    datt: np.ndarray      # (N, C)
    dqkv: np.ndarray      # (B, T, 3C)
    dfc: np.ndarray       # (N, 4C)
    dbranch: Optional[np.ndarray] = None  # (N, C) a dropped branch's gradient, or None


def new_activations(cfg, B, T, dtype, for_backward, dropout=False):
    """Activations for B x T positions. for_backward: every layer gets its own arrays (backward
    reads them all); otherwise the layers share one set, the residual stream alternating
    between two arrays, and the memory stays that of one layer. dropout: with masks."""
    C, H, N = cfg.d_model, cfg.n_heads, B * T

    def new(*shape):
        return ops.empty(shape, dtype)

    def layer_arrays():
        return dict(ln1=new(N, C), mean1=new(N), rstd1=new(N), qkv=new(N, 3 * C),
                    att=new(B, T, C), lse=new(B, H, T), x_mid=new(N, C), ln2=new(N, C),
                    mean2=new(N), rstd2=new(N), fc=new(N, 4 * C), act=new(N, 4 * C))

    n_streams = cfg.n_layers + 1 if for_backward else 2
    stream = [new(N, C) for _ in range(n_streams)]  # layer i reads stream i, writes i + 1
    shared = None if for_backward else layer_arrays()
    layers = []
    for i in range(cfg.n_layers):
        masks = dict(mask_att=new(N, C), mask_mlp=new(N, C)) if dropout else {}
        layers.append(BlockActivations(x=stream[i % n_streams], x_out=stream[(i + 1) % n_streams],
                                       **(shared or layer_arrays()), **masks))
    return Activations(layers=layers, lnf=new(N, C), meanf=new(N), rstdf=new(N),
                       logits=new(N, cfg.vocab_size), mask_emb=new(N, C) if dropout else None)


def _new_backward_scratch(cfg, B, T, dtype, dropout):
    C, V, N = cfg.d_model, cfg.vocab_size, B * T

    def new(*shape):
        return ops.empty(shape, dtype)

    return BackwardScratch(dlogits=new(N, V), dhead_b=new(V), dx=new(N, C), dln=new(N, C),
                           datt=new(N, C), dqkv=new(B, T, 3 * C), dfc=new(N, 4 * C),
                           dbranch=new(N, C) if dropout else None)


# ---------------------------------------------------------------- forward and backward

@dataclass
class Dropout:
    """A training forward's dropout: the rate, and the generator its masks are drawn from."""
    p: float
    rng: np.random.Generator


def transformer_forward(k, cfg, w, idx, start, acts, attend, rope=None, dropout=None):
    """The forward pass: idx (B, T) ids at positions start..start+T-1 -> acts.logits (B*T, V).

    k: the ops to run on (tinygpt.ops; tinygpt.generate's row ops for cached decoding). w: the
    GPTParams. acts: the Activations it writes. attend(a, layer): a.qkv -> a.att for one
    block (the causal attention, or a step against cached keys and values). rope: the rotary
    tables (cos, sin), each (max_seq_len, D/2), with rotary positions. dropout: a Dropout, or
    None.
    """
    B, T = idx.shape
    x = np.take(w.wte, idx.reshape(-1), axis=0, mode="clip", out=acts.layers[0].x)  # (N, C)
    if w.wpe is not None:
        sequences = x.reshape(B, T, -1)  # a view
        sequences += w.wpe[start:start + T]
    if dropout is not None:
        x *= _draw_dropout_mask(acts.mask_emb, dropout)
    rows_rope = None if rope is None else (rope[0][start:start + T], rope[1][start:start + T])
    for layer, (block, a) in enumerate(zip(w.blocks, acts.layers)):
        block_forward(k, cfg, block, a, lambda a: attend(a, layer), rows_rope, dropout)
    k.layernorm_forward(acts.x, w.lnf_w, w.lnf_b, out=(acts.lnf, acts.meanf, acts.rstdf))
    return k.linear_forward(acts.lnf, w.head_w, out=acts.logits)


def block_forward(k, cfg, w, a, attend, rope, dropout):
    """One block: a.x (N, C) -> a.x_out (N, C), with what backward needs written into a.

    attend(a): a.qkv -> a.att. rope: (cos, sin), each (T, D/2), at the rows' positions, or
    None. dropout: a Dropout, or None.
    """
    B, T, C = a.att.shape
    k.layernorm_forward(a.x, w.ln1_w, w.ln1_b, out=(a.ln1, a.mean1, a.rstd1))
    k.linear_forward(a.ln1, w.attn_w, w.attn_b, out=a.qkv)
    if rope is not None:
        k.rotary_forward(a.qkv.reshape(B, T, 3 * C), cfg.n_heads, *rope)
    attend(a)
    _residual_forward(k, a.att.reshape(B * T, C), w.proj_w, w.proj_b, a.x, a.x_mid,
                      a.mask_att, dropout)
    k.layernorm_forward(a.x_mid, w.ln2_w, w.ln2_b, out=(a.ln2, a.mean2, a.rstd2))
    k.linear_forward(a.ln2, w.fc_w, w.fc_b, activation=cfg.mlp, out=(a.fc, a.act))
    _residual_forward(k, a.act, w.fc2_w, w.fc2_b, a.x_mid, a.x_out, a.mask_mlp, dropout)


def block_backward(cfg, w, dw, a, s, rope, dropout):
    """block_forward's backward on the ops: s.dx (N, C), the gradient at a.x_out, becomes the
    gradient at a.x (in place); the block's parameter gradients go into dw (overwritten)."""
    B, T, C = a.att.shape
    N = B * T
    # MLP: x_out = x_mid + fc2(act(fc(ln2(x_mid))))
    dbranch = _residual_backward(s, a.mask_mlp, dropout)
    ops.linear_backward(dbranch, a.act, w.fc2_w, slope=a.fc, out=(s.dfc, dw.fc2_w, dw.fc2_b))
    ops.linear_backward(s.dfc, a.ln2, w.fc_w, out=(s.dln, dw.fc_w, dw.fc_b))
    ops.layernorm_backward(s.dln, a.x_mid, w.ln2_w, a.mean2, a.rstd2, s.dx,
                           out=(s.dx, dw.ln2_w, dw.ln2_b))
    # attention: x_mid = x + proj(attn(ln1(x)))
    dbranch = _residual_backward(s, a.mask_att, dropout)
    ops.linear_backward(dbranch, a.att.reshape(N, C), w.proj_w,
                        out=(s.datt, dw.proj_w, dw.proj_b))
    ops.attention_backward(s.datt.reshape(B, T, C), a.qkv.reshape(B, T, 3 * C), a.att, a.lse,
                           cfg.n_heads, out=s.dqkv)
    if rope is not None:
        ops.rotary_backward(s.dqkv, cfg.n_heads, *rope)
    ops.linear_backward(s.dqkv.reshape(N, 3 * C), a.ln1, w.attn_w,
                        out=(s.dln, dw.attn_w, dw.attn_b))
    ops.layernorm_backward(s.dln, a.x, w.ln1_w, a.mean1, a.rstd1, s.dx,
                           out=(s.dx, dw.ln1_w, dw.ln1_b))


def _residual_forward(k, x, weight, bias, residual, out, mask, dropout):
    """out (N, M) = residual + dropout(x @ weight + bias), the mask drawn into ``mask``."""
    if dropout is None:
        return k.linear_forward(x, weight, bias, residual=residual, out=out)
    k.linear_forward(x, weight, bias, out=out)
    out *= _draw_dropout_mask(mask, dropout)
    out += residual
    return out


def _residual_backward(s, mask, dropout):
    """The gradient at a residual branch's output: s.dx, through its dropout mask if any."""
    return s.dx if dropout is None else np.multiply(s.dx, mask, out=s.dbranch)


def full_attention(cfg):
    """attend(a, layer) for whole sequences: causal attention over a's T positions."""
    def attend(a, layer):
        B, T, C = a.att.shape
        ops.attention_forward(a.qkv.reshape(B, T, 3 * C), cfg.n_heads, out=(a.att, a.lse))
    return attend


class TinyGPT:
    """GPT-2-style character model. float32 by default; float64 works too (for gradient checks).

    >>> model = TinyGPT(vocab_size=65)
    >>> model.forward(np.zeros((2, 8), dtype=np.int64)).shape
    (2, 8, 65)
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 4,
                 max_seq_len: int = 256, *, dropout: float = 0.0, position: str = "learned",
                 mlp: str = "gelu", seed: int = 0, dtype=np.float32):
        self.config = GPTConfig(vocab_size, d_model, n_heads, n_layers, max_seq_len, dropout,
                                position, mlp)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.shapes = parameter_shapes(self.config)
        n = sum(math.prod(shape) for _, shape in self.shapes)
        self.params = np.zeros(n, dtype=self.dtype)
        self.grads = np.zeros(n, dtype=self.dtype)
        self.p = _views(self.params, self.shapes)
        self.g = _views(self.grads, self.shapes)
        self.weights = _typed(self.p, self.config)
        self.weight_grads = _typed(self.g, self.config)
        self.rope = (rotary_tables(max_seq_len, self.config.head_size, self.dtype)
                     if position == "rotary" else None)
        self._attend = full_attention(self.config)
        self._pending = None  # what the last loss() leaves for backward(): idx, dropout
        self._training = None  # (B, T) -> (Activations, BackwardScratch), see _training_arrays
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
        logits = self._inference_forward(self._check_ids(x))
        return logits[0] if squeeze else logits

    __call__ = forward

    def _inference_forward(self, idx, attend=None):
        """idx (B, T) checked ids -> logits (B, T, V), in new arrays; attend as in
        ``transformer_forward`` (default: causal attention over the T positions)."""
        B, T = idx.shape
        acts = new_activations(self.config, B, T, self.dtype, for_backward=False)
        logits = transformer_forward(ops, self.config, self.weights, idx, 0, acts,
                                     attend or self._attend, self.rope)
        return logits.reshape(B, T, -1)

    def _training_arrays(self, B, T):
        """(Activations, BackwardScratch) for a training step of B x T: allocated on first use
        and reused while the shape stays."""
        if self._training is None or self._training[0] != (B, T):
            self._training = None  # let the old set go before the new one is allocated
            drop = self.config.dropout > 0
            self._training = ((B, T),
                              new_activations(self.config, B, T, self.dtype, True, drop),
                              _new_backward_scratch(self.config, B, T, self.dtype, drop))
        return self._training[1:]

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
        acts, scratch = self._training_arrays(*idx.shape)
        dropout = (Dropout(self.config.dropout, dropout_rng)
                   if dropout_rng is not None and self.config.dropout > 0 else None)
        logits = transformer_forward(ops, self.config, self.weights, idx, 0, acts, self._attend,
                                     self.rope, dropout)
        loss, _ = ops.softmax_cross_entropy(logits, y.reshape(-1), out=scratch.dlogits)
        self._pending = (idx, dropout)
        return loss

    # ------------------------------------------------------------ backward

    def backward(self) -> None:
        """Fill ``self.grads`` with d(loss)/d(params) for the last ``loss`` call (overwrites)."""
        if self._pending is None:
            raise RuntimeError("backward() needs a loss(x, y) call first")
        (idx, dropout), (acts, s) = self._pending, self._training[1:]
        cfg, w, dw = self.config, self.weights, self.weight_grads
        B, T = idx.shape
        rope = None if self.rope is None else (self.rope[0][:T], self.rope[1][:T])
        ops.linear_backward(s.dlogits, acts.lnf, w.head_w, out=(s.dln, dw.head_w, s.dhead_b))
        ops.layernorm_backward(s.dln, acts.x, w.lnf_w, acts.meanf, acts.rstdf,
                               out=(s.dx, dw.lnf_w, dw.lnf_b))
        for i in reversed(range(cfg.n_layers)):
            block_backward(cfg, w.blocks[i], dw.blocks[i], acts.layers[i], s, rope, dropout)
        if dropout is not None:
            s.dx *= acts.mask_emb
        if dw.wpe is not None:
            s.dx.reshape(B, T, -1).sum(axis=0, out=dw.wpe[:T])
            dw.wpe[T:] = 0.0
        ops.embedding_backward(s.dx, idx.reshape(-1), cfg.vocab_size, out=dw.wte)
        self._pending = None

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
        from .generate import generate
        return generate(self, prompt, max_new_tokens, temperature, top_k, seed, top_p=top_p,
                        repetition_penalty=repetition_penalty, use_cache=use_cache,
                        on_token=on_token)


def _draw_dropout_mask(mask, dropout):
    """Fill mask (any shape) in place: 0 with probability p, else 1 / (1 - p); returns it."""
    p = dropout.p
    dropout.rng.random(dtype=mask.dtype, out=mask)  # u in [0, 1): kept where u >= p
    mask += 1 - p
    np.floor(mask, out=mask)
    mask *= 1 / (1 - p)
    return mask
