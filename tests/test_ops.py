"""The dispatch layer: backends, threads, input checks, and whole training steps across backends."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tinygpt
from tinygpt import TinyGPT, _layernorm, _linear, ops, train_model


@pytest.fixture
def threads():
    """Set kernel/BLAS threads inside a test, restoring them afterwards."""
    previous = ops.get_num_threads()
    yield ops.set_num_threads
    ops.set_num_threads(previous)


def test_every_op_has_a_compiled_kernel():
    assert tinygpt.available_kernels() == sorted(ops._KERNEL_MODULES)


def test_backend_and_thread_settings_are_checked():
    with pytest.raises(ValueError, match="backend"):
        tinygpt.set_backend("torch")
    for bad in (0, -1, 2.5, True, "2"):
        with pytest.raises(ValueError, match="threads"):
            tinygpt.set_num_threads(bad)


def run_python(code, env_changes=None):
    """Run ``code`` in a fresh interpreter with default warning filters."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONWARNINGS", "TINYGPT_BACKEND", "OMP_NUM_THREADS")}
    env.update(env_changes or {})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_environment_chooses_backend_and_threads():
    code = "import tinygpt; print(tinygpt.get_backend(), tinygpt.get_num_threads())"
    out = run_python(code, {"TINYGPT_BACKEND": "numpy", "OMP_NUM_THREADS": "3"})
    assert out.stdout.split() == ["numpy", "3"], out.stderr


def test_default_backend_is_auto_and_threads_follow_the_cpu_affinity():
    # one CPU of this process's set: os.cpu_count() would still say every CPU of the machine
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import tinygpt; "
            "print(tinygpt.get_backend(), tinygpt.get_num_threads())")
    out = run_python(code)
    assert out.stdout.split() == ["auto", "1"], out.stderr


def test_idle_kernel_threads_spin_briefly_unless_the_user_said_otherwise():
    """tinygpt sets GOMP_SPINCOUNT before its kernels load libgomp; a value already set stays."""
    code = "import os, tinygpt; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["10000"], out.stderr
    assert run_python(code, {"GOMP_SPINCOUNT": "500"}).stdout.split() == ["500"]


def test_op_backends_and_summary_follow_the_backend():
    with ops.using_backend("numpy"):
        assert set(ops.op_backends().values()) == {"numpy"}
        assert ops.backend_summary() == "numpy (reference)"
    for name in ("auto", "cython"):
        with ops.using_backend(name):
            assert ops.op_backends() == {op: "cython" for op in ops._KERNEL_MODULES}
            n = len(ops._KERNEL_MODULES)
            assert f"cython ({n} of {n} ops compiled)" in ops.backend_summary()


WITHOUT_GELU = "import sys; sys.modules['tinygpt._gelu'] = None  # its import now fails\n"


