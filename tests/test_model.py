import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt import TinyGPT
from tinygpt import generate as generate_module
from tinygpt.model import _views
from tinygpt.optim import AdamW


def tiny_model(dtype=np.float64, seed=0, **overrides):
    config = dict(vocab_size=7, d_model=8, n_heads=2, n_layers=2, max_seq_len=6)
    config.update(overrides)
    model = TinyGPT(**config, seed=seed, dtype=dtype)
    # move LayerNorm and biases off their 1/0 init so every gradient path carries signal
    model.params += np.random.default_rng(seed + 1).normal(0, 0.1, model.params.size)
    return model


def numerical_gradient(model, x, y, eps=1e-6):
    grad = np.zeros_like(model.params)
    for i in range(model.params.size):
        old = model.params[i]
        model.params[i] = old + eps
        plus = model.loss(x, y)
        model.params[i] = old - eps
        minus = model.loss(x, y)
        model.params[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


# the architecture options: GPT-2's block (the default), and each option alone and together
ARCHITECTURES = [dict(), dict(position="rotary"), dict(mlp="relu2"),
                 dict(position="rotary", mlp="relu2")]
ARCHITECTURE_IDS = ["gpt2", "rotary", "relu2", "rotary+relu2"]
architectures = pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCHITECTURE_IDS)


@architectures
def test_gradient_matches_finite_differences(backend, arch):
    model = tiny_model(**arch)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, (2, 5))
    y = rng.integers(0, 7, (2, 5))
    y[0, 2] = -1  # an ignored target
    model.loss(x, y)
    model.backward()
    analytic = _views(model.grads.copy(), model.shapes)
    numeric = _views(numerical_gradient(model, x, y), model.shapes)
    for name in analytic:
        a, n = analytic[name], numeric[name]
        if name == "wpe":  # rows past T get no gradient
            assert np.all(a[5:] == 0)
        scale = max(np.linalg.norm(a), np.linalg.norm(n), 1e-12)
        assert np.linalg.norm(a - n) / scale < 1e-5, name


def test_gradient_with_dropout_matches_finite_differences(backend):
    """With the masks fixed (the same generator state for every loss), dropout is a fixed
    linear map and the finite differences must match backward exactly as without it."""
    model = tiny_model(dropout=0.3)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 7, (2, 5)), rng.integers(0, 7, (2, 5))

    def masks():
        return np.random.default_rng(5)

    model.loss(x, y, dropout_rng=masks())
    model.backward()
    analytic = model.grads.copy()
    numeric = np.zeros_like(model.params)
    for i in range(model.params.size):
        old = model.params[i]
        model.params[i] = old + 1e-6
        plus = model.loss(x, y, dropout_rng=masks())
        model.params[i] = old - 1e-6
        minus = model.loss(x, y, dropout_rng=masks())
        model.params[i] = old
        numeric[i] = (plus - minus) / 2e-6
    assert np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric) < 1e-6
    # and dropout really acted: the masked loss differs from the plain one
    assert model.loss(x, y, dropout_rng=masks()) != model.loss(x, y)


def test_dropout_masks_drop_at_the_rate_and_keep_the_mean():
    model = TinyGPT(11, d_model=32, n_heads=2, n_layers=1, max_seq_len=64, dropout=0.25)
    x = np.random.default_rng(0).integers(0, 11, (8, 64))
    model.loss(x, x, dropout_rng=np.random.default_rng(1))
    mask = model._training_arrays(8, 64)[0].mask_emb
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert abs((mask == 0).mean() - 0.25) < 0.02
    assert abs(mask.mean() - 1.0) < 0.03
    # without a generator, or with dropout 0, a loss is the plain one
    plain = TinyGPT(11, d_model=32, n_heads=2, n_layers=1, max_seq_len=64)
    assert model.loss(x, x) == plain.loss(x, x)
    assert plain.loss(x, x, dropout_rng=np.random.default_rng(1)) == plain.loss(x, x)
    with pytest.raises(TypeError, match="dropout_rng"):
        model.loss(x, x, dropout_rng=1)


