import math

import numpy as np
import pytest

from tinygpt import TinyGPT
from tinygpt.optim import (AdamW, Muon, NewtonSchulz, WeightAverage, clip_grad_norm,
                           hidden_matrices, lr_at)


def test_adamw_matches_the_textbook_update():
    rng = np.random.default_rng(0)
    params = rng.normal(size=50)
    grads = np.zeros(50)
    mask = (np.arange(50) % 2).astype(float)
    opt = AdamW(params, grads, mask, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    p, m, v = params.copy(), np.zeros(50), np.zeros(50)
    for t in range(1, 6):
        g = rng.normal(size=50)
        grads[...] = g
        lr = 0.01 * t
        opt.step(lr)
        p = p - lr * 0.1 * mask * p
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        p = p - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
    np.testing.assert_allclose(params, p, rtol=1e-12, atol=1e-14)


def test_adamw_state_round_trips():
    params, grads = np.ones(4), np.full(4, 0.5)
    opt = AdamW(params, grads, np.ones(4))
    opt.step(0.1)
    other = AdamW(params.copy(), grads, np.ones(4))
    other.load_state(opt.state())
    assert other.t == 1 and np.array_equal(other.m, opt.m) and np.array_equal(other.v, opt.v)
    with pytest.raises(ValueError, match="shape"):
        AdamW(np.ones(3), np.ones(3), np.ones(3)).load_state(opt.state())


def test_adamw_rejects_bad_settings():
    with pytest.raises(ValueError):
        AdamW(np.ones(3), np.ones(4), np.ones(3))
    with pytest.raises(ValueError):
        AdamW(np.ones(3), np.ones(3), np.ones(3), weight_decay=-1)
    with pytest.raises(ValueError):
        AdamW(np.ones(3), np.ones(3), np.ones(3), betas=(1.0, 0.9))


def test_weight_average_follows_its_formula_and_swaps_in_and_out():
    rng = np.random.default_rng(0)
    params = rng.normal(size=20)
    average = WeightAverage(params, 0.95)
    expected = params.copy()
    for t in range(1, 40):
        params[...] = rng.normal(size=20)
        average.update()
        d = min(0.95, (1 + t) / (10 + t))  # 0.95 only from t = 170 on: early updates count more
        expected = d * expected + (1 - d) * params
    np.testing.assert_allclose(average.avg, expected, rtol=1e-12)
    trained = params.copy()
    with pytest.raises(RuntimeError):
        with average.applied():
            np.testing.assert_array_equal(params, average.avg)
            raise RuntimeError("the trained weights must come back even so")
    np.testing.assert_array_equal(params, trained)
    other = WeightAverage(params, 0.95)
    other.load_state(average.avg, average.t)
    assert other.t == 39 and np.array_equal(other.avg, average.avg)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="decay"):
            WeightAverage(params, bad)
    with pytest.raises(ValueError, match="shape"):
        other.load_state(np.ones(3), 1)


@pytest.mark.parametrize("min_ratio", [0.1, 0.0])
def test_schedule_warms_up_linearly_then_decays_to_its_floor(min_ratio):
    lrs = [lr_at(s, 1.0, 10, 110, min_ratio) for s in range(120)]
    np.testing.assert_allclose(lrs[:10], np.arange(1, 11) / 10)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[60] == pytest.approx((1 + min_ratio) / 2)  # halfway through the cosine
    assert lrs[110] == pytest.approx(min_ratio, abs=1e-15)
    assert lrs[119] == pytest.approx(min_ratio, abs=1e-15)
    assert lr_at(0, 1.0, 0, 10, min_ratio) == pytest.approx(1.0)


