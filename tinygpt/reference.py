"""Pure-NumPy forward/backward of every kernel: the parity oracle.

Each function here has a compiled twin in csrc/ with the same name and arguments (the compiled
one also takes ``n_threads``). The twins must agree to rounding; tests/test_kernels.py checks it.
Shapes: N rows, C channels, B batch, H heads, T time, D head size, V vocabulary.
Nothing here validates its input: tinygpt.ops does that once for both backends.
"""
import math

import numpy as np

GELU_C = math.sqrt(2.0 / math.pi)


def layernorm_forward(x, weight, bias, eps=1e-5):
    """x (N, C), weight (C,), bias (C,) -> out (N, C), mean (N,), rstd (N,)."""
    C = x.shape[1]
    mean = x.sum(axis=1) / C  # the bits of x.mean(axis=1), without its per-call overhead
    xc = x - mean[:, None]
    var = (xc * xc).sum(axis=1) / C
    rstd = 1.0 / np.sqrt(var + eps)
    out = xc * rstd[:, None] * weight + bias
    return out, mean, rstd


def layernorm_backward(dout, x, weight, mean, rstd, residual=None):
    """dout (N, C), then forward's x, weight, mean, rstd, and residual (N, C) or None
    -> dx (N, C) = residual + the gradient through the norm, dweight (C,), dbias (C,)."""
    xhat = (x - mean[:, None]) * rstd[:, None]
    dbias = dout.sum(axis=0)
    dweight = (dout * xhat).sum(axis=0)
    dxhat = dout * weight
    dx = (dxhat - dxhat.mean(axis=1, keepdims=True)
          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True)) * rstd[:, None]
    return (dx if residual is None else residual + dx), dweight, dbias


def gelu_forward(x):
    """tanh-approximate GELU, elementwise: x (any shape) -> out (same shape)."""
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * x ** 3)))


def gelu_backward(dout, x):
    """dout (any shape), then forward's x -> dx (same shape)."""
    t = np.tanh(GELU_C * (x + 0.044715 * x ** 3))
    dtanh = GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dtanh)