def test_step_buffers_survive_shape_changes_and_interleaved_forwards(backend):
    """Reused step buffers must give what a fresh model gives, whatever ran in between."""
    rng = np.random.default_rng(1)
    batches = [(rng.integers(0, 7, (b, t)), rng.integers(0, 7, (b, t)))
               for b, t in ((2, 5), (3, 4), (2, 5))]
    model = tiny_model()
    for x, y in batches:
        fresh = tiny_model()
        expected_loss = fresh.loss(x, y)
        fresh.backward()
        loss = model.loss(x, y)
        logits = model.forward(x[:1, :3])  # no keep: must not touch what backward reads
        model.backward()
        assert loss == expected_loss
        np.testing.assert_array_equal(model.grads, fresh.grads)
        np.testing.assert_array_equal(logits, fresh.forward(x[:1, :3]))


def test_step_arrays_start_on_64_byte_boundaries():
    """The kernels run faster on them (tinygpt.ops.empty); every array of a step is one."""
    model = tiny_model()
    x = np.random.default_rng(0).integers(0, 7, (2, 5))
    model.loss(x, x)
    acts, scratch = model._training[1:]
    arrays = [a for part in (*acts.layers, acts, scratch) for a in vars(part).values()
              if isinstance(a, np.ndarray)]
    assert len(arrays) > 20 and all(a.ctypes.data % 64 == 0 for a in arrays)


def test_backward_needs_a_loss_first():
    with pytest.raises(RuntimeError, match="loss"):
        tiny_model().backward()


@settings(max_examples=20, deadline=None)
@given(t=st.integers(0, 5), shift=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_changing_token_t_never_changes_earlier_logits(t, shift, seed):
    model = tiny_model(dtype=np.float64)
    x = np.random.default_rng(seed).integers(0, 7, (2, 6))
    changed = x.copy()
    changed[:, t] = (x[:, t] + shift) % 7  # always another token: never forward(x) twice
    before, after = model.forward(x), model.forward(changed)
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert not np.allclose(before[:, t], after[:, t])  # the change did reach the model


def test_causality_holds_on_both_backends(backend):
    model = tiny_model(dtype=np.float32)
    x = np.random.default_rng(3).integers(0, 7, (3, 6))
    changed = x.copy()
    changed[:, 4] = (changed[:, 4] + 1) % 7
    before, after = model.forward(x), model.forward(changed)
    np.testing.assert_array_equal(before[:, :4], after[:, :4])
    assert not np.allclose(before[:, 4], after[:, 4])


def test_initial_loss_is_about_log_vocab():
    model = TinyGPT(65)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 65, (8, 64)), rng.integers(0, 65, (8, 64))
    assert abs(model.loss(x, y) - math.log(65)) < 0.1


def test_tiny_model_overfits_one_batch():
    model = TinyGPT(10, d_model=32, n_heads=2, n_layers=2, max_seq_len=16)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 10, (4, 16)), rng.integers(0, 10, (4, 16))
    optimizer = AdamW(model.params, model.grads, model.decay_mask(), weight_decay=0.0)
    for _ in range(300):
        loss = model.loss(x, y)
        model.backward()
        optimizer.step(1e-2)
    assert loss < 0.5


def test_forward_shapes_and_dtypes():
    for dtype in (np.float32, np.float64):
        model = TinyGPT(11, d_model=16, n_heads=4, n_layers=1, max_seq_len=8, dtype=dtype)
        assert model.forward(np.zeros((3, 8), dtype=np.int64)).shape == (3, 8, 11)
        logits = model.forward(np.array([1, 2, 3]))
        assert logits.shape == (3, 11) and logits.dtype == dtype
        assert model(np.array([[1]])).shape == (1, 1, 11)


def test_parameter_count_matches_gpt2_formula():
    model = TinyGPT(65, d_model=128, n_heads=4, n_layers=4, max_seq_len=128)
    C, V, L, T = 128, 65, 4, 128
    per_layer = 12 * C * C + 13 * C
    assert model.num_parameters() == V * C + T * C + L * per_layer + 2 * C + C * V
    mask = model.decay_mask()
    assert mask.sum() == V * C + T * C + L * 12 * C * C + C * V  # matrices and embeddings only
    # rotary positions have no position table; the MLP's activation has no parameters
    rotary = TinyGPT(65, d_model=128, n_heads=4, n_layers=4, max_seq_len=128, position="rotary",
                     mlp="relu2")
    assert "wpe" not in rotary.p and rotary.weights.wpe is None
    assert rotary.num_parameters() == model.num_parameters() - T * C


