"""The compiled kernels (tinygpt._layernorm, _gelu, _relu2, _attention, _rotary, _cross_entropy,
_linear, _embedding, _adamw) against
tinygpt.reference: parity in float32 and float64 on 1 and 2 threads (with explicit examples at
every kernel's block boundaries, read from the modules), bitwise determinism across thread
counts and reruns, headers that compile without warnings, the input checks in tinygpt.ops, and
the kernels' own guards when called directly."""
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinygpt import (_adamw, _attention, _cross_entropy, _embedding, _gelu, _layernorm, _linear,
                     _relu2, ops)
from tinygpt import reference as ref

DTYPES = [np.float32, np.float64]
THREADS = [1, 2]
SETTINGS = settings(max_examples=25)  # derandomized, no database: the profile in conftest.py
seeds = st.integers(0, 2**32 - 1)

# The kernels' work splits, read from the modules (csrc/): the explicit @example cases sit on
# each side of them.
LINEAR = _linear._BLOCKS
MR, NR = LINEAR["tiles"]["avx512"]        # the own float32 GEMM's micro-tiles (rows, columns)
MR_AVX2, NR_AVX2 = LINEAR["tiles"]["avx2"]
FORWARD_ROWS = LINEAR["forward_rows"]     # own GEMM: rows per forward work item
CHUNK = LINEAR["chunk"]                   # own GEMM: rows per dweight pass
SEGMENT = LINEAR["segment_min_rows"]      # dweight: N // SEGMENT row segments (partial sums)...
SEGMENTS_MAX = LINEAR["segments_max"]     # ...at most this many
BLAS_ROWS = LINEAR["blas_forward_rows"]   # float64 (BLAS): rows per forward work item
ROWS_PER_CHUNK = _layernorm._BLOCKS["rows_per_chunk"]  # layernorm backward: rows per work item
LANES = _layernorm._BLOCKS["lanes"]       # row reductions (layernorm, softmax): partial sums
assert _cross_entropy._BLOCKS["lanes"] == LANES
SPAN = _gelu._BLOCKS["span"]              # gelu: elements per work item
assert _relu2._BLOCKS["span"] == SPAN     # relu2: the same
assert _adamw._BLOCKS["span"] == SPAN     # adamw: the same
ATTENTION = _attention._BLOCKS           # attention, per ISA: query and key rows per block,
ATT_ISA = _attention._kernel_isa()        # and vector bytes (score rows are padded to whole
MR_ATT = ATTENTION["rows"][ATT_ISA]       # vectors: PAD float32 columns, half as many float64)
PAD = ATTENTION["vector_bytes"][ATT_ISA] // 4