def test_clipping_scales_to_max_norm_and_reports_the_norm_before():
    grads = np.array([3.0, 4.0])
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    assert np.linalg.norm(grads) == pytest.approx(1.0, rel=1e-5)
    small = np.array([0.3, 0.4])
    assert clip_grad_norm(small, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(small, [0.3, 0.4])
    assert math.isnan(clip_grad_norm(np.array([np.nan, 1.0]), 1.0))


MODEL_SHAPES = [(128, 384), (128, 128), (128, 512), (512, 128)]  # attn_w, proj_w, fc_w, fc2_w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", MODEL_SHAPES)
def test_newton_schulz_keeps_the_singular_vectors_and_pushes_the_values_towards_one(shape, dtype):
    """G = U diag(s) V^T with s spread over 1.7 decades goes to about U V^T: U^T O V is
    diagonal to rounding, its diagonal within [0.6, 1.3]. A Gaussian matrix of a rectangular
    shape comes out with every singular value in that band too (a square one keeps a few
    near-zero ones: five steps cannot lift those, as in every Muon). The iteration runs on the
    Gram matrix, whose condition is the square of g's, so float32 keeps U^T O V diagonal to
    1e-4 (the iteration on X itself: 1e-5)."""
    rng = np.random.default_rng(0)
    k = min(shape)
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], k)))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], k)))
    g = ((u * np.geomspace(1.0, 0.02, k) * 1e-3) @ v.T).astype(dtype)
    out = np.empty_like(g)
    NewtonSchulz(shape, dtype)(g, out)
    assert out.dtype == dtype
    core = u.T @ out.astype(np.float64) @ v
    diagonal = np.diag(core)
    assert 0.6 < diagonal.min() and diagonal.max() < 1.3
    assert np.abs(core - np.diag(diagonal)).max() < (1e-4 if dtype == np.float32 else 1e-12)
    if shape[0] != shape[1]:
        NewtonSchulz(shape, dtype)(rng.normal(size=shape).astype(dtype), out)
        singular_values = np.linalg.svd(out.astype(np.float64), compute_uv=False)
        assert 0.6 < singular_values.min() and singular_values.max() < 1.3


def reference_orthogonalise(g, steps=5):
    """The quintic Newton-Schulz iteration, written out."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


@pytest.mark.parametrize("shape", MODEL_SHAPES)
def test_newton_schulz_on_the_gram_matrix_equals_the_iteration_on_x(shape):
    """NewtonSchulz's Gram-matrix form gives the quintic iteration's result: to 1e-12 of its
    largest entry in float64, and to 1e-4 in float32 (against the float64 iteration)."""
    g = np.random.default_rng(1).normal(size=shape)
    expected = reference_orthogonalise(g)
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-4)):
        out = np.empty(shape, dtype)
        NewtonSchulz(shape, dtype)(g.astype(dtype), out)
        assert np.abs(out - expected).max() < tolerance * np.abs(expected).max()


def test_muon_steps_match_the_written_out_formula():
    """Two matrices (one tall) and four other elements in one flat float64 buffer, three steps
    at changing learning rates: the matrices follow Muon's formula at 1.5 times the learning
    rate, the rest AdamW's at the learning rate."""
    rng = np.random.default_rng(0)
    params = rng.normal(size=2 + 15 + 2 + 24)
    grads = np.zeros_like(params)
    mask = np.zeros_like(params)
    mask[:2] = 1.0  # "a" decays, "b" does not
    matrices = [("w1", 2, (3, 5)), ("w2", 19, (6, 4))]
    mu, wd, ratio = 0.9, 0.1, 1.5
    muon = Muon(params, grads, mask, matrices, momentum=mu, lr_ratio=ratio, weight_decay=wd)
    adamw_params = params.copy()
    adamw = AdamW(adamw_params, grads, mask, weight_decay=wd)
    expected = params.copy()
    momentum = {name: np.zeros(shape) for name, _, shape in matrices}
    for t in range(1, 4):
        grads[...] = rng.normal(size=grads.size)
        lr = 0.01 * t
        muon.step(lr)
        adamw.step(lr)
        for name, offset, shape in matrices:
            size = math.prod(shape)
            w = expected[offset:offset + size].reshape(shape)
            g = grads[offset:offset + size].reshape(shape)
            momentum[name] = mu * momentum[name] + (1 - mu) * g
            update = reference_orthogonalise((1 - mu) * g + mu * momentum[name])
            matrix_lr = ratio * lr
            w[...] = w * (1 - matrix_lr * wd) - matrix_lr * 0.2 * math.sqrt(max(shape)) * update
        other = np.r_[0:2, 17:19]  # the layout: a (2,), w1 (3, 5), b (2,), w2 (6, 4)
        expected[other] = adamw_params[other]
        np.testing.assert_allclose(params, expected, rtol=1e-10, atol=1e-12)