def test_typed_views_are_the_named_views():
    """model.weights and model.weight_grads view the same memory as model.p and model.g."""
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=2, max_seq_len=8, position="rotary")
    for typed, named in ((model.weights, model.p), (model.weight_grads, model.g)):
        for i, block in enumerate(typed.blocks):
            for field, view in vars(block).items():
                assert view is named[f"h{i}.{field}"]
        assert typed.wte is named["wte"] and typed.head_w is named["head_w"]


def test_rotary_attention_depends_on_relative_positions_only():
    """Rotating q and k by the angles of positions 4..8 instead of 0..4 leaves every attention
    score, so the attention's output, unchanged: the angles grow linearly with the position,
    and q and k turn by the same angle per position (a check of the tables' sign and layout
    that a gradient check cannot make)."""
    from tinygpt import reference
    model = TinyGPT(7, d_model=16, n_heads=2, n_layers=1, max_seq_len=12, position="rotary",
                    dtype=np.float64)
    cos, sin = model.rope  # (12, D/2): angle t * 10000^(-2i/D)
    assert cos.shape == (12, 4)
    np.testing.assert_allclose(np.arctan2(sin[1], cos[1]), 10000.0 ** (-np.arange(4) / 4))
    qkv = np.random.default_rng(2).normal(size=(1, 5, 3 * 16))
    at_0 = reference.rotary_forward(qkv, 2, cos[:5], sin[:5])
    at_4 = reference.rotary_forward(qkv, 2, cos[4:9], sin[4:9])
    assert not np.allclose(at_0, at_4)
    np.testing.assert_allclose(reference.attention_forward(at_0, 2)[0],
                               reference.attention_forward(at_4, 2)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(vocab_size=65, d_model=30, n_heads=4), "divisible"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(vocab_size=65, n_layers=0), "n_layers"),
    (dict(vocab_size=65, max_seq_len=-1), "max_seq_len"),
    (dict(vocab_size=65, d_model=64.0), "d_model"),
    (dict(vocab_size=65, dtype=np.float16), "dtype"),
    (dict(vocab_size=65, dropout=1.0), "dropout"),
    (dict(vocab_size=65, dropout=-0.1), "dropout"),
    (dict(vocab_size=65, dropout="0.1"), "dropout"),
    (dict(vocab_size=65, position="absolute"), "position"),
    (dict(vocab_size=65, mlp="swiglu"), "mlp"),
    (dict(vocab_size=65, d_model=12, n_heads=4, position="rotary"), "even head size"),
])
def test_invalid_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TinyGPT(**kwargs)


@pytest.mark.parametrize("x,match", [
    (np.zeros((1, 9), dtype=np.int64), "max_seq_len"),
    (np.array([[0, 11]]), "outside"),
    (np.array([[-1, 0]]), "outside"),
    (np.array([[0.0, 1.0]]), "integer"),
    (np.array([True, False]), "integer"),
    (np.zeros((1, 2, 3), dtype=np.int64), "shape"),
    (np.zeros((1, 0), dtype=np.int64), "at least one"),
])
def test_bad_token_ids_are_rejected(x, match):
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=1, max_seq_len=8)
    with pytest.raises(ValueError, match=match):
        model.forward(x)


def test_loss_rejects_mismatched_targets():
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=1, max_seq_len=8)
    with pytest.raises(ValueError, match="shape"):
        model.loss(np.zeros((2, 4), dtype=int), np.zeros((2, 3), dtype=int))
    with pytest.raises(ValueError, match="outside"):
        model.loss(np.zeros((2, 4), dtype=int), np.full((2, 4), 11))
    with pytest.raises(ValueError, match="integer"):
        model.loss(np.zeros((2, 4), dtype=int), np.zeros((2, 4)))


def test_generate_returns_prompt_plus_new_tokens_and_crops_context():
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=1, max_seq_len=8)
    prompt = np.arange(10) % 11  # longer than max_seq_len: cropped, not rejected
    out = model.generate(prompt, 12, seed=0)
    assert out.shape == (22,)
    np.testing.assert_array_equal(out[:10], prompt)
    assert out.min() >= 0 and out.max() < 11
    # the seed fixes the draws, and they are draws: other seeds give other tokens
    np.testing.assert_array_equal(out, model.generate(prompt, 12, seed=0))
    assert any(not np.array_equal(out, model.generate(prompt, 12, seed=s)) for s in (1, 2, 3))
    assert model.generate(np.array([[1, 2], [3, 4]]), 3, seed=0).shape == (2, 5)