def assert_close(name, actual, expected, dtype, terms, c, scale=None):
    """|actual - expected| <= tol * (|expected| + s), tol = c * eps * sqrt(terms).

    Kernel and reference differ only in the order of their sums (and, for GELU, in how tanh is
    computed). Two orders of a sum of ``terms`` values of size s round differently by about
    eps * sqrt(terms) * s (a random walk), so each output gets the ``terms`` one of its entries
    sums, and s is the largest entry of the expected output unless ``scale`` gives the size of
    the terms: an entry that cancels to near zero still carries its terms' rounding. ``c`` is
    chosen per output where it is checked: a few times the largest ratio seen over thousands of
    random shapes in both dtypes.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.ndim:  # an array of the inputs' dtype (a loss is a Python float)
        assert actual.dtype == dtype and actual.shape == expected.shape, name
    tol = c * np.finfo(dtype).eps * np.sqrt(terms)
    s = np.abs(expected).max() if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * s,
                               err_msg=f"{name} (tolerance {tol:.2g} of {s:.3g})")


def on_kernels(n_threads, op, *args, **kwargs):
    """tinygpt.ops.<op> on its compiled kernel and n_threads threads (ops checks the input and
    allocates the outputs; the kernel computes)."""
    previous = ops.get_num_threads()
    ops.set_num_threads(n_threads)
    try:
        with ops.using_backend("cython"):
            return getattr(ops, op)(*args, **kwargs)
    finally:
        ops.set_num_threads(previous)


def _paths(module, names):
    """The SIMD paths of a kernel module (its _use_isa) that this CPU can run, of names."""
    paths = []
    for name in names:
        try:
            module._use_isa(name)
            paths.append(name)
        except ValueError:
            pass
    module._use_isa(None)
    return paths


def normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# ---------------------------------------------------------------------------------- parity

def test_property_tests_are_reproducible():
    """The profile conftest.py loads: the same examples on every run, no example database."""
    for active in (settings.default, SETTINGS):
        assert active.derandomize and active.database is None and active.deadline is None
    assert SETTINGS.max_examples == 25



@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, n=st.integers(1, 80), c=st.integers(1, 1000), eps=st.sampled_from([1e-5, 1e-3]))
# rows on each side of one and two backward chunks; rows shorter and longer than the lanes
@example(seed=1, n=ROWS_PER_CHUNK - 1, c=LANES - 1, eps=1e-5)
@example(seed=2, n=ROWS_PER_CHUNK, c=LANES, eps=1e-5)
@example(seed=3, n=ROWS_PER_CHUNK + 1, c=LANES + 1, eps=1e-5)
@example(seed=4, n=2 * ROWS_PER_CHUNK, c=2 * LANES + 1, eps=1e-3)
@example(seed=5, n=2 * ROWS_PER_CHUNK + 1, c=99, eps=1e-5)
@example(seed=6, n=1, c=1, eps=1e-5)
def test_layernorm_parity(dtype, n_threads, seed, n, c, eps):
    rng = np.random.default_rng(seed)
    n = max(1, n // max(1, c // 100))  # long rows come with fewer of them
    x = normal(rng, (n, c), dtype, 2.0) + dtype(0.5)
    w, b, dout = normal(rng, c, dtype), normal(rng, c, dtype), normal(rng, (n, c), dtype)
    out, mean, rstd = on_kernels(n_threads, "layernorm_forward", x, w, b, eps)
    e_out, e_mean, e_rstd = ref.layernorm_forward(x, w, b, eps)
    # mean and variance each sum the c entries of a row, in LANES partial sums (seen: 0.9, 0.6,
    # 0.4 for out, mean, rstd)
    assert_close("out", out, e_out, dtype, terms=c, c=4)
    assert_close("mean", mean, e_mean, dtype, terms=c, c=4)
    assert_close("rstd", rstd, e_rstd, dtype, terms=c, c=4)
    dx, dweight, dbias = on_kernels(n_threads, "layernorm_backward", dout, x, w, e_mean, e_rstd)
    e_dx, e_dweight, e_dbias = ref.layernorm_backward(dout, x, w, e_mean, e_rstd)
    # dx: two row means over c entries (seen: 0.5)
    assert_close("dx", dx, e_dx, dtype, terms=c, c=4)
    # dweight, dbias: sums over the n rows, in 64-row partials added in order (seen: 0.8, 1.8)
    assert_close("dweight", dweight, e_dweight, dtype, terms=n, c=8)
    assert_close("dbias", dbias, e_dbias, dtype, terms=n, c=8)
    # with a residual gradient, accumulated in place: exactly residual + dx, the same dweight
    residual = normal(rng, (n, c), dtype)
    dx_sum = residual.copy()
    _, dweight_res, dbias_res = on_kernels(n_threads, "layernorm_backward", dout, x, w, e_mean,
                                           e_rstd, dx_sum, out=(dx_sum, np.empty_like(dweight),
                                                                np.empty_like(dbias)))
    np.testing.assert_array_equal(dx_sum, residual + dx)
    np.testing.assert_array_equal(dweight_res, dweight)
    np.testing.assert_array_equal(dbias_res, dbias)


def elementwise_cases(test):
    """An elementwise kernel's parity cases: dtypes, threads, random shapes, and one span, one
    element short of it and past it, several spans with a short last one."""
    for seed, case in enumerate(([SPAN - 1], [SPAN], [SPAN + 1], [3, SPAN + 5], [1]), start=1):
        test = example(seed=seed, shape=case)(test)
    test = given(seed=seeds, shape=st.lists(st.integers(1, 40), min_size=1, max_size=3))(test)
    test = SETTINGS(test)
    for name, values in (("n_threads", THREADS), ("dtype", DTYPES)):
        test = pytest.mark.parametrize(name, values)(test)
    return test


@elementwise_cases
def test_gelu_parity(dtype, n_threads, seed, shape):
    rng = np.random.default_rng(seed)
    # |x| <= 4 and |dout| <= 1: NumPy's own float32 error in gelu' reaches 6e-7 for 2 < |x| < 4
    # and 1.2e-6 beyond, so a wider range would test NumPy rather than the kernel
    # (test_gelu_float32_accuracy checks the wide range against float64 instead)
    x = np.clip(normal(rng, shape, dtype, 1.5), -4, 4)
    dout = rng.uniform(-1, 1, shape).astype(dtype)
    # elementwise, no sums: out differs only in tanh (the kernel's exp-based one against
    # NumPy's, whose SIMD version depends on the CPU) (seen: 1.1). The reference's 1 + tanh(u)
    # rounds to eps of 1, so out = 0.5 x (1 + t) carries eps * |x| even where it is tiny (x
    # near -4 with no larger entry beside it): the scale is max |x|
    assert_close("out", on_kernels(n_threads, "gelu_forward", x), ref.gelu_forward(x), dtype,
                 terms=1, c=8, scale=np.abs(x).max())
    # gelu' multiplies several rounded factors, and NumPy's float32 1 - t*t loses bits as
    # |x| nears 4 (seen: 11.9 in float32, 4.6 in float64; test_gelu_float32_accuracy holds the
    # kernel itself to 3e-7 against float64)
    assert_close("dx", on_kernels(n_threads, "gelu_backward", dout, x), ref.gelu_backward(dout, x),
                 dtype, terms=1, c=32)


@elementwise_cases
def test_relu2_parity_is_bitwise(dtype, n_threads, seed, shape):
    """max(x, 0)^2 and 2 max(x, 0) dout: products of the same values in the same order, so
    the kernel's bits are the reference's (a zero's sign aside); NaN goes through both, and
    -inf gives 0."""
    rng = np.random.default_rng(seed)
    x, dout = normal(rng, shape, dtype), normal(rng, shape, dtype)
    x.reshape(-1)[::7] = 0.0
    x.reshape(-1)[3::11] = np.nan
    x.reshape(-1)[5::13] = -np.inf
    np.testing.assert_array_equal(on_kernels(n_threads, "relu2_forward", x), ref.relu2_forward(x))
    np.testing.assert_array_equal(on_kernels(n_threads, "relu2_backward", dout, x),
                                  ref.relu2_backward(dout, x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, n=st.integers(1, 3 * SPAN), t=st.integers(1, 5000),
       lr=st.floats(1e-5, 1.0), wd=st.sampled_from([0.0, 0.1]))
@example(seed=1, n=1, t=1, lr=1e-3, wd=0.1)
@example(seed=2, n=SPAN - 1, t=2, lr=1e-3, wd=0.0)    # on each side of a span
@example(seed=3, n=SPAN + 1, t=3, lr=0.5, wd=0.1)
@example(seed=4, n=2 * SPAN, t=5000, lr=1e-2, wd=0.1)
def test_adamw_update_parity_is_bitwise(dtype, n_threads, seed, n, t, lr, wd):
    """Each element updated alone, every operation rounded once in the reference's order (no
    fused multiply-adds): the kernel's bits are the reference's. Gradients span ten orders of
    magnitude, some zero; the decay is applied only where the mask says."""
    rng = np.random.default_rng(seed)
    params, m = normal(rng, n, dtype), normal(rng, n, dtype, 1e-3)
    v = np.abs(normal(rng, n, dtype, 1e-6))
    grads = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 2, n)).astype(dtype)
    grads[::9] = 0.0
    decay = (wd * (rng.random(n) < 0.7)).astype(dtype)
    expected = ref.adamw_update(params, grads, m, v, decay, 0.9, 1 - 0.9, 0.95, 1 - 0.95, lr,
                                1e-8 * np.sqrt(1 - 0.95 ** t), lr * np.sqrt(1 - 0.95 ** t) / (1 - 0.9 ** t))
    got = params.copy(), m.copy(), v.copy()
    assert on_kernels(n_threads, "adamw_update", *got[:1], grads, *got[1:], decay, lr, 0.9, 0.95,
                      1e-8, t) is got[0]
    for name, a, b in zip(("params", "m", "v"), got, expected):
        np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"), name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, n=st.integers(1, 300), c=st.integers(1, 70), v=st.integers(1, 40))
@example(seed=1, n=1, c=1, v=1)       # one column: a single block, whatever the threads
@example(seed=2, n=5, c=3, v=40)      # most ids never seen; 3 columns split 2 + 1
@example(seed=3, n=300, c=70, v=2)    # long runs of each id
def test_embedding_backward_parity_is_bitwise(dtype, n_threads, seed, n, c, v):
    """Each row added into its id's row in row order, from zero: np.add.at's sums, so the
    kernel's bits are the reference's; ids never seen get a zero row, and -0.0 rows sum to
    +0.0 as they do there."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, v, n)
    dout = normal(rng, (n, c), dtype)
    dout[::5, 0] = -0.0
    got = on_kernels(n_threads, "embedding_backward", dout, ids, v)
    expected = ref.embedding_backward(dout, ids, v)
    assert got.dtype == dtype and got.shape == (v, c)
    np.testing.assert_array_equal(got.view(f"u{dout.itemsize}"), expected.view(f"u{dout.itemsize}"))
    assert not got[np.setdiff1d(np.arange(v), ids)].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, b=st.integers(1, 3), t=st.integers(1, 40), h=st.integers(1, 3),
       half=st.integers(1, 9))
