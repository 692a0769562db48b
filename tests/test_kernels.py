"""The compiled kernels (tinygpt._layernorm, _gelu, _attention, _cross_entropy) against
tinygpt.reference: parity in float32 and float64 on 1 and 2 threads, bitwise determinism across
thread counts and reruns, and the input checks at the Python boundary."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt import _attention, _cross_entropy, _gelu, _layernorm, _linear
from tinygpt import reference as ref

DTYPES = [np.float32, np.float64]
THREADS = [1, 2]
SETTINGS = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def tolerance(dtype, atol32=1e-6):
    """rtol/atol for comparing a kernel with the reference: the two differ only by the order
    of summation (and, for float32 GELU, by the exp-based tanh)."""
    if dtype == np.float32:
        return dict(rtol=1e-5, atol=atol32)
    return dict(rtol=1e-10, atol=1e-12)


def assert_all_close(actual, expected, dtype, atol32=1e-6):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == dtype and a.shape == e.shape
        np.testing.assert_allclose(a, e, **tolerance(dtype, atol32))


def normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# ---------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, n=st.integers(1, 80), c=st.integers(1, 1000), eps=st.sampled_from([1e-5, 1e-3]))
def test_layernorm_parity(dtype, n_threads, seed, n, c, eps):
    rng = np.random.default_rng(seed)
    n = max(1, n // max(1, c // 100))  # long rows come with fewer of them
    x = normal(rng, (n, c), dtype, 2.0) + dtype(0.5)
    w, b, dout = normal(rng, c, dtype), normal(rng, c, dtype), normal(rng, (n, c), dtype)
    fwd = _layernorm.layernorm_forward(x, w, b, eps, n_threads)
    assert_all_close(fwd, ref.layernorm_forward(x, w, b, eps), dtype)
    _, mean, rstd = ref.layernorm_forward(x, w, b, eps)
    bwd = _layernorm.layernorm_backward(dout, x, w, mean, rstd, n_threads)
    # dweight/dbias sum n rows: allow for the different summation order (64-row chunks here)
    assert_all_close(bwd, ref.layernorm_backward(dout, x, w, mean, rstd), dtype,
                     atol32=1e-6 * np.sqrt(n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, shape=st.lists(st.integers(1, 40), min_size=1, max_size=3))
def test_gelu_parity(dtype, n_threads, seed, shape):
    rng = np.random.default_rng(seed)
    # |x| <= 4 and |dout| <= 1: NumPy's own float32 error in gelu' reaches 6e-7 for 2 < |x| < 4
    # and 1.2e-6 beyond, so a wider range would test NumPy against atol=1e-6
    # (test_gelu_float32_accuracy checks the wide range against float64 instead)
    x = np.clip(normal(rng, shape, dtype, 1.5), -4, 4)
    dout = rng.uniform(-1, 1, shape).astype(dtype)
    assert_all_close((_gelu.gelu_forward(x, n_threads),), (ref.gelu_forward(x),), dtype)
    assert_all_close((_gelu.gelu_backward(dout, x, n_threads),),
                     (ref.gelu_backward(dout, x),), dtype)


def test_gelu_float32_accuracy():
    """float32 GELU against the float64 reference over a wide range, and at inf/nan."""
    x = np.linspace(-12, 12, 100_001, dtype=np.float32)
    x64 = x.astype(np.float64)
    ones = np.ones_like(x)
    np.testing.assert_allclose(_gelu.gelu_forward(x, 2), ref.gelu_forward(x64),
                               rtol=1e-6, atol=2e-7)
    np.testing.assert_allclose(_gelu.gelu_backward(ones, x, 2), ref.gelu_backward(ones, x64),
                               rtol=1e-6, atol=3e-7)
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30], np.float32)
    with np.errstate(all="ignore"):
        for dtype in DTYPES:
            s = special.astype(dtype)
            np.testing.assert_array_equal(_gelu.gelu_forward(s, 1), ref.gelu_forward(s))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, b=st.integers(1, 3), h=st.integers(1, 3), t=st.integers(1, 140),
       d=st.integers(1, 40))
def test_attention_parity(dtype, n_threads, seed, b, h, t, d):
    rng = np.random.default_rng(seed)
    qkv, dout = normal(rng, (b, t, 3 * h * d), dtype), normal(rng, (b, t, h * d), dtype)
    out, lse = _attention.attention_forward(qkv, h, n_threads)
    # float32: each output sums up to T*D products, in the kernel's order (with FMA where the
    # CPU has it) rather than NumPy's, so the tolerance is a few times looser than row-wise ones
    assert_all_close((out, lse), ref.attention_forward(qkv, h), dtype, atol32=4e-6)
    ref_out, ref_lse = ref.attention_forward(qkv, h)
    dqkv = _attention.attention_backward(dout, qkv, ref_out, ref_lse, h, n_threads)
    assert_all_close((dqkv,), (ref.attention_backward(dout, qkv, ref_out, ref_lse, h),), dtype,
                     atol32=4e-6)


def test_attention_is_causal():
    """Changing key/value t never changes the output rows before t."""
    rng = np.random.default_rng(0)
    qkv = normal(rng, (1, 150, 3 * 16), np.float32)  # 2 heads of 8, row blocks and column blocks cut mid-way
    out, _ = _attention.attention_forward(qkv, 2, 2)
    for t in (30, 64, 100):
        changed = qkv.copy()
        changed[:, t:, 16:] += 1  # keys and values from position t on
        out2, _ = _attention.attention_forward(changed, 2, 2)
        np.testing.assert_array_equal(out[:, :t], out2[:, :t])
        assert not np.array_equal(out[:, t:], out2[:, t:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, n=st.integers(1, 60), v=st.integers(1, 300), ignore=st.floats(0, 0.5))
def test_cross_entropy_parity(dtype, n_threads, seed, n, v, ignore):
    rng = np.random.default_rng(seed)
    logits = normal(rng, (n, v), dtype, 3.0)
    targets = rng.integers(0, v, n)
    targets[rng.random(n) < ignore] = -1
    targets[rng.integers(n)] = rng.integers(v)  # at least one row counts
    loss, dlogits = _cross_entropy.softmax_cross_entropy(logits, targets, n_threads)
    ref_loss, ref_dlogits = ref.softmax_cross_entropy(logits, targets)
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, ref_loss, **tolerance(dtype))
    assert_all_close((dlogits,), (ref_dlogits,), dtype)
    assert np.all(dlogits[targets == -1] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_logits(dtype):
    """Huge spreads and -inf logits: exp underflows to exactly 0 and nothing turns to nan."""
    logits = np.array([[0.0, -1e4, 50.0, -np.inf], [-200.0, -100.0, -150.0, 3.0]], dtype)
    targets = np.array([2, 1])
    loss, dlogits = _cross_entropy.softmax_cross_entropy(logits, targets, 1)
    ref_loss, ref_dlogits = ref.softmax_cross_entropy(logits, targets)
    np.testing.assert_allclose(loss, ref_loss, **tolerance(dtype))
    np.testing.assert_allclose(dlogits, ref_dlogits, **tolerance(dtype))
    assert dlogits[0, 3] == 0 and np.isfinite(dlogits).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, n=st.integers(1, 700), k=st.integers(1, 40), m=st.integers(1, 40),
       with_bias=st.booleans(), with_residual=st.booleans())
def test_linear_parity(dtype, n_threads, seed, n, k, m, with_bias, with_residual):
    rng = np.random.default_rng(seed)
    x, w, dout = normal(rng, (n, k), dtype), normal(rng, (k, m), dtype), normal(rng, (n, m), dtype)
    bias = normal(rng, m, dtype) if with_bias else None
    residual = normal(rng, (n, m), dtype) if with_residual else None
    out = _linear.linear_forward(x, w, bias, residual, n_threads)
    # float32: sums of K products (and of N rows for dweight, dbias) in BLAS's order
    assert_all_close((out,), (ref.linear_forward(x, w, bias, residual),), dtype, atol32=1e-5)
    grads = _linear.linear_backward(dout, x, w, n_threads)
    assert_all_close(grads, ref.linear_backward(dout, x, w), dtype, atol32=1e-6 * max(k, n))


# ----------------------------------------------------------------------------- determinism

def _default_like_calls(dtype):
    """One call per kernel function, sized so that every kernel has several work items
    (layernorm: 5 row chunks, gelu: 4 spans, attention: 6 heads and T > one block)."""
    rng = np.random.default_rng(7)
    x, dy = normal(rng, (300, 96), dtype), normal(rng, (300, 96), dtype)
    w, b = normal(rng, 96, dtype), normal(rng, 96, dtype)
    _, mean, rstd = ref.layernorm_forward(x, w, b)
    g = normal(rng, (3 * 4096 + 17,), dtype)
    qkv, do = normal(rng, (2, 70, 3 * 36), dtype), normal(rng, (2, 70, 36), dtype)
    out, lse = ref.attention_forward(qkv, 3)
    logits, targets = normal(rng, (300, 65), dtype), rng.integers(-1, 65, 300)
    lw, lb = normal(rng, (96, 40), dtype), normal(rng, 40, dtype)
    x_rows, dy_rows = normal(rng, (2100, 96), dtype), normal(rng, (2100, 40), dtype)
    return {
        "linear_forward": lambda n: (_linear.linear_forward(x_rows, lw, lb, dy_rows, n),),
        "linear_backward": lambda n: _linear.linear_backward(dy_rows, x_rows, lw, n),
        "layernorm_forward": lambda n: _layernorm.layernorm_forward(x, w, b, 1e-5, n),
        "layernorm_backward": lambda n: _layernorm.layernorm_backward(dy, x, w, mean, rstd, n),
        "gelu_forward": lambda n: (_gelu.gelu_forward(g, n),),
        "gelu_backward": lambda n: (_gelu.gelu_backward(g, g, n),),
        "attention_forward": lambda n: _attention.attention_forward(qkv, 3, n),
        "attention_backward": lambda n: (_attention.attention_backward(do, qkv, out, lse, 3, n),),
        "softmax_cross_entropy": lambda n: _cross_entropy.softmax_cross_entropy(logits, targets,
                                                                                n),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(_default_like_calls(np.float32)))
def test_bitwise_identical_across_threads_and_reruns(dtype, name):
    call = _default_like_calls(dtype)[name]
    first = call(1)
    for n_threads in (1, 2, 3):
        again = call(n_threads)
        assert len(again) == len(first)
        for a, b in zip(first, again):
            if isinstance(a, float):
                assert a == b
            else:
                assert np.array_equal(a, b), f"{name}: n_threads={n_threads} differs from 1"


# ---------------------------------------------------------------------------- input checks

def _arrays(dtype=np.float32):
    rng = np.random.default_rng(3)
    return dict(
        x=normal(rng, (6, 10), dtype), w=normal(rng, 10, dtype), b=normal(rng, 10, dtype),
        mean=normal(rng, 6, dtype), rstd=np.abs(normal(rng, 6, dtype)),
        qkv=normal(rng, (2, 5, 3 * 6), dtype), att=normal(rng, (2, 5, 6), dtype),
        lse=normal(rng, (2, 2, 5), dtype),
        logits=normal(rng, (6, 7), dtype), targets=np.array([0, 1, 6, -1, 2, 3]),
    )


A = _arrays()
A64 = _arrays(np.float64)
LN_F, LN_B = _layernorm.layernorm_forward, _layernorm.layernorm_backward
ATT_F, ATT_B = _attention.attention_forward, _attention.attention_backward
XENT = _cross_entropy.softmax_cross_entropy
LIN_F, LIN_B = _linear.linear_forward, _linear.linear_backward
qkv, att, lse, x = A["qkv"], A["att"], A["lse"], A["x"]
LW = normal(np.random.default_rng(4), (10, 4), np.float32)

BAD_CALLS = [
    # wrong dtypes, named in the message
    (TypeError, "x", lambda: LN_F(x.astype(np.int64), A["w"], A["b"], 1e-5, 1)),
    (TypeError, "x", lambda: LN_F(x.astype(np.float16), A["w"], A["b"], 1e-5, 1)),
    (TypeError, "weight", lambda: LN_F(x, A64["w"], A["b"], 1e-5, 1)),
    (TypeError, "rstd", lambda: LN_B(x, x, A["w"], A["mean"], A64["rstd"], 1)),
    (TypeError, "x", lambda: _gelu.gelu_forward(np.arange(5), 1)),
    (TypeError, "dout", lambda: _gelu.gelu_backward(x.astype(np.float64), x, 1)),
    (TypeError, "qkv", lambda: ATT_F(qkv.astype(np.int32), 2, 1)),
    (TypeError, "lse", lambda: ATT_B(att, qkv, att, lse.astype(np.float64), 2, 1)),
    (TypeError, "logits", lambda: XENT(A["logits"].astype(np.complex64), A["targets"], 1)),
    (TypeError, "targets", lambda: XENT(A["logits"], A["targets"].astype(np.float32), 1)),
    (TypeError, "targets", lambda: XENT(A["logits"], A["targets"] > 0, 1)),
    (TypeError, "x", lambda: LN_F(np.array(["a", "b"]), A["w"], A["b"], 1e-5, 1)),
    # wrong ranks and shapes, named in the message
    (ValueError, "x", lambda: LN_F(x[0], A["w"], A["b"], 1e-5, 1)),
    (ValueError, "weight", lambda: LN_F(x, A["w"][:-1], A["b"], 1e-5, 1)),
    (ValueError, "bias", lambda: LN_F(x, A["w"], A["b"][None], 1e-5, 1)),
    (ValueError, "dout", lambda: LN_B(x[:-1], x, A["w"], A["mean"], A["rstd"], 1)),
    (ValueError, "mean", lambda: LN_B(x, x, A["w"], A["mean"][:-1], A["rstd"], 1)),
    (ValueError, "C >= 1", lambda: LN_F(x[:, :0], A["w"][:0], A["b"][:0], 1e-5, 1)),
    (ValueError, "dout", lambda: _gelu.gelu_backward(x[:, :3], x, 1)),
    (ValueError, "qkv", lambda: ATT_F(qkv[0], 2, 1)),
    (ValueError, "3C", lambda: ATT_F(qkv[..., :-1], 2, 1)),
    (ValueError, "3C", lambda: ATT_F(qkv[..., :0], 2, 1)),
    (ValueError, "divisible", lambda: ATT_F(qkv, 4, 1)),
    (ValueError, "n_heads", lambda: ATT_F(qkv, 0, 1)),
    (TypeError, "n_heads", lambda: ATT_F(qkv, 2.0, 1)),
    (ValueError, "dout", lambda: ATT_B(att[:, :4], qkv, att, lse, 2, 1)),
    (ValueError, "att", lambda: ATT_B(att, qkv, att[:1], lse, 2, 1)),
    (ValueError, "lse", lambda: ATT_B(att, qkv, att, lse[..., :4], 2, 1)),
    (ValueError, "logits", lambda: XENT(A["logits"][0], A["targets"], 1)),
    (ValueError, "targets", lambda: XENT(A["logits"], A["targets"][:-1], 1)),
    # out-of-range targets: the message gives the index and the value
    (ValueError, r"targets\[2\] = 7", lambda: XENT(A["logits"], A["targets"] + (np.arange(6) == 2), 1)),
    (ValueError, r"targets\[3\] = -2", lambda: XENT(A["logits"], A["targets"] - (np.arange(6) == 3), 1)),
    (ValueError, "ignored", lambda: XENT(A["logits"], np.full(6, -1), 1)),
    (TypeError, "weight", lambda: LIN_F(x, LW.astype(np.float64), None, None, 1)),
    (TypeError, "residual", lambda: LIN_F(x, LW, None, np.zeros((6, 4), np.float64), 1)),
    (ValueError, "weight", lambda: LIN_F(x, LW[:-1], None, None, 1)),
    (ValueError, "bias", lambda: LIN_F(x, LW, np.zeros(5, np.float32), None, 1)),
    (ValueError, "residual", lambda: LIN_F(x, LW, None, np.zeros((5, 4), np.float32), 1)),
    (ValueError, "dout", lambda: LIN_B(np.zeros((6, 5), np.float32), x, LW, 1)),
    (ValueError, "N, K, M >= 1", lambda: LIN_F(x[:0], LW, None, None, 1)),
    # out arrays the kernel would write past, in the wrong type, or could not write at all
    (ValueError, "out must have shape", lambda: _gelu.gelu_forward(x, 1, out=x[:-1].copy())),
    (TypeError, "dtype", lambda: _gelu.gelu_forward(x, 1, out=x.astype(np.float64))),
    (ValueError, "C-contiguous", lambda: _gelu.gelu_forward(x, 1, out=np.empty(x.shape[::-1], x.dtype).T)),
    (ValueError, "writeable", lambda: _gelu.gelu_forward(x, 1, out=np.broadcast_to(x[:1], x.shape))),
    (TypeError, "numpy array", lambda: _gelu.gelu_forward(x, 1, out=x.tolist())),
    (ValueError, "3 arrays", lambda: LN_F(x, A["w"], A["b"], 1e-5, 1, out=(x.copy(),))),
    (ValueError, "lse must have shape", lambda: ATT_F(qkv, 2, 1, out=(att.copy(), lse[..., :-1].copy()))),
    (ValueError, "dqkv must have shape", lambda: ATT_B(att, qkv, att, lse, 2, 1, out=att.copy())),
    (ValueError, "dweight must have shape", lambda: LIN_B(x @ LW, x, LW, 1, out=(x.copy(), LW.T.copy(), LW[0].copy()))),
    (ValueError, "dlogits must have shape", lambda: XENT(A["logits"], A["targets"], 1, out=A["logits"][1:].copy())),
    # thread counts
    (ValueError, "n_threads", lambda: _gelu.gelu_forward(x, 0)),
    (ValueError, "n_threads", lambda: LN_F(x, A["w"], A["b"], 1e-5, -3)),
    (TypeError, "n_threads", lambda: ATT_F(qkv, 2, 1.5)),
    (TypeError, "n_threads", lambda: XENT(A["logits"], A["targets"], None)),
]


@pytest.mark.parametrize("error, match, call", BAD_CALLS)
def test_malformed_input_raises(error, match, call):
    with pytest.raises(error, match=match):
        call()


def test_uint64_targets_beyond_int64_are_out_of_range():
    targets = A["targets"].clip(0).astype(np.uint64)
    targets[4] = np.uint64(2**64 - 1)  # would wrap to -1 (ignored) if cast to int64 first
    with pytest.raises(ValueError, match=r"targets\[4\]"):
        XENT(A["logits"], targets, 1)


def test_non_contiguous_and_read_only_inputs_match_contiguous():
    rng = np.random.default_rng(5)
    big = normal(rng, (12, 20), np.float32)
    x_nc = big[::2, ::2]  # strided view, (6, 10)
    x_c = np.ascontiguousarray(x_nc)
    w = np.broadcast_to(np.float32(1.5), (10,))  # read-only, stride 0
    b = A["b"].copy()
    b.flags.writeable = False
    for got, want in zip(LN_F(x_nc, w, b, 1e-5, 2), LN_F(x_c, np.ascontiguousarray(w), b, 1e-5, 2)):
        assert np.array_equal(got, want)
    assert np.array_equal(_gelu.gelu_forward(big.T, 2), _gelu.gelu_forward(big.T.copy(), 2))
    qt = normal(rng, (2, 12, 5), np.float32).swapaxes(1, 2)  # (2, 5, 12), not contiguous
    for got, want in zip(ATT_F(qt, 2, 2), ATT_F(qt.copy(), 2, 2)):
        assert np.array_equal(got, want)
    logits_nc = normal(rng, (7, 6), np.float32).T  # (6, 7)
    targets_nc = np.array([0, 9, 1, 9, 6, 9, 2, 9, -1, 9, 3, 9])[::2]
    got = XENT(logits_nc, targets_nc.astype(np.int32), 2)
    want = XENT(logits_nc.copy(), targets_nc.copy(), 2)
    assert got[0] == want[0] and np.array_equal(got[1], want[1])


def test_size_zero_inputs():
    empty = np.zeros((0, 10), np.float32)
    out, mean, rstd = LN_F(empty, A["w"], A["b"], 1e-5, 2)
    assert out.shape == (0, 10) and mean.shape == (0,) and rstd.shape == (0,)
    dx, dw, db = LN_B(empty, empty, A["w"], mean, rstd, 2)
    assert dx.shape == (0, 10) and np.array_equal(dw, np.zeros(10, np.float32))
    assert np.array_equal(db, dw)
    assert _gelu.gelu_forward(np.zeros((3, 0)), 2).shape == (3, 0)
    for B, T in [(0, 5), (2, 0)]:
        qz = np.zeros((B, T, 12), np.float32)
        out, lse = ATT_F(qz, 2, 2)
        assert out.shape == (B, T, 4) and lse.shape == (B, 2, T)
        assert ATT_B(out, qz, out, lse, 2, 2).shape == (B, T, 12)
    with pytest.raises(ValueError):
        XENT(np.zeros((0, 7), np.float32), np.zeros(0, np.int64), 1)


def test_outputs_are_new_arrays_of_the_input_dtype():
    x64 = A64["x"]
    out = _gelu.gelu_forward(x64, 1)
    assert out.dtype == np.float64 and not np.shares_memory(out, x64)
    loss, dlogits = XENT(A64["logits"], A64["targets"], 1)
    assert isinstance(loss, float) and dlogits.dtype == np.float64
    assert _gelu.gelu_forward([0.5, 1.0], 1).dtype == np.float64  # lists become float64
