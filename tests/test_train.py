import math

import numpy as np
import pytest

from tinygpt import CharTokenizer, TinyGPT, Trainer, TrainConfig, evaluate, ops, train_model
from tinygpt.data import split
from tinygpt.optim import AdamW, Muon


def test_training_smoke_lowers_val_loss_by_more_than_a_nat(shakespeare_text):
    text = shakespeare_text[:50_000]
    tok = CharTokenizer(text)
    train, val = split(np.array(tok.encode(text)))
    model = TinyGPT(tok.vocab_size, d_model=64, n_heads=4, n_layers=2, max_seq_len=64)
    history = train_model(model, train, epochs=1, batch_size=16, seq_len=64, lr=3e-3,
                          val_data=val, warmup_steps=10, max_steps=100, eval_interval=50)
    assert history["step"] == list(range(1, 101))
    assert history["eval_step"] == [50, 100]
    assert 0 < history["eval_seconds"][0] < history["eval_seconds"][1]
    initial = math.log(tok.vocab_size)
    assert initial - history["val_loss"][-1] > 1.0
    assert history["val_perplexity"][-1] == pytest.approx(math.exp(history["val_loss"][-1]))
    assert np.mean(history["train_loss"][-10:]) < np.mean(history["train_loss"][:10]) - 1.0
    for key in ("lr", "grad_norm", "tokens_per_sec"):
        assert len(history[key]) == 100 and all(v > 0 for v in history[key])


@pytest.mark.parametrize("last_batch,per_epoch", [("keep", 7), ("drop", 6)])
def test_epochs_set_the_step_count_and_the_callback_sees_every_step(last_batch, per_epoch):
    tokens = np.random.default_rng(0).integers(0, 5, 1000)
    model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)
    seen = []
    history = train_model(model, tokens, epochs=2, batch_size=10, seq_len=16,
                          last_batch=last_batch, callback=lambda info: seen.append(info["step"]))
    assert (1000 - 16) // 16 == 61  # windows per epoch: 6 full batches of 10 and one of 1
    assert history["step"][-1] == 2 * per_epoch
    assert seen == history["step"]
    assert history["val_loss"] == []


def test_the_optimizer_settings_reach_the_optimizer():
    tokens = np.zeros(100, dtype=int)
    model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)
    options = dict(seq_len=16, lr=2e-3, muon_lr=5e-3, muon_momentum=0.9)
    assert isinstance(Trainer(model, tokens, TrainConfig(**options)).optimizer, AdamW)
    muon = Trainer(model, tokens, TrainConfig(optimizer="muon", **options)).optimizer
    assert isinstance(muon, Muon) and (muon.lr_ratio, muon.mu) == (2.5, 0.9)
    assert Trainer(model, tokens, TrainConfig(optimizer="muon", seq_len=16)).optimizer.lr_ratio == 1


def test_muon_training_is_bitwise_identical_on_one_and_two_threads():
    """Muon (and dropping the short batch, past an epoch's end): batches of 8 x 48 = 384 rows,
    which the kernels share between two threads, and 8 matrices, which Muon's update shares
    between them. One thread, two, and one again give the same bits, and the loss falls."""
    tokens = np.arange(5000) * 3 % 11  # a pattern to learn; 103 windows of 48: 12 batches
    previous, runs = ops.get_num_threads(), []
    try:
        for n in (1, 2, 1):
            ops.set_num_threads(n)
            model = TinyGPT(11, d_model=32, n_heads=4, n_layers=2, max_seq_len=48)
            history = train_model(model, tokens, batch_size=8, seq_len=48, max_steps=14,
                                  lr=1e-2, warmup_steps=3, optimizer="muon", last_batch="drop",
                                  progress=False)
            runs.append((model.params.copy(), history))
    finally:
        ops.set_num_threads(previous)
    (params, history), others = runs[0], runs[1:]
    assert history["train_loss"][-1] < history["train_loss"][0] - 0.5
    for other_params, other in others:
        np.testing.assert_array_equal(other_params, params)
        for key in ("train_loss", "grad_norm", "lr"):
            assert other[key] == history[key], key


def test_same_seed_gives_the_same_run():
    tokens = np.random.default_rng(0).integers(0, 5, 500)

    def run():
        model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)
        train_model(model, tokens, epochs=1, batch_size=4, seq_len=16, max_steps=5, seed=3)
        return model.params

    np.testing.assert_array_equal(run(), run())