@example(seed=1, b=1, t=1, h=1, half=1)
@example(seed=2, b=3, t=17, h=2, half=16)
def test_rotary_parity_in_place(dtype, n_threads, seed, b, t, h, half):
    """q and k rotated in place, v untouched; the backward undoes the forward. Each output is
    one product difference x1 cos - x2 sin (the compiler may fuse it into an FMA: a rounding
    of eps, seen below 1)."""
    rng = np.random.default_rng(seed)
    C = h * 2 * half
    qkv = normal(rng, (b, t, 3 * C), dtype)
    angles = rng.uniform(-np.pi, np.pi, (t, half))
    cos, sin = np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)
    expected = ref.rotary_forward(qkv, h, cos, sin)
    rotated = qkv.copy()
    assert on_kernels(n_threads, "rotary_forward", rotated, h, cos, sin) is rotated
    assert_close("qkv", rotated, expected, dtype, terms=2, c=4)
    np.testing.assert_array_equal(rotated[..., 2 * C:], qkv[..., 2 * C:])
    back = rotated.copy()
    on_kernels(n_threads, "rotary_backward", back, h, cos, sin)
    assert_close("dqkv", back, ref.rotary_backward(rotated, h, cos, sin), dtype, terms=2, c=4)
    assert_close("round trip", back, qkv, dtype, terms=4, c=4)


def test_gelu_float32_accuracy():
    """float32 GELU against the float64 reference over a wide range, and at inf/nan."""
    x = np.linspace(-12, 12, 100_001, dtype=np.float32)
    x64 = x.astype(np.float64)
    ones = np.ones_like(x)
    # against the exact (float64) values the kernel's own error shows: about 8 ulps of each
    # output (rtol), and 2-3 float32 ulps of 1 where the output is tiny (atol)
    np.testing.assert_allclose(on_kernels(2, "gelu_forward", x), ref.gelu_forward(x64),
                               rtol=1e-6, atol=2e-7)
    np.testing.assert_allclose(on_kernels(2, "gelu_backward", ones, x), ref.gelu_backward(ones, x64),
                               rtol=1e-6, atol=3e-7)
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30], np.float32)
    with np.errstate(all="ignore"):
        for dtype in DTYPES:
            s = special.astype(dtype)
            np.testing.assert_array_equal(on_kernels(1, "gelu_forward", s), ref.gelu_forward(s))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, b=st.integers(1, 3), h=st.integers(1, 3), t=st.integers(1, 140),
       d=st.integers(1, 40))
# t on each side of the MR_ATT-row blocks (k MR_ATT - 1, k MR_ATT, k MR_ATT + 1) and of the
# PAD-column padding (4 PAD - 1, 4 PAD, 4 PAD + 1); d on each side of a vector and two
@example(seed=1, b=1, h=1, t=1, d=1)
@example(seed=2, b=1, h=2, t=MR_ATT - 1, d=7)
@example(seed=3, b=2, h=1, t=MR_ATT, d=8)
@example(seed=4, b=1, h=3, t=MR_ATT + 1, d=9)
@example(seed=5, b=1, h=1, t=2 * MR_ATT - 1, d=15)
@example(seed=6, b=1, h=2, t=2 * MR_ATT + 1, d=16)
@example(seed=7, b=2, h=1, t=PAD - 1, d=17)
@example(seed=8, b=1, h=1, t=PAD + 1, d=32)
@example(seed=9, b=1, h=2, t=4 * PAD - 1, d=16)
@example(seed=10, b=2, h=1, t=4 * PAD, d=17)
@example(seed=11, b=1, h=3, t=4 * PAD + 1, d=8)
@example(seed=12, b=1, h=1, t=11 * MR_ATT + 1, d=2 * PAD + 1)
@example(seed=13, b=1, h=1, t=PAD, d=2 * PAD)
def test_attention_parity(dtype, n_threads, seed, b, h, t, d):
    rng = np.random.default_rng(seed)
    qkv, dout = normal(rng, (b, t, 3 * h * d), dtype), normal(rng, (b, t, h * d), dtype)
    out, lse = on_kernels(n_threads, "attention_forward", qkv, h)
    e_out, e_lse = ref.attention_forward(qkv, h)
    # a score sums d products, a row's softmax t scores, an output row t probabilities times
    # v: t + d terms, in the kernel's order (with FMA where the CPU has it) (seen: 0.5 on every
    # path, both dtypes)
    assert_close("out", out, e_out, dtype, terms=t + d, c=4)
    # lse = max + log(sum of t exps of d-term scores); small |lse| next to a large one makes
    # the relative error of the largest entry bigger (seen: 3.5 with the earlier kernel, 0.2 now)
    assert_close("lse", lse, e_lse, dtype, terms=t + d, c=16)
    dqkv = on_kernels(n_threads, "attention_backward", dout, qkv, e_out, e_lse, h)
    # dq, dk, dv sum over up to t keys or queries, dP over d (seen: 0.8)
    assert_close("dqkv", dqkv, ref.attention_backward(dout, qkv, e_out, e_lse, h), dtype,
                 terms=t + d, c=8)