def test_generate_at_temperature_zero_is_greedy():
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=1, max_seq_len=8)
    out = model.generate(np.array([3]), 5, temperature=0)
    ids = np.array([3])
    for _ in range(5):
        ids = np.append(ids, model.forward(ids[-8:])[-1].argmax())
    np.testing.assert_array_equal(out, ids)


def test_generate_top_k_samples_only_the_k_likeliest():
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=1, max_seq_len=8, seed=5)
    model.p["head_w"][...] = np.random.default_rng(0).normal(0, 1.0, model.p["head_w"].shape)
    prompt = np.array([[4]] * 200)
    allowed = np.argsort(model.forward(np.array([4]))[-1])[-2:]
    first = model.generate(prompt, 1, temperature=2.0, top_k=2, seed=1)[:, 1]
    assert set(first.tolist()) <= set(allowed.tolist())
    assert len(set(first.tolist())) == 2


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=-1), dict(max_new_tokens=2.5),
                                    dict(max_new_tokens=3, temperature=-1.0),
                                    dict(max_new_tokens=3, top_k=0)])
def test_generate_rejects_bad_arguments(kwargs):
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=1, max_seq_len=8)
    with pytest.raises(ValueError):
        model.generate(np.array([1]), **kwargs)
    with pytest.raises(ValueError):
        model.generate(np.array([1.0]), 2)


@pytest.mark.parametrize("prompt_len,new,kwargs", [
    (1, 20, dict()),
    (3, 12, dict(top_k=3)),
    (5, 15, dict(top_p=0.8, temperature=0.7)),  # runs past max_seq_len: the window slides
    (9, 4, dict(temperature=0)),  # the prompt itself is longer than the window
])
@architectures
def test_kv_cache_generation_matches_full_recomputation(prompt_len, new, kwargs, arch):
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=2, max_seq_len=8, seed=2, **arch)
    prompt = np.random.default_rng(prompt_len).integers(0, 11, (2, prompt_len))
    for seed in range(3):
        cached = model.generate(prompt, new, seed=seed, use_cache=True, **kwargs)
        full = model.generate(prompt, new, seed=seed, use_cache=False, **kwargs)
        np.testing.assert_array_equal(cached, full)


@architectures
@pytest.mark.parametrize("batch,prompt_len", [(1, 1), (2, 3)])
def test_cached_decoder_logits_equal_a_full_forward_at_every_position(backend, monkeypatch,
                                                                      batch, prompt_len, arch):
    """Not only the sampled ids: the logits generate samples from at each step (the prompt's
    forward, then one decode_step per position up to max_seq_len, then the moved window read
    again) equal a full forward's on the same context, in float64, to 1e-10 relative."""
    max_len, V = 20, 11
    model = tiny_model(vocab_size=V, d_model=16, n_heads=2, n_layers=2, max_seq_len=max_len,
                       **arch)
    rng = np.random.default_rng(batch)
    prompt = rng.integers(0, V, (batch, prompt_len))
    new = max_len - prompt_len + 4  # goes 4 tokens past max_seq_len: the window moves
    chosen = rng.integers(0, V, (new, batch))  # what the patched sampler picks at each step
    seen, positions = [], []

    def sampler(logits, *args):  # records generate's logits, then picks the next chosen ids
        seen.append(logits.copy())
        return chosen[len(seen) - 1]

    decode_step = generate_module.decode_step

    def counting_decode_step(model, ids, position, cache):
        positions.append(position)
        return decode_step(model, ids, position, cache)

    monkeypatch.setattr(generate_module, "sample_next", sampler)
    monkeypatch.setattr(generate_module, "decode_step", counting_decode_step)
    out = model.generate(prompt[0] if batch == 1 else prompt, new, use_cache=True)
    ids = np.concatenate([prompt, chosen.T], axis=1)
    np.testing.assert_array_equal(np.atleast_2d(out), ids)
    assert positions == list(range(prompt_len, max_len))  # the cache served every position
    assert len(seen) == new
    for step, logits in enumerate(seen):
        context = ids[:, :prompt_len + step][:, -max_len:]
        expected = model.forward(context)[:, -1]  # (B, V)
        assert logits.shape == (batch, V) and logits.dtype == np.float64
        rel = np.linalg.norm(logits - expected) / np.linalg.norm(expected)
        assert rel < 1e-10, f"step {step} (context {context.shape[1]}): relative {rel:.2e}"
        # elementwise too, with an atol at the logits' scale (a logit may sit near 0)
        np.testing.assert_allclose(logits, expected, rtol=1e-10,
                                   atol=1e-10 * np.abs(expected).max(), err_msg=f"step {step}")


