import math

import numpy as np
import pytest

from tinygpt.optim import AdamW, WeightAverage, clip_grad_norm, lr_at


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


def test_schedule_warms_up_linearly_then_decays_to_a_tenth():
    lrs = [lr_at(s, 1.0, 10, 110) for s in range(120)]
    np.testing.assert_allclose(lrs[:10], np.arange(1, 11) / 10)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[60] == pytest.approx(0.55)  # halfway through the cosine
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert lr_at(0, 1.0, 0, 10) == pytest.approx(1.0)


def test_clipping_scales_to_max_norm_and_reports_the_norm_before():
    grads = np.array([3.0, 4.0])
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    assert np.linalg.norm(grads) == pytest.approx(1.0, rel=1e-5)
    small = np.array([0.3, 0.4])
    assert clip_grad_norm(small, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(small, [0.3, 0.4])
    assert math.isnan(clip_grad_norm(np.array([np.nan, 1.0]), 1.0))