def test_a_missing_kernel_warns_once_and_its_ops_fall_back_to_numpy():
    code = WITHOUT_GELU + (
        "import json, tinygpt\n"
        "try:\n"
        "    tinygpt.set_backend('cython')\n"
        "except RuntimeError as error:\n"
        "    refused = str(error)\n"
        "print(json.dumps({'backend': tinygpt.get_backend(), 'ops': tinygpt.op_backends(),\n"
        "                  'summary': tinygpt.backend_summary(), 'refused': refused}))\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    # shown under Python's default filters, once, with the module, its ops and the error
    warned = [line for line in out.stderr.splitlines() if "Warning" in line]
    assert len(warned) == 1, out.stderr
    assert "RuntimeWarning" in warned[0] and "tinygpt._gelu" in warned[0]
    assert "gelu_forward, gelu_backward" in warned[0] and "None in sys.modules" in warned[0]
    result = json.loads(out.stdout)
    assert result["backend"] == "auto"  # unchanged by the refused set_backend
    assert {op for op, where in result["ops"].items() if where == "numpy"} == {
        "gelu_forward", "gelu_backward"}
    assert result["summary"] == ("auto: numpy for gelu_forward, gelu_backward (kernels missing); "
                                 f"cython for the other {len(ops._KERNEL_MODULES) - 2}")
    assert "tinygpt._gelu" in result["refused"] and "None in sys.modules" in result["refused"]


def test_cython_backend_from_the_environment_refuses_to_import_without_a_kernel():
    out = run_python(WITHOUT_GELU + "import tinygpt", {"TINYGPT_BACKEND": "cython"})
    assert out.returncode != 0
    assert "RuntimeError: backend 'cython' needs every compiled kernel" in out.stderr
    assert "tinygpt._gelu (gelu_forward, gelu_backward): ModuleNotFoundError" in out.stderr


def small_batch(vocab=13, B=3, T=17, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (B, T)), rng.integers(0, vocab, (B, T))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_training_step_matches_between_backends(dtype):
    """A whole forward and backward on each backend: the loss and every parameter's gradient.

    Tolerances in units of the dtype's eps, measured over 20 seeds in both dtypes: the loss
    differs by at most 1.6 eps (relative), and every gradient by at most 5.7 eps of that
    parameter's own largest gradient entry.
    """
    x, y = small_batch()
    results = {}
    for backend in ("numpy", "cython"):
        with ops.using_backend(backend):
            model = TinyGPT(13, d_model=24, n_heads=3, n_layers=2, max_seq_len=17, dtype=dtype)
            loss = model.loss(x, y)
            model.backward()
        results[backend] = loss, {name: g.copy() for name, g in model.g.items()}
    (loss_np, grads_np), (loss_cy, grads_cy) = results["numpy"], results["cython"]
    eps = float(np.finfo(dtype).eps)
    # loss: a mean over 51 rows of the forward's output, a few roundings per layer apart
    assert loss_cy == pytest.approx(loss_np, rel=16 * eps, abs=0)
    for name, g in grads_np.items():
        # each gradient sums the 51 rows' contributions after two blocks of backward, and is
        # judged against its own scale, not the model's largest gradient: an output
        # projection's bias gets gradients 200 times those of a LayerNorm weight
        np.testing.assert_allclose(grads_cy[name], g, rtol=64 * eps,
                                   atol=64 * eps * np.abs(g).max(), err_msg=name)


# rows per work item of the float32 linear forward and of LayerNorm's backward (csrc/)
FORWARD_ROWS = _linear._BLOCKS["forward_rows"]
ROWS_PER_CHUNK = _layernorm._BLOCKS["rows_per_chunk"]


@pytest.mark.parametrize("arch", [dict(), dict(position="rotary", mlp="relu2")],
                         ids=["gpt2", "rotary+relu2"])
def test_training_is_bitwise_identical_on_one_and_two_threads_with_clipping(threads, arch):
    """Batches of 8 x 48 = 384 rows: more than one work item of the linear forward and of
    LayerNorm's backward, so two threads really share the work; and a
    max_grad_norm that every step's gradient exceeds, so the clipping factor (a global norm, one
    BLAS dot over every parameter) is in each update. Dropout masks and the weight average are
    on too. One thread, two, and one again give the same bits."""
    batch_size, seq_len, max_grad_norm = 8, 48, 0.05
    assert batch_size * seq_len > max(FORWARD_ROWS, 2 * ROWS_PER_CHUNK)
    tokens = np.random.default_rng(0).integers(0, 11, 5000)
    runs = []
    for n in (1, 2, 1):
        threads(n)
        model = TinyGPT(11, d_model=32, n_heads=4, n_layers=2, max_seq_len=seq_len, dropout=0.1,
                        **arch)
        history = train_model(model, tokens, batch_size=batch_size, seq_len=seq_len, max_steps=12,
                              warmup_steps=3, max_grad_norm=max_grad_norm, ema_decay=0.9,
                              progress=False)
        runs.append((model.params.copy(), history))
    (params, history), others = runs[0], runs[1:]
    assert len(history["grad_norm"]) == 12
    assert min(history["grad_norm"]) > max_grad_norm  # the norm before clipping: every step clipped
    for other_params, other in others:
        np.testing.assert_array_equal(other_params, params)
        for key in ("train_loss", "grad_norm", "lr"):
            assert other[key] == history[key], key


def f32(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _layernorm_backward_into_part_of_residual():
    """out's dx may be residual itself, not another view of part of it."""
    residual = f32(5, 8)
    return ops.layernorm_backward(f32(4, 8), f32(4, 8), f32(8), f32(4), f32(4), residual[:4],
                                  out=(residual[1:], f32(8), f32(8)))


def _adamw_moments_shared():
    """m and v are updated in place: one array for both would take both updates."""
    moments = f32(4)
    return ops.adamw_update(f32(4), f32(4), moments, moments, f32(4), 1e-3, 0.9, 0.99, 1e-8, 1)


@pytest.mark.parametrize("call,error,match", [
    (lambda: ops.layernorm_forward(f32(4, 8).astype(np.float16), f32(8), f32(8)), TypeError, "float32"),
    (lambda: ops.layernorm_forward(f32(4, 8), f32(8).astype(np.float64), f32(8)), TypeError, "weight"),
    (lambda: ops.layernorm_forward(f32(4, 8), f32(7), f32(8)), ValueError, "weight"),
    (lambda: ops.layernorm_forward(f32(8), f32(8), f32(8)), ValueError, "2-D"),
    (lambda: ops.layernorm_forward(f32(4, 8), f32(8), f32(8), eps=0.0), ValueError, "eps"),
    (lambda: ops.layernorm_forward([[1.0]], f32(1), f32(1)), TypeError, "numpy array"),
    (lambda: ops.layernorm_backward(f32(4, 8), f32(4, 8), f32(8), f32(3), f32(4)), ValueError, "mean"),
    (lambda: ops.layernorm_backward(f32(4, 8), f32(4, 8), f32(8), f32(4), f32(4), f32(4, 7)),
     ValueError, "residual"),
    (lambda: ops.layernorm_backward(f32(4, 8), f32(4, 8), f32(8), f32(4), f32(4),
                                    f32(4, 8).astype(np.float64)), TypeError, "residual"),
    (lambda: _layernorm_backward_into_part_of_residual(), ValueError, "overlaps"),
    (lambda: ops.gelu_backward(f32(4, 8), f32(4, 9)), ValueError, "dout"),
    (lambda: ops.gelu_forward(np.arange(4)), TypeError, "float32"),
    (lambda: ops.relu2_backward(f32(4, 8), f32(4, 9)), ValueError, "dout"),
    (lambda: ops.relu2_forward(np.arange(4)), TypeError, "float32"),
    (lambda: ops.rotary_forward(f32(1, 3, 18), 2, f32(3, 1), f32(3, 1)), ValueError, "even"),
    (lambda: ops.rotary_forward(f32(1, 3, 12), 1, f32(3, 1), f32(3, 2)), ValueError, "cos"),
    (lambda: ops.rotary_forward(f32(1, 3, 12), 2, f32(3, 1), f32(2, 1)), ValueError, "sin"),
    (lambda: ops.rotary_forward(f32(1, 3, 24)[..., ::2], 2, f32(3, 1), f32(3, 1)), ValueError,
     "in place"),
    (lambda: ops.attention_forward(f32(2, 12), 2), ValueError, "3-D"),
    (lambda: ops.attention_forward(f32(1, 3, 13), 1), ValueError, "3C"),
    (lambda: ops.attention_forward(f32(1, 3, 12), 3), ValueError, "divisible"),
    (lambda: ops.attention_forward(f32(1, 3, 12), 0), ValueError, "n_heads"),
    (lambda: ops.attention_backward(f32(1, 3, 4), f32(1, 3, 12), f32(1, 3, 4), f32(1, 1, 3), 2),
     ValueError, "lse"),
    (lambda: ops.attention_backward(f32(1, 2, 4), f32(1, 3, 12), f32(1, 3, 4), f32(1, 2, 3), 2),
     ValueError, "dout"),
    (lambda: ops.linear_forward(f32(4, 8), f32(7, 3)), ValueError, "weight"),
    (lambda: ops.linear_forward(f32(4, 8), f32(8, 3), bias=f32(4)), ValueError, "bias"),
    (lambda: ops.linear_forward(f32(4, 8), f32(8, 3), residual=f32(4, 4)), ValueError, "residual"),
    (lambda: ops.linear_forward(f32(4, 8), f32(8, 3).astype(np.float64)), TypeError, "weight"),
    (lambda: ops.linear_backward(f32(4, 2), f32(4, 8), f32(8, 3)), ValueError, "dout"),
    (lambda: ops.softmax_cross_entropy(f32(4, 5), np.array([0, 1, 5, 2])), ValueError, r"targets\[2\] = 5 is outside"),
    (lambda: ops.softmax_cross_entropy(f32(4, 5), np.array([0, -2, 1, 2])), ValueError,
     r"targets\[1\] = -2"),
    (lambda: ops.softmax_cross_entropy(f32(4, 5), np.zeros(4)), TypeError, "integers"),
    (lambda: ops.softmax_cross_entropy(f32(4, 5), np.zeros(3, dtype=int)), ValueError, "targets"),
    (lambda: ops.softmax_cross_entropy(f32(2, 5), np.array([-1, -1])), ValueError, "ignored"),
    (lambda: ops.adamw_update(f32(4), f32(3), f32(4), f32(4), f32(4), 1e-3, 0.9, 0.99, 1e-8, 1),
     ValueError, "grads"),
    (lambda: ops.adamw_update(f32(4), f32(4), f32(4), f32(4).astype(np.float64), f32(4), 1e-3,
                              0.9, 0.99, 1e-8, 1), TypeError, "v has dtype"),
    (lambda: ops.adamw_update(f32(2, 4), f32(2, 4), f32(2, 4), f32(2, 4), f32(2, 4), 1e-3, 0.9,
                              0.99, 1e-8, 1), ValueError, "1-D"),
    (lambda: ops.adamw_update(f32(8)[::2], f32(4), f32(4), f32(4), f32(4), 1e-3, 0.9, 0.99,
                              1e-8, 1), ValueError, "params must be a writeable C-contiguous array"),
    (lambda: _adamw_moments_shared(), ValueError, "must not share memory"),
    (lambda: ops.adamw_update(f32(4), f32(4), f32(4), np.broadcast_to(np.float32(1), 4), f32(4),
                              1e-3, 0.9, 0.99, 1e-8, 1), ValueError, "v must be a writeable"),
    (lambda: ops.adamw_update(f32(4), f32(4), f32(4), f32(4), f32(4), 1e-3, 0.9, 0.99, 1e-8, 0),
     ValueError, "step number t"),
    (lambda: ops.embedding_backward(f32(4, 8), np.array([0, 1, 5, 2]), 5), ValueError,
     r"ids\[2\] = 5 is outside \[0, 5\)"),
    (lambda: ops.embedding_backward(f32(4, 8), np.array([0, -1, 1, 2]), 5), ValueError,
     r"ids\[1\] = -1"),
    (lambda: ops.embedding_backward(f32(4, 8), np.zeros(4), 5), TypeError, "integers"),
    (lambda: ops.embedding_backward(f32(4, 8), np.zeros(3, dtype=int), 5), ValueError, "ids"),
    (lambda: ops.embedding_backward(f32(8), np.zeros(8, dtype=int), 5), ValueError, "2-D"),
    (lambda: ops.embedding_backward(f32(4, 8), np.zeros(4, dtype=int), 0), ValueError,
     "vocab_size"),
    (lambda: ops.embedding_backward(f32(4, 8), np.zeros(4, dtype=int), 2.0), ValueError,
     "vocab_size"),
])
def test_bad_input_is_rejected_on_both_backends(backend, call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_non_contiguous_input_gives_the_contiguous_answer(backend):
    """A strided x gives the bits of its contiguous copy, and that is LayerNorm's answer,
    computed here in float64 from its definition."""
    x = f32(8, 12)[:, ::2]
    w, b = f32(6, seed=1), f32(6, seed=2)
    out, mean, rstd = ops.layernorm_forward(x, w, b)
    expected, _, _ = ops.layernorm_forward(np.ascontiguousarray(x), w, b)
    np.testing.assert_array_equal(out, expected)
    x64 = x.astype(np.float64)
    mean64 = x64.mean(axis=1)
    rstd64 = 1 / np.sqrt(x64.var(axis=1) + 1e-5)
    # float32 sums of 6 entries: a few eps of each row's values (|out| <= 4 here)
    np.testing.assert_allclose(mean, mean64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rstd, rstd64, rtol=1e-6)
    np.testing.assert_allclose(out, (x64 - mean64[:, None]) * rstd64[:, None] * w + b,
                               rtol=1e-6, atol=4e-6)


def _calls_with_outputs(dtype):
    """(op name, args, the shapes of what it returns as arrays) for every op, small shapes."""
    rng = np.random.default_rng(3)

    def a(*shape):
        return rng.standard_normal(shape).astype(dtype)

    qkv = a(2, 5, 12)
    att, lse = ops.attention_forward(qkv, 2)
    x, w = a(6, 8), a(8)
    _, mean, rstd = ops.layernorm_forward(x, w, a(8))
    return [
        ("linear_forward", (a(6, 8), a(8, 3), a(3), a(6, 3)), [(6, 3)]),
        ("linear_backward", (a(6, 3), a(6, 8), a(8, 3)), [(6, 8), (8, 3), (3,)]),
        ("layernorm_forward", (x, w, a(8)), [(6, 8), (6,), (6,)]),
        ("layernorm_backward", (a(6, 8), x, w, mean, rstd), [(6, 8), (8,), (8,)]),
        ("layernorm_backward", (a(6, 8), x, w, mean, rstd, a(6, 8)), [(6, 8), (8,), (8,)]),
        ("gelu_forward", (a(4, 5),), [(4, 5)]),
        ("gelu_backward", (a(4, 5), a(4, 5)), [(4, 5)]),
        ("attention_forward", (qkv, 2), [(2, 5, 4), (2, 2, 5)]),
        ("attention_backward", (a(2, 5, 4), qkv, att, lse, 2), [(2, 5, 12)]),
        ("softmax_cross_entropy", (a(4, 5), np.array([0, 4, -1, 2])), [(4, 5)]),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_arrays_receive_exactly_what_the_op_returns(backend, dtype):
    for name, args, shapes in _calls_with_outputs(dtype):
        op = getattr(ops, name)
        expected = op(*args)
        outs = tuple(np.full(shape, np.nan, dtype) for shape in shapes)
        got = op(*args, out=outs if len(outs) > 1 else outs[0])
        if name == "softmax_cross_entropy":  # (loss, dlogits): out holds dlogits
            assert got[0] == expected[0] and got[1] is outs[0]
            expected, got = expected[1:], got[1:]
        elif len(outs) == 1:
            assert got is outs[0]
            expected, got = (expected,), (got,)
        else:
            assert all(g is o for g, o in zip(got, outs))
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(g, e, err_msg=name)


@pytest.mark.parametrize("make_out, error, match", [
    (lambda: np.empty((6, 4), np.float32), ValueError, "out must have shape"),
    (lambda: np.empty((6, 3), np.float64), TypeError, "dtype"),
    (lambda: np.empty((3, 6), np.float32).T, ValueError, "C-contiguous"),
    (lambda: [np.empty((6, 3), np.float32)], TypeError, "numpy array"),
    (lambda: (np.empty((6, 3), np.float32),), ValueError, "1 array"),
])
def test_bad_out_is_rejected_on_both_backends(backend, make_out, error, match):
    with pytest.raises(error, match=match):
        ops.linear_forward(f32(6, 8), f32(8, 3), out=make_out())


def test_out_that_overlaps_an_input_or_another_output_is_rejected(backend):
    x, w, b = f32(6, 8), f32(8), f32(8, seed=1)
    with pytest.raises(ValueError, match="overlaps"):
        ops.layernorm_forward(x, w, b, out=(x, np.empty(6, np.float32), np.empty(6, np.float32)))
    stats = np.empty(6, np.float32)
    with pytest.raises(ValueError, match="out rstd overlaps"):
        ops.layernorm_forward(x, w, b, out=(np.empty_like(x), stats, stats))
    with pytest.raises(ValueError, match="overlaps"):
        ops.gelu_forward(x, out=x)
    with pytest.raises(ValueError, match="a tuple of 3 arrays"):
        ops.layernorm_forward(x, w, b, out=np.empty_like(x))