def test_generate_streams_each_new_token():
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=1, max_seq_len=8)
    seen = []
    out = model.generate(np.array([1, 2]), 6, seed=0, on_token=lambda ids: seen.append(int(ids[0])))
    assert seen == out[2:].tolist()


def test_top_p_samples_only_from_the_nucleus():
    from tinygpt.generate import sample_next

    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    logits = np.log(np.repeat(probs, 2000, axis=0))
    rng = np.random.default_rng(0)
    for top_p, allowed in [(0.45, {0}), (0.7, {0, 1}), (0.79, {0, 1}), (0.9, {0, 1, 2}), (0.97, {0, 1, 2, 3})]:
        drawn = set(sample_next(logits, 1.0, None, top_p, rng).tolist())
        assert drawn == allowed, top_p
    assert set(sample_next(logits, 1.0, 2, 0.9, rng).tolist()) == {0, 1}  # top-k and top-p together
    assert set(sample_next(logits, 0, None, None, rng).tolist()) == {0}


@pytest.mark.parametrize("kwargs", [dict(), dict(temperature=0.8, top_k=3), dict(top_p=0.6),
                                    dict(temperature=1.7, repetition_penalty=1.5)])
def test_sample_next_draws_what_rng_choice_draws(kwargs):
    """One cumulative sum and one uniform per row, for all rows at once: the same ids, from the
    same generator state, as rng.choice(V, p=row) row by row, and one draw per row."""
    from tinygpt.generate import sample_next

    settings = dict(temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0) | kwargs
    logits = np.random.default_rng(0).normal(0, 2.0, (64, 9))
    seen = np.random.default_rng(1).random((64, 9)) < 0.3
    rng, expected_rng = np.random.default_rng(2), np.random.default_rng(2)
    drawn = sample_next(logits, settings["temperature"], settings["top_k"], settings["top_p"],
                        rng, settings["repetition_penalty"], seen)
    expected = [expected_rng.choice(9, p=row) for row in _sampling_probs(logits, seen, **settings)]
    np.testing.assert_array_equal(drawn, expected)
    assert rng.random() == expected_rng.random()


def _sampling_probs(logits, seen, temperature, top_k, top_p, repetition_penalty):
    """The per-row probabilities sample_next draws from, written out the long way."""
    penalty = repetition_penalty
    logits = np.where(seen & (penalty != 1),
                      np.where(logits > 0, logits / penalty, logits * penalty), logits)
    logits = logits / temperature
    if top_k is not None:
        kth = np.sort(logits, axis=1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p is not None:
        for row in probs:
            order = np.argsort(-row, kind="stable")
            before = np.cumsum(row[order]) - row[order]
            row[order[before >= top_p]] = 0.0
            row /= row.sum()
    return probs


def test_sample_next_frequencies_follow_the_probabilities():
    from tinygpt.generate import sample_next

    probs = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    logits = np.log(np.tile(probs, (40_000, 1)))
    counts = np.bincount(sample_next(logits, 1.0, None, None, np.random.default_rng(0)),
                         minlength=5)
    expected = probs * len(logits)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 18.5, (counts, expected)  # 4 degrees of freedom: p = 0.001


def test_cached_generation_follows_parameter_changes_between_calls():
    """The decode cache holds weights prepared from the parameters (LayerNorms folded in):
    a change to the parameters between generate calls must reach the next call."""
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=2, max_seq_len=16, seed=2,
                    dtype=np.float64)
    prompt = np.array([1, 2, 3])
    before = model.generate(prompt, 10, temperature=0)
    rng = np.random.default_rng(0)
    for _ in range(3):  # until the greedy continuation changes
        model.params += rng.normal(0, 0.5, model.params.size)
        after = model.generate(prompt, 10, temperature=0)
        np.testing.assert_array_equal(after,
                                      model.generate(prompt, 10, temperature=0, use_cache=False))
        if not np.array_equal(after, before):
            break
    assert not np.array_equal(after, before)


@pytest.mark.parametrize("kwargs", [dict(top_p=0.0), dict(top_p=1.5), dict(temperature="hot")])
def test_generate_rejects_bad_sampling_settings(kwargs):
    model = TinyGPT(11, d_model=16, n_heads=4, n_layers=1, max_seq_len=8)
    with pytest.raises(ValueError):
        model.generate(np.array([1]), 2, **kwargs)