def _heads(x, n_heads):
    """(B, T, C) -> (B, H, T, D)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)


def _split_heads(qkv, n_heads):
    """qkv (B, T, 3C) -> q, k, v, each (B, H, T, D)."""
    return [_heads(part, n_heads) for part in np.split(qkv, 3, axis=-1)]


def _merge_heads(x):
    """(B, H, T, D) -> (B, T, H * D)."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def _causal_scores(q, k):
    """Scaled scores q k^T / sqrt(D) with the future masked to -inf: (B, H, T, T)."""
    T, D = q.shape[-2], q.shape[-1]
    scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(D))
    scores[..., np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
    return scores


def attention_forward(qkv, n_heads):
    """Causal self-attention. qkv (B, T, 3C) = [q | k | v], each split into n_heads heads of
    D = C / n_heads -> out (B, T, C), lse (B, H, T).

    lse is the log-sum-exp of each row of scaled scores: all backward needs to rebuild the
    probabilities without keeping the (B, H, T, T) matrix.
    """
    q, k, v = _split_heads(qkv, n_heads)
    scores = _causal_scores(q, k)
    row_max = scores.max(axis=-1, keepdims=True)
    lse = (row_max + np.log(np.exp(scores - row_max).sum(axis=-1, keepdims=True)))[..., 0]
    probs = np.exp(scores - lse[..., None])
    return _merge_heads(probs @ v), lse


def attention_backward(dout, qkv, att, lse, n_heads):
    """dout (B, T, C), then forward's qkv (B, T, 3C), att (its out, (B, T, C)), lse (B, H, T)
    -> dqkv (B, T, 3C)."""
    q, k, v = _split_heads(qkv, n_heads)
    dout_h, out_h = _heads(dout, n_heads), _heads(att, n_heads)  # (B, H, T, D)
    scale = 1.0 / math.sqrt(q.shape[-1])
    probs = np.exp(_causal_scores(q, k) - lse[..., None])
    dv = probs.swapaxes(-1, -2) @ dout_h
    dprobs = dout_h @ v.swapaxes(-1, -2)
    row_dot = (dout_h * out_h).sum(axis=-1, keepdims=True)  # = sum_j probs * dprobs
    dscores = probs * (dprobs - row_dot)
    dq = (dscores @ k) * scale
    dk = (dscores.swapaxes(-1, -2) @ q) * scale
    return np.concatenate([_merge_heads(dq), _merge_heads(dk), _merge_heads(dv)], axis=-1)


def softmax_cross_entropy(logits, targets):
    """Fused softmax + cross-entropy. logits (N, V), targets (N,) ints, -1 = ignore.

    Returns the mean loss over the rows not ignored (a Python float) and dlogits (N, V), the
    gradient of that mean (zero on ignored rows).
    """
    valid = targets >= 0
    n_valid = int(valid.sum())
    row_max = logits.max(axis=1, keepdims=True)
    exp = np.exp(logits - row_max)
    sum_exp = exp.sum(axis=1, keepdims=True)
    lse = (row_max + np.log(sum_exp))[:, 0]
    safe_targets = np.where(valid, targets, 0)
    picked = logits[np.arange(len(targets)), safe_targets]
    loss = float(((lse - picked) * valid).sum() / n_valid)
    dlogits = exp / sum_exp
    dlogits[np.arange(len(targets)), safe_targets] -= 1.0
    dlogits *= (valid / n_valid)[:, None].astype(logits.dtype)
    return loss, dlogits


def linear_forward(x, weight, bias=None, residual=None):
    """x (N, K), weight (K, M), bias (M,) or None, residual (N, M) or None
    -> out (N, M) = residual + x @ weight + bias."""
    out = x @ weight
    if bias is not None:
        out += bias
    if residual is not None:
        out += residual
    return out


def linear_backward(dout, x, weight):
    """dout (N, M), then forward's x (N, K) and weight (K, M)
    -> dx (N, K), dweight (K, M), dbias (M,). (A residual's gradient is dout itself.)"""
    return dout @ weight.T, x.T @ dout, dout.sum(axis=0)


def relu2_forward(x):
    """Squared ReLU, elementwise: x (any shape) -> max(x, 0)^2 (same shape)."""
    r = np.maximum(x, 0)
    return r * r


def relu2_backward(dout, x):
    """dout (any shape), then forward's x -> dx = 2 max(x, 0) dout."""
    return 2 * np.maximum(x, 0) * dout


def _rotate_qk(qkv, n_heads, cos, sin):
    """qkv (B, T, 3C) with q and k rotated by the angles whose cos and sin (T, D/2) are given,
    v unchanged: each head's first and second halves (x1, x2) become
    (x1 cos - x2 sin, x2 cos + x1 sin) (GPT-NeoX's half-split layout)."""
    B, T, C3 = qkv.shape
    heads = qkv.reshape(B, T, 3, n_heads, -1)
    half = heads.shape[-1] // 2
    x1, x2 = heads[:, :, :2, :, :half], heads[:, :, :2, :, half:]  # q and k: (B, T, 2, H, D/2)
    c, s = cos[:, None, None, :], sin[:, None, None, :]  # (T, 1, 1, D/2)
    out = heads.copy()
    out[:, :, :2, :, :half] = x1 * c - x2 * s
    out[:, :, :2, :, half:] = x2 * c + x1 * s
    return out.reshape(B, T, C3)


def rotary_forward(qkv, n_heads, cos, sin):
    """Rotary positions: qkv (B, T, 3C), cos and sin (T, D/2) of the rows' angles
    -> qkv (B, T, 3C) with each head of q and k rotated (see ``_rotate_qk``), v as it was."""
    return _rotate_qk(qkv, n_heads, cos, sin)


def rotary_backward(dqkv, n_heads, cos, sin):
    """dqkv (B, T, 3C) at forward's output, then forward's cos and sin -> dqkv at its input:
    a rotation's transpose is the rotation by minus the angle."""
    return _rotate_qk(dqkv, n_heads, cos, -sin)


def embedding_backward(dout, ids, vocab_size):
    """dout (N, C), ids (N,) in [0, V) -> the token embedding's gradient (V, C): each row of
    dout added into its id's row, in row order."""
    out = np.zeros((vocab_size, dout.shape[1]), dout.dtype)
    np.add.at(out, ids, dout)
    return out


def adamw_update(params, grads, m, v, decay, b1, one_b1, b2, one_b2, lr, eps_hat, step):
    """One AdamW step: params, grads, m, v, decay (n,) and the step's scalars (see
    ops.adamw_update) -> new (params, m, v). Every operation rounds once, in the arrays' type."""
    f = params.dtype.type
    m = m * f(b1) + f(one_b1) * grads
    v = v * f(b2) + grads * grads * f(one_b2)
    params = params - decay * params * f(lr)
    return params - m / (np.sqrt(v) + f(eps_hat)) * f(step), m, v