def test_the_weight_average_is_what_is_evaluated_and_what_train_model_leaves():
    tokens = np.random.default_rng(0).integers(0, 5, 2000)
    train, val = tokens[:1500], tokens[1500:]

    def fresh():
        return TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)

    options = dict(epochs=1, batch_size=4, seq_len=16, lr=1e-2, max_steps=20, ema_decay=0.8)
    trainer = Trainer(fresh(), train, TrainConfig(**options), val_data=val)
    history = trainer.run()
    trained = trainer.model.params.copy()
    assert not np.array_equal(trainer.average.avg, trained)
    with trainer.eval_weights():
        assert evaluate(trainer.model, val, 4, 16) == history["val_loss"][-1]
    np.testing.assert_array_equal(trainer.model.params, trained)
    assert evaluate(trainer.model, val, 4, 16) != history["val_loss"][-1]

    model = fresh()
    assert train_model(model, train, val_data=val, **options)["val_loss"] == history["val_loss"]
    np.testing.assert_array_equal(model.params, trainer.average.avg)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_loss_stops_the_run():
    tokens = np.random.default_rng(0).integers(0, 5, 500)
    model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)
    model.p["head_w"][0, 0] = np.inf
    with pytest.raises(FloatingPointError, match="loss"):
        train_model(model, tokens, batch_size=4, seq_len=16, max_steps=3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(seq_len=17), "max_seq_len"),
    (dict(lr=0.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(max_steps=0), "max_steps"),
    (dict(eval_interval=0), "eval_interval"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(max_grad_norm=-1.0), "max_grad_norm"),
    (dict(ema_decay=-0.5), "ema_decay"),
    (dict(ema_decay=1.0), "ema_decay must lie in"),
    (dict(batch_size=2.5), "batch_size must be an integer"),
    (dict(optimizer="sgd"), "optimizer must be one of adamw, muon; got 'sgd'"),
    (dict(muon_momentum=1.0), "muon_momentum must lie in"),
    (dict(muon_lr=0.0), "muon_lr must be a finite number > 0"),
    (dict(last_batch="fill"), "last_batch must be one of keep, drop"),
    (dict(batch_size=31, last_batch="drop"), "30 windows of 16, fewer than batch_size 31"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    tokens = np.random.default_rng(0).integers(0, 5, 500)
    model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)
    args = dict(epochs=1, batch_size=4, seq_len=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        train_model(model, tokens, **args)


def test_bad_data_is_rejected():
    model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)
    with pytest.raises(ValueError, match="outside"):
        train_model(model, np.arange(100), seq_len=16)
    with pytest.raises(ValueError, match="at least"):
        train_model(model, np.zeros(10, dtype=int), seq_len=16)
    with pytest.raises(ValueError, match="val_data"):
        train_model(model, np.zeros(100, dtype=int), seq_len=16, val_data=np.zeros(5, dtype=int))
    with pytest.raises(TypeError):
        train_model("not a model", np.zeros(100, dtype=int))


def test_train_model_shows_a_progress_bar_unless_told_not_to(capsys):
    tokens = np.random.default_rng(0).integers(0, 5, 500)

    def train(**options):
        model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)
        train_model(model, tokens, batch_size=4, seq_len=16, max_steps=3, **options)
        return capsys.readouterr().err

    shown = train()
    assert "3/3" in shown and "loss" in shown
    assert train(progress=False) == ""


def test_unknown_train_model_options_name_the_valid_ones():
    model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)
    with pytest.raises(TypeError, match="'learning_rate'.*warmup_steps"):
        train_model(model, np.zeros(100, dtype=int), seq_len=16, learning_rate=0.1)


def test_eval_batches_caps_the_validation_pass_at_its_first_batches():
    tokens = np.random.default_rng(0).integers(0, 5, 3000)
    model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=16)
    val = tokens[2000:]
    first_two = val[:2 * 4 * 16 + 1]  # 2 batches of 4 windows of 16
    assert evaluate(model, val, 4, 16, max_batches=2) == evaluate(model, first_two, 4, 16)
    assert evaluate(model, val, 4, 16, max_batches=2) != evaluate(model, val, 4, 16)
    history = train_model(model, tokens[:2000], batch_size=4, seq_len=16, max_steps=2,
                          val_data=val, eval_batches=2, progress=False)
    assert history["val_loss"][-1] == evaluate(model, val, 4, 16, max_batches=2)