# (B, H, T, D) on each side of every path's blocks: its rows (12 or 6), its vectors (16, 8 or 4
# float32 columns) and tiles of two; the model's head (T 128, D 32)
ATTENTION_BOUNDARIES = [(1, 1, 1, 1), (2, 1, 5, 3), (1, 2, 6, 4), (1, 1, 7, 5), (1, 3, 11, 8),
                        (2, 1, 12, 9), (1, 1, 13, 15), (1, 2, 17, 16), (1, 1, 31, 17),
                        (1, 1, 33, 31), (2, 2, 65, 33), (1, 4, 128, 32)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,h,t,d", ATTENTION_BOUNDARIES)
def test_every_attention_path_at_its_block_boundaries(dtype, b, h, t, d):
    rng = np.random.default_rng(b * 1000 + h * 100 + t * 10 + d)
    qkv, dout = normal(rng, (b, t, 3 * h * d), dtype), normal(rng, (b, t, h * d), dtype)
    e_out, e_lse = ref.attention_forward(qkv, h)
    e_dqkv = ref.attention_backward(dout, qkv, e_out, e_lse, h)
    try:
        for path in _paths(_attention, ("avx512", "avx2", "plain")):
            _attention._use_isa(path)
            out, lse = on_kernels(2, "attention_forward", qkv, h)
            dqkv = on_kernels(2, "attention_backward", dout, qkv, e_out, e_lse, h)
            # the same tolerances as test_attention_parity, for the same reasons
            assert_close(f"{path} out", out, e_out, dtype, terms=t + d, c=4)
            assert_close(f"{path} lse", lse, e_lse, dtype, terms=t + d, c=16)
            assert_close(f"{path} dqkv", dqkv, e_dqkv, dtype, terms=t + d, c=8)
    finally:
        _attention._use_isa(None)


def test_attention_is_causal():
    """Changing key/value t never changes the output rows before t."""
    rng = np.random.default_rng(0)
    qkv = normal(rng, (1, 150, 3 * 16), np.float32)  # 2 heads of 8, micro-blocks and column blocks cut mid-way
    out, _ = on_kernels(2, "attention_forward", qkv, 2)
    for t in (30, 64, 100):
        changed = qkv.copy()
        changed[:, t:, 16:] += 1  # keys and values from position t on
        out2, _ = on_kernels(2, "attention_forward", changed, 2)
        np.testing.assert_array_equal(out[:, :t], out2[:, :t])
        assert not np.array_equal(out[:, t:], out2[:, t:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, n=st.integers(1, 60), v=st.integers(1, 300), ignore=st.floats(0, 0.5))
# rows on each side of the 8 interleaved partial sums of the row max and the exp sum
@example(seed=1, n=1, v=1, ignore=0.0)
@example(seed=2, n=3, v=LANES - 1, ignore=0.0)
@example(seed=3, n=5, v=LANES, ignore=0.3)
@example(seed=4, n=7, v=LANES + 1, ignore=0.0)
@example(seed=5, n=60, v=2 * LANES + 1, ignore=0.5)
@example(seed=6, n=9, v=65, ignore=0.0)
def test_cross_entropy_parity(dtype, n_threads, seed, n, v, ignore):
    rng = np.random.default_rng(seed)
    logits = normal(rng, (n, v), dtype, 3.0)
    targets = rng.integers(0, v, n)
    targets[rng.random(n) < ignore] = -1
    targets[rng.integers(n)] = rng.integers(v)  # at least one row counts
    loss, dlogits = on_kernels(n_threads, "softmax_cross_entropy", logits, targets)
    ref_loss, ref_dlogits = ref.softmax_cross_entropy(logits, targets)
    assert isinstance(loss, float)
    # the mean over n rows of a log-sum-exp over v (seen: 0.3)
    assert_close("loss", loss, ref_loss, dtype, terms=n + v, c=4)
    # softmax: each entry divides by the sum of v exps (seen: 0.8)
    assert_close("dlogits", dlogits, ref_dlogits, dtype, terms=v, c=4)
    assert np.all(dlogits[targets == -1] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_logits(dtype):
    """Huge spreads and -inf logits: exp underflows to exactly 0 and nothing turns to nan."""
    logits = np.array([[0.0, -1e4, 50.0, -np.inf], [-200.0, -100.0, -150.0, 3.0]], dtype)
    targets = np.array([2, 1])
    loss, dlogits = on_kernels(1, "softmax_cross_entropy", logits, targets)
    ref_loss, ref_dlogits = ref.softmax_cross_entropy(logits, targets)
    # as in the parity test: 2 rows of 4 logits
    assert_close("loss", loss, ref_loss, dtype, terms=6, c=4)
    assert_close("dlogits", dlogits, ref_dlogits, dtype, terms=4, c=4)
    assert dlogits[0, 3] == 0 and np.isfinite(dlogits).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@SETTINGS
@given(seed=seeds, n=st.integers(1, 700), k=st.integers(1, 40), m=st.integers(1, 40),
       with_bias=st.booleans(), with_residual=st.booleans())
# rows on each side of a forward work item (own GEMM and BLAS), a dweight chunk, one and two
# segments; k and m on each side of the micro-tiles' rows and columns
@example(seed=1, n=FORWARD_ROWS - 1, k=MR_AVX2 - 1, m=5, with_bias=True, with_residual=True)
@example(seed=2, n=FORWARD_ROWS + 1, k=MR_AVX2, m=3, with_bias=True, with_residual=False)
@example(seed=3, n=CHUNK - 1, k=MR + 1, m=NR + 1, with_bias=False, with_residual=True)
@example(seed=4, n=CHUNK + 1, k=MR, m=NR_AVX2 - 1, with_bias=True, with_residual=True)
@example(seed=5, n=2 * SEGMENT - 1, k=3, m=1, with_bias=False, with_residual=False)
@example(seed=6, n=2 * SEGMENT + 1, k=12, m=NR - 1, with_bias=True, with_residual=True)
@example(seed=7, n=BLAS_ROWS - 1, k=4, m=NR, with_bias=True, with_residual=False)
@example(seed=8, n=BLAS_ROWS + 3, k=MR - 1, m=NR_AVX2 + 1, with_bias=True, with_residual=True)
@example(seed=9, n=1, k=1, m=2 * NR + 1, with_bias=False, with_residual=True)
@example(seed=10, n=1, k=1, m=1, with_bias=True, with_residual=True)
@example(seed=11, n=SEGMENTS_MAX * SEGMENT + 1, k=MR_AVX2 + 1, m=NR_AVX2, with_bias=True,
         with_residual=False)
def test_linear_parity(dtype, n_threads, seed, n, k, m, with_bias, with_residual):
    rng = np.random.default_rng(seed)
    x, w, dout = normal(rng, (n, k), dtype), normal(rng, (k, m), dtype), normal(rng, (n, m), dtype)
    bias = normal(rng, m, dtype) if with_bias else None
    residual = normal(rng, (n, m), dtype) if with_residual else None
    out = on_kernels(n_threads, "linear_forward", x, w, bias, residual)
    # out: k products per entry (then + bias + residual), BLAS's order against NumPy's (seen: 0.9)
    assert_close("out", out, ref.linear_forward(x, w, bias, residual), dtype, terms=k + 2, c=4)
    dx, dweight, dbias = on_kernels(n_threads, "linear_backward", dout, x, w)
    e_dx, e_dweight, e_dbias = ref.linear_backward(dout, x, w)
    # dx = dout @ w^T: m products per entry, whatever the row blocks (seen: 1.0)
    assert_close("dx", dx, e_dx, dtype, terms=m, c=4)
    # dweight = x^T @ dout: n products per entry, so its error grows with the rows (seen: 0.5)
    assert_close("dweight", dweight, e_dweight, dtype, terms=n, c=4)
    # dbias: n rows added one by one, against NumPy's pairwise sum (seen: 1.3)
    assert_close("dbias", dbias, e_dbias, dtype, terms=n, c=8)


# float32 linear layers run an own GEMM (AVX-512: MR x NR micro-tiles; AVX2: MR_AVX2 x NR_AVX2)
# where the CPU has one, else BLAS; dweight sums CHUNK-row chunks in N // SEGMENT segments (1 to
# SEGMENTS_MAX). (n, k, m) on each side of those: tiles, forward rows, chunks, segments, and the
# head's 65 columns.
LINEAR_F32_BOUNDARIES = [
    (MR_AVX2 - 1, MR - 1, NR_AVX2 - 1), (MR_AVX2, MR, NR_AVX2), (MR_AVX2 + 1, MR + 1, NR_AVX2 + 1),
    (MR - 1, MR_AVX2 - 1, NR - 1), (MR, 2 * MR, NR), (MR + 1, 2 * MR + 1, NR + 1),
    (FORWARD_ROWS - 1, 20, 40), (FORWARD_ROWS + 1, 31, 65),
    (CHUNK - 1, 40, 65), (CHUNK, MR, 2 * NR), (CHUNK + 1, 7, 3 * NR),
    (2 * SEGMENT - 1, 33, 97), (2 * SEGMENT + 1, 16, 4 * NR),
    (SEGMENTS_MAX * SEGMENT + 1, 12, 65), ((SEGMENTS_MAX + 1) * SEGMENT + 1, 9, 40)]


@pytest.mark.parametrize("n,k,m", LINEAR_F32_BOUNDARIES)
def test_every_float32_linear_path_at_its_block_boundaries(n, k, m):
    rng = np.random.default_rng(n * 1000 + k * 10 + m)
    x, w = normal(rng, (n, k), np.float32), normal(rng, (k, m), np.float32)
    bias, residual, dout = normal(rng, m, np.float32), normal(rng, (n, m), np.float32), \
        normal(rng, (n, m), np.float32)
    expected = ref.linear_forward(x, w, bias, residual), *ref.linear_backward(dout, x, w)
    results = {}
    try:
        for path in _paths(_linear, ("avx512", "avx2", "blas")):
            _linear._use_isa(path)
            got = (on_kernels(2, "linear_forward", x, w, bias, residual),
                   *on_kernels(2, "linear_backward", dout, x, w))
            # the same per-output tolerances as test_linear_parity, for the same reasons
            for name, a, e, terms, c in zip(("out", "dx", "dweight", "dbias"), got, expected,
                                            (k + 2, m, n, n), (4, 4, 4, 8)):
                assert_close(f"{path} {name}", a, e, np.float32, terms=terms, c=c)
            results[path] = got
    finally:
        _linear._use_isa(None)
    if "avx512" in results and "avx2" in results:  # one order of products, two vector widths
        for a, b in zip(results["avx512"], results["avx2"]):
            np.testing.assert_array_equal(a, b)


# A linear layer with an activation: the MLP's fc forward (post = act(pre), and act's slope
# there) and fc2's backward (dx at the activation's input, times the slope). On the own float32
# GEMM the activation runs on each work item's rows inside the kernel; elsewhere (float64, BLAS,
# NumPy) as ops of its own. Either way the bits are those of the separate ops in turn (the
# slope: the activation's backward of ones). (n, k, m) on each side of the forward
# rows and the backward chunks, and a single row.
FUSED_SHAPES = [(1, 1, 1), (FORWARD_ROWS - 1, 7, NR + 1), (FORWARD_ROWS + 1, MR, 2 * NR),
                (CHUNK - 1, 33, 65), (CHUNK + 1, 16, NR_AVX2 - 1), (2 * SEGMENT + 3, 12, 40)]


@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n,k,m", FUSED_SHAPES)
def test_linear_with_an_activation_gives_the_bits_of_the_two_ops(activation, dtype, n_threads,
                                                                 n, k, m):
    rng = np.random.default_rng(n * 1000 + k * 10 + m)
    x, w, bias = normal(rng, (n, k), dtype), normal(rng, (k, m), dtype), normal(rng, m, dtype)
    w2, dout = normal(rng, (m, k), dtype), normal(rng, (n, k), dtype)
    forward, backward = f"{activation}_forward", f"{activation}_backward"
    paths = _paths(_linear, ("avx512", "avx2", "blas")) if dtype == np.float32 else [None]
    try:
        for path in paths:
            _linear._use_isa(path)
            slope, post = on_kernels(n_threads, "linear_forward", x, w, bias,
                                     activation=activation)
            pre = on_kernels(n_threads, "linear_forward", x, w, bias)
            np.testing.assert_array_equal(post, on_kernels(n_threads, forward, pre))
            ones = np.ones_like(pre)
            np.testing.assert_array_equal(slope, on_kernels(n_threads, backward, ones, pre))
            got = on_kernels(n_threads, "linear_backward", dout, post, w2, slope=slope)
            dpost, *expected = on_kernels(n_threads, "linear_backward", dout, post, w2)
            for a, e in zip(got, (on_kernels(n_threads, backward, dpost, pre), *expected)):
                np.testing.assert_array_equal(a, e)
    finally:
        _linear._use_isa(None)
    # and on the NumPy reference: the same formulas, to rounding
    ref_pre = ref.linear_forward(x, w, bias)
    assert_close("post", post, getattr(ref, forward)(ref_pre), dtype, terms=k + 2, c=8)


# --------------------------------------------------------------------------------- headers

CSRC = Path(__file__).resolve().parent.parent / "csrc"


@pytest.mark.parametrize("flags", [["-fopenmp"], [], ["-DTINYGPT_NO_DISPATCH"]],
                         ids=["openmp", "serial", "no-dispatch"])
@pytest.mark.parametrize("header", sorted(p.name for p in CSRC.glob("*.h")))
def test_header_compiles_alone_without_warnings(header, flags, tmp_path):
    """Our C compiles clean under -Wall -Wextra in each build setup.py makes (with OpenMP,
    without, without the SIMD dispatch). The build itself keeps warnings non-fatal, for the C
    that Cython generates; -fkeep-inline-functions compiles the header's unused functions too.
    -O0 keeps it quick (0.5 s for linear.h, 2 s at -O1); the warnings that need the optimizer's
    flow analysis show in the -O3 build."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    if not shutil.which(cc[0]):
        pytest.skip("no C compiler")
    command = [*cc, "-x", "c", "-c", "-O0", "-fkeep-inline-functions", "-Wall", "-Wextra",
               "-Werror", *flags, f"-I{CSRC}", str(CSRC / header), "-o", str(tmp_path / "h.o")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module", [_adamw, _cross_entropy, _embedding, _gelu, _layernorm,
                                    _linear, _relu2], ids=lambda m: m.__name__)
def test_dispatched_loops_have_an_avx512_clone(module):
    """kernel_math.h's TG_DISPATCH clones each loop it marks for AVX-512 (x86-64-v4) beside
    AVX2 (x86-64-v3): a build with the dispatch holds both clones, one without it (a compiler
    other than GCC >= 11, or -DTINYGPT_NO_DISPATCH) neither."""
    binary = Path(module.__file__).read_bytes()
    assert (b"arch_x86_64_v3" in binary) == (b"arch_x86_64_v4" in binary)


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
    skewed_ids = np.minimum(rng.geometric(0.6, 300) - 1, 1)  # 2 ids for up to 3 threads
    return {
        "linear_forward": lambda n: (on_kernels(n, "linear_forward", x_rows, lw, lb, dy_rows),),
        "linear_backward": lambda n: on_kernels(n, "linear_backward", dy_rows, x_rows, lw),
        "layernorm_forward": lambda n: on_kernels(n, "layernorm_forward", x, w, b),
        "layernorm_backward": lambda n: on_kernels(n, "layernorm_backward", dy, x, w, mean, rstd),
        "gelu_forward": lambda n: (on_kernels(n, "gelu_forward", g),),
        "gelu_backward": lambda n: (on_kernels(n, "gelu_backward", g, g),),
        "attention_forward": lambda n: on_kernels(n, "attention_forward", qkv, 3),
        "attention_backward": lambda n: (on_kernels(n, "attention_backward", do, qkv, out, lse, 3),),
        "softmax_cross_entropy": lambda n: on_kernels(n, "softmax_cross_entropy", logits,
                                                           targets),
        "embedding_backward": lambda n: (on_kernels(n, "embedding_backward", x, skewed_ids, 2),),
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


def _at_offset(a, offset):
    """A copy of a whose data starts offset bytes past a 64-byte boundary."""
    buffer = ops.empty(a.nbytes + offset, np.uint8)
    copy = buffer[offset:].view(a.dtype).reshape(a.shape)
    copy[...] = a
    return copy


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_whatever_the_alignment(dtype):
    """ops.empty puts the model's arrays on 64-byte boundaries for speed; the results must not
    depend on it: inputs and outputs 0, 4, 16 and 48 bytes past one give the same bits."""
    rng = np.random.default_rng(11)
    x, w, b = normal(rng, (300, 96), dtype), normal(rng, (96, 40), dtype), normal(rng, 40, dtype)
    dy = normal(rng, (300, 40), dtype)
    qkv, do = normal(rng, (3, 70, 3 * 64), dtype), normal(rng, (3, 70, 64), dtype)
    out, lse = ref.attention_forward(qkv, 2)
    calls = {
        "linear_forward": (x, w, b, dy),
        "linear_backward": (dy, x, w),
        "attention_forward": (qkv, 2),
        "attention_backward": (do, qkv, out, lse, 2),
        "gelu_forward": (x,),
        "layernorm_forward": (x, np.ones(96, dtype), np.zeros(96, dtype)),
    }
    for name, args in calls.items():
        first = on_kernels(2, name, *args)
        first = first if isinstance(first, tuple) else (first,)
        for offset in (0, 4, 16, 48):
            moved = [_at_offset(a, offset) if isinstance(a, np.ndarray) else a for a in args]
            outs = tuple(_at_offset(np.zeros_like(f), offset) for f in first)
            on_kernels(2, name, *moved, out=outs if len(outs) > 1 else outs[0])
            for f, o in zip(first, outs):
                assert np.array_equal(f, o), f"{name}: {offset} bytes past a boundary differs"


def test_new_outputs_start_on_64_byte_boundaries():
    x = normal(np.random.default_rng(0), (300, 96), np.float32)
    for out in (ops.empty((5, 3), np.float64), on_kernels(2, "gelu_forward", x),
                *on_kernels(2, "layernorm_forward", x, x[0], x[1])):
        assert out.ctypes.data % 64 == 0


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
LN_F, LN_B = ops.layernorm_forward, ops.layernorm_backward
ATT_F, ATT_B = ops.attention_forward, ops.attention_backward
XENT = ops.softmax_cross_entropy
LIN_F, LIN_B = ops.linear_forward, ops.linear_backward
qkv, att, lse, x = A["qkv"], A["att"], A["lse"], A["x"]
LW = normal(np.random.default_rng(4), (10, 4), np.float32)

# Bad input through tinygpt.ops, which checks it once for both backends: the error names it.
BAD_CALLS = [
    # wrong dtypes
    (TypeError, "x", lambda: LN_F(x.astype(np.int64), A["w"], A["b"])),
    (TypeError, "x", lambda: LN_F(x.astype(np.float16), A["w"], A["b"])),
    (TypeError, "weight", lambda: LN_F(x, A64["w"], A["b"])),
    (TypeError, "rstd", lambda: LN_B(x, x, A["w"], A["mean"], A64["rstd"])),
    (TypeError, "x", lambda: ops.gelu_forward(np.arange(5))),
    (TypeError, "dout", lambda: ops.gelu_backward(x.astype(np.float64), x)),
    (TypeError, "qkv", lambda: ATT_F(qkv.astype(np.int32), 2)),
    (TypeError, "lse", lambda: ATT_B(att, qkv, att, lse.astype(np.float64), 2)),
    (TypeError, "logits", lambda: XENT(A["logits"].astype(np.complex64), A["targets"])),
    (TypeError, "targets", lambda: XENT(A["logits"], A["targets"].astype(np.float32))),
    (TypeError, "targets", lambda: XENT(A["logits"], A["targets"] > 0)),
    (TypeError, "x", lambda: LN_F(np.array(["a", "b"]), A["w"], A["b"])),
    (TypeError, "weight", lambda: LIN_F(x, LW.astype(np.float64))),
    (TypeError, "residual", lambda: LIN_F(x, LW, None, np.zeros((6, 4), np.float64))),
    # wrong ranks and shapes
    (ValueError, "x", lambda: LN_F(x[0], A["w"], A["b"])),
    (ValueError, "weight", lambda: LN_F(x, A["w"][:-1], A["b"])),
    (ValueError, "bias", lambda: LN_F(x, A["w"], A["b"][None])),
    (ValueError, "dout", lambda: LN_B(x[:-1], x, A["w"], A["mean"], A["rstd"])),
    (ValueError, "mean", lambda: LN_B(x, x, A["w"], A["mean"][:-1], A["rstd"])),
    (ValueError, "C >= 1", lambda: LN_F(x[:, :0], A["w"][:0], A["b"][:0])),
    (ValueError, "dout", lambda: ops.gelu_backward(x[:, :3], x)),
    (ValueError, "qkv", lambda: ATT_F(qkv[0], 2)),
    (ValueError, "3C", lambda: ATT_F(qkv[..., :-1], 2)),
    (ValueError, "3C", lambda: ATT_F(qkv[..., :0], 2)),
    (ValueError, "divisible", lambda: ATT_F(qkv, 4)),
    (ValueError, "n_heads", lambda: ATT_F(qkv, 0)),
    (ValueError, "n_heads", lambda: ATT_F(qkv, 2.0)),
    (ValueError, "dout", lambda: ATT_B(att[:, :4], qkv, att, lse, 2)),
    (ValueError, "att", lambda: ATT_B(att, qkv, att[:1], lse, 2)),
    (ValueError, "lse", lambda: ATT_B(att, qkv, att, lse[..., :4], 2)),
    (ValueError, "logits", lambda: XENT(A["logits"][0], A["targets"])),
    (ValueError, "targets", lambda: XENT(A["logits"], A["targets"][:-1])),
    (ValueError, "weight", lambda: LIN_F(x, LW[:-1])),
    (ValueError, "bias", lambda: LIN_F(x, LW, np.zeros(5, np.float32))),
    (ValueError, "residual", lambda: LIN_F(x, LW, None, np.zeros((5, 4), np.float32))),
    (ValueError, "dout", lambda: LIN_B(np.zeros((6, 5), np.float32), x, LW)),
    (ValueError, "must not be empty", lambda: LIN_F(x[:0], LW)),
    (ValueError, "activation must be one of", lambda: LIN_F(x, LW, activation="tanh")),
    (ValueError, "not both", lambda: LIN_F(x, LW, None, x @ LW, activation="gelu")),
    (ValueError, "slope must have shape", lambda: LIN_B(x @ LW, x, LW, slope=x[1:])),
    (TypeError, "slope", lambda: LIN_B(x @ LW, x, LW, slope=x.astype(np.float64))),
    (ValueError, "2 arrays", lambda: LIN_F(x, LW, activation="relu2", out=(x @ LW,))),
    (ValueError, "overlaps", lambda: LIN_F(x, LW, activation="gelu", out=(x @ LW,) * 2)),
    # out-of-range targets: the message gives the value and the index
    (ValueError, r"targets\[2\] = 7 is outside", lambda: XENT(A["logits"], A["targets"] + (np.arange(6) == 2))),
    (ValueError, r"targets\[3\] = -2 is outside", lambda: XENT(A["logits"], A["targets"] - (np.arange(6) == 3))),
    (ValueError, "ignored", lambda: XENT(A["logits"], np.full(6, -1))),
    # out arrays the kernel would write past, in the wrong type, or could not write at all
    (ValueError, "out must have shape", lambda: ops.gelu_forward(x, out=x[:-1].copy())),
    (TypeError, "dtype", lambda: ops.gelu_forward(x, out=x.astype(np.float64))),
    (ValueError, "C-contiguous", lambda: ops.gelu_forward(x, out=np.empty(x.shape[::-1], x.dtype).T)),
    (ValueError, "writeable", lambda: ops.gelu_forward(x, out=np.broadcast_to(x[:1], x.shape))),
    (TypeError, "numpy array", lambda: ops.gelu_forward(x, out=x.tolist())),
    (ValueError, "3 arrays", lambda: LN_F(x, A["w"], A["b"], out=(x.copy(),))),
    (ValueError, "lse must have shape", lambda: ATT_F(qkv, 2, out=(att.copy(), lse[..., :-1].copy()))),
    (ValueError, "out must have shape", lambda: ATT_B(att, qkv, att, lse, 2, out=att.copy())),
    (ValueError, "dweight must have shape", lambda: LIN_B(x @ LW, x, LW, out=(x.copy(), LW.T.copy(), LW[0].copy()))),
    (ValueError, "out must have shape", lambda: XENT(A["logits"], A["targets"], out=A["logits"][1:].copy())),
    # a target beyond int64 is out of range, not wrapped round to -1 (ignored)
    (ValueError, r"targets\[4\] = 18446744073709551615", lambda: XENT(A["logits"], np.where(np.arange(6) == 4, np.uint64(2**64 - 1),
                                                             A["targets"].clip(0).astype(np.uint64)))),
]


@pytest.mark.parametrize("error, match, call", BAD_CALLS)
def test_malformed_input_raises(backend, error, match, call):
    with pytest.raises(error, match=match):
        call()


def _direct_calls():
    """Direct calls of the kernel modules, bypassing ops, with arguments that disagree: each
    would read or write past an array if the kernel trusted it."""
    f32, f64 = np.float32, np.float64
    z = np.zeros

    def lin_bwd(dout, x_, w, dx, dw, db):
        return lambda: _linear.linear_backward(dout, x_, w, dx, dw, db, 1)

    return [
        lambda: _gelu.gelu_forward(z(5, f32), z(4, f32), 1),
        lambda: _gelu.gelu_forward(z(5, f32), z(5, f64), 1),           # dtypes differ
        lambda: _gelu.gelu_forward(z((5, 2), f32)[:, 0], z(5, f32), 1),  # strided
        lambda: _gelu.gelu_forward(None, z(5, f32), 1),
        lambda: _gelu.gelu_backward(z(5, f32), z(6, f32), z(6, f32), 1),
        lambda: _layernorm.layernorm_forward(z((4, 3), f32), z(2, f32), z(3, f32), 1e-5,
                                             z((4, 3), f32), z(4, f32), z(4, f32), 1),
        lambda: _layernorm.layernorm_forward(z((4, 3), f32), z(3, f32), z(3, f32), 1e-5,
                                             z((4, 3), f32), z(3, f32), z(4, f32), 1),
        lambda: _layernorm.layernorm_backward(z((5, 3), f32), z((4, 3), f32), z(3, f32),
                                              z(4, f32), z(4, f32), z((4, 3), f32), z(3, f32),
                                              z(3, f32), 1),
        lambda: _attention.attention_forward(z((1, 4, 12), f32), 3, z((1, 4, 4), f32),
                                             z((1, 3, 4), f32), 1),  # C = 4 not divisible by 3
        lambda: _attention.attention_forward(z((1, 4, 12), f32), 2, z((1, 5, 4), f32),
                                             z((1, 2, 4), f32), 1),
        lambda: _attention.attention_forward(z((1, 4, 12), f32), 2, z((1, 4, 4), f32),
                                             z((1, 2, 3), f32), 1),
        lambda: _attention.attention_backward(z((1, 4, 4), f32), z((1, 4, 12), f32),
                                              z((1, 4, 4), f32), z((1, 2, 4), f32), 2,
                                              z((1, 4, 8), f32), 1),
        lambda: _cross_entropy.softmax_cross_entropy(z((3, 4), f32), np.array([0, 4, 1]),
                                                     z((3, 4), f32), 1),  # target 4 >= V
        lambda: _cross_entropy.softmax_cross_entropy(z((3, 4), f32), np.array([0, 1]),
                                                     z((3, 4), f32), 1),
        lambda: _linear.linear_forward(z((4, 3), f32), z((2, 5), f32), None, None,
                                       z((4, 5), f32), 1),
        lambda: _linear.linear_forward(z((4, 3), f64), z((3, 5), f64), z(4, f64), None,
                                       z((4, 5), f64), 1),
        lambda: _linear.linear_forward(z((4, 3), f32), z((3, 5), f32), None, z((3, 5), f32),
                                       z((4, 5), f32), 1),
        lambda: _linear.linear_forward(z((0, 3), f32), z((3, 5), f32), None, None,
                                       z((0, 5), f32), 1),
        lin_bwd(z((4, 5), f32), z((4, 3), f32), z((3, 5), f32), z((4, 3), f32), z((3, 4), f32),
                z(5, f32)),
        lin_bwd(z((4, 5), f64), z((4, 3), f64), z((3, 5), f64), z((4, 3), f64), z((3, 5), f64),
                z(4, f64)),
        lambda: _linear.linear_act_forward(z((4, 3), f32), z((3, 5), f32), None, "gelu",
                                           z((4, 5), f32), z((3, 5), f32), 1),  # post short
        lambda: _linear.linear_act_forward(z((4, 3), f32), z((3, 5), f32), None, "tanh",
                                           z((4, 5), f32), z((4, 5), f32), 1),
        lambda: _linear.linear_act_backward(z((4, 5), f32), z((4, 3), f32), z((3, 5), f32),
                                            z((2, 3), f32), z((4, 3), f32), z((3, 5), f32),
                                            z(5, f32), 1),  # slope short
        lambda: _adamw.adamw_update(z(5, f32), z(4, f32), z(5, f32), z(5, f32), z(5, f32),
                                    0.9, 0.1, 0.99, 0.01, 1e-3, 1e-8, 1e-3, 1),  # grads short
        lambda: _adamw.adamw_update(z(5, f32), z(5, f32), z(5, f32), z(5, f32), z(4, f32),
                                    0.9, 0.1, 0.99, 0.01, 1e-3, 1e-8, 1e-3, 1),  # decay short
        lambda: _embedding.embedding_backward(z((3, 4), f32), np.array([0, 5, 1]), 5,
                                              z((5, 4), f32), 1),  # id 5 >= V
        lambda: _embedding.embedding_backward(z((3, 4), f32), np.array([0, -1, 1]), 5,
                                              z((5, 4), f32), 1),
        lambda: _embedding.embedding_backward(z((3, 4), f32), np.array([0, 1]), 5,
                                              z((5, 4), f32), 1),
        lambda: _embedding.embedding_backward(z((3, 4), f32), np.array([0, 1, 2]), 5,
                                              z((4, 4), f32), 1),  # out shorter than V
    ]


@pytest.mark.parametrize("call", _direct_calls())
def test_direct_kernel_calls_with_inconsistent_arguments_raise(call):
    with pytest.raises((ValueError, TypeError)):
        call()


def test_non_contiguous_and_read_only_inputs_match_contiguous():
    """Strided, transposed, read-only and stride-0 inputs give the bits of their contiguous
    copies, and those are the reference's answer: the layout changes nothing."""
    rng = np.random.default_rng(5)
    big = normal(rng, (12, 20), np.float32)
    x_nc = big[::2, ::2]  # strided view, (6, 10)
    x_c = np.ascontiguousarray(x_nc)
    w = np.broadcast_to(np.float32(1.5), (10,))  # read-only, stride 0
    b = A["b"].copy()
    b.flags.writeable = False
    got = on_kernels(2, "layernorm_forward", x_nc, w, b)
    want = on_kernels(2, "layernorm_forward", x_c, np.ascontiguousarray(w), b)
    for name, g, c, e in zip(("out", "mean", "rstd"), got, want, ref.layernorm_forward(x_c, w, b)):
        assert np.array_equal(g, c), name
        assert_close(name, g, e, np.float32, terms=10, c=4)  # as in test_layernorm_parity
    gelu_t = on_kernels(2, "gelu_forward", big.T)
    assert np.array_equal(gelu_t, on_kernels(2, "gelu_forward", big.T.copy()))
    assert_close("gelu", gelu_t, ref.gelu_forward(big.T.copy()), np.float32, terms=1,
                 c=8)  # as in test_gelu_parity
    qt = normal(rng, (2, 12, 5), np.float32).swapaxes(1, 2)  # (2, 5, 12), not contiguous
    got, want = on_kernels(2, "attention_forward", qt, 2), on_kernels(2, "attention_forward",
                                                                      qt.copy(), 2)
    for name, g, c, e, tol in zip(("out", "lse"), got, want, ref.attention_forward(qt.copy(), 2),
                                  (4, 16)):
        assert np.array_equal(g, c), name
        assert_close(name, g, e, np.float32, terms=5 + 2, c=tol)  # as in test_attention_parity
    logits_nc = normal(rng, (7, 6), np.float32).T  # (6, 7)
    targets_nc = np.array([0, 9, 1, 9, 6, 9, 2, 9, -1, 9, 3, 9])[::2]
    got = on_kernels(2, "softmax_cross_entropy", logits_nc, targets_nc.astype(np.int32))
    want = on_kernels(2, "softmax_cross_entropy", logits_nc.copy(), targets_nc.copy())
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    e_loss, e_dlogits = ref.softmax_cross_entropy(logits_nc.copy(), targets_nc.copy())
    assert_close("loss", got[0], e_loss, np.float32, terms=6 + 7, c=4)
    assert_close("dlogits", got[1], e_dlogits, np.float32, terms=7, c=4)


def test_size_zero_inputs():
    empty = np.zeros((0, 10), np.float32)
    out, mean, rstd = on_kernels(2, "layernorm_forward", empty, A["w"], A["b"])
    assert out.shape == (0, 10) and mean.shape == (0,) and rstd.shape == (0,)
    dx, dw, db = on_kernels(2, "layernorm_backward", empty, empty, A["w"], mean, rstd)
    assert dx.shape == (0, 10) and np.array_equal(dw, np.zeros(10, np.float32))
    assert np.array_equal(db, dw)
    assert on_kernels(2, "gelu_forward", np.zeros((3, 0))).shape == (3, 0)
    for B, T in [(0, 5), (2, 0)]:
        qz = np.zeros((B, T, 12), np.float32)
        out, lse = on_kernels(2, "attention_forward", qz, 2)
        assert out.shape == (B, T, 4) and lse.shape == (B, 2, T)
        assert on_kernels(2, "attention_backward", out, qz, out, lse, 2).shape == (B, T, 12)
    with pytest.raises(ValueError):
        on_kernels(1, "softmax_cross_entropy", np.zeros((0, 7), np.float32), np.zeros(0, np.int64))


def test_outputs_are_new_arrays_of_the_input_dtype():
    x64 = A64["x"]
    out = on_kernels(1, "gelu_forward", x64)
    assert out.dtype == np.float64 and not np.shares_memory(out, x64)
    loss, dlogits = on_kernels(1, "softmax_cross_entropy", A64["logits"], A64["targets"])
    assert isinstance(loss, float) and dlogits.dtype == np.float64