def test_muon_gives_every_other_parameter_exactly_adamws_update():
    """On a model, Muon and AdamW from the same weights and gradients: everything outside the
    blocks' matrices has the same bits after three steps; the matrices differ."""
    model = TinyGPT(11, d_model=16, n_heads=2, n_layers=2, max_seq_len=8)
    rng = np.random.default_rng(0)
    start = model.params.copy()
    with_muon = Muon(model.params, model.grads, model.decay_mask(), hidden_matrices(model.shapes),
                     weight_decay=0.1)
    params = start.copy()
    with_adamw = AdamW(params, model.grads, model.decay_mask(), weight_decay=0.1)
    for _ in range(3):
        model.grads[...] = rng.normal(size=model.grads.size).astype(np.float32)
        with_muon.step(1e-2)
        with_adamw.step(1e-2)
    in_matrix = np.zeros(model.params.size, dtype=bool)
    for _, offset, shape in hidden_matrices(model.shapes):
        in_matrix[offset:offset + math.prod(shape)] = True
    np.testing.assert_array_equal(model.params[~in_matrix], params[~in_matrix])
    assert not np.any(model.params[in_matrix] == params[in_matrix])


def test_hidden_matrices_are_the_blocks_2d_weights_at_their_offsets():
    model = TinyGPT(11, d_model=16, n_heads=2, n_layers=2, max_seq_len=8)
    matrices = hidden_matrices(model.shapes)
    assert [name for name, _, _ in matrices] == [f"h{i}.{kind}_w" for i in range(2)
                                                 for kind in ("attn", "proj", "fc", "fc2")]
    for name, offset, shape in matrices:
        view = model.p[name]
        assert view.shape == shape
        assert view.ctypes.data == model.params[offset:].ctypes.data  # the view starts there


def test_muon_state_round_trips_and_refuses_adamws():
    model = TinyGPT(11, d_model=16, n_heads=2, n_layers=1, max_seq_len=8)
    model.grads[...] = 0.5

    def muon(params):
        return Muon(params, model.grads, model.decay_mask(), hidden_matrices(model.shapes))

    opt = muon(model.params)
    opt.step(0.1)
    other = muon(model.params.copy())
    other.load_state(opt.state())
    for name, value in opt.state().items():
        np.testing.assert_array_equal(other.state()[name], value, err_msg=name)
    assert int(other.state()["t"]) == 1 and opt.state()["momentum"].any()
    with pytest.raises(ValueError, match="saved by AdamW"):
        other.load_state(AdamW(model.params, model.grads, model.decay_mask()).state())
    with pytest.raises(ValueError, match="momentum has shape"):
        other.load_state({**opt.state(), "momentum": np.zeros(3, np.float32)})


def test_muon_rejects_bad_settings():
    params = np.ones(10)
    with pytest.raises(ValueError, match="momentum"):
        Muon(params, params.copy(), params.copy(), [("w", 0, (2, 2))], momentum=1.0)
    with pytest.raises(ValueError, match="overlaps"):
        Muon(params, params.copy(), params.copy(), [("w", 0, (2, 2)), ("v", 3, (2, 2))])
    with pytest.raises(ValueError, match="outside"):
        Muon(params, params.copy(), params.copy(), [("w", 8, (2, 2))])
    with pytest.raises(ValueError, match="lr_ratio"):
        Muon(params, params.copy(), params.copy(), [("w", 0, (2, 2))], lr_ratio=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        Muon(params, params.copy(), params.copy(), [("w", 0, (2, 2))], weight_decay=-1.0)
