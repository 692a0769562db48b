import os
import stat

import numpy as np
import pytest

from tinygpt import CharTokenizer, CheckpointError, TinyGPT, load_checkpoint, save_checkpoint
from tinygpt.optim import AdamW, WeightAverage


def make():
    tok = CharTokenizer("hello, world!\n")
    model = TinyGPT(tok.vocab_size, d_model=16, n_heads=2, n_layers=2, max_seq_len=8, seed=4,
                    dropout=0.15)  # a float in the config: it must come back as it went in
    return model, tok


def test_round_trip_gives_identical_logits_and_optimizer_state(tmp_path):
    model, tok = make()
    opt = AdamW(model.params, model.grads, model.decay_mask())
    x = np.array([[1, 2, 3, 4]])
    model.loss(x, x)
    model.backward()
    opt.step(1e-3)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, tok, opt, step=7, extra={"note": "hi"})
    loaded, loaded_tok, meta, opt_state = load_checkpoint(path)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    assert loaded.config == model.config and loaded.dtype == model.dtype
    assert loaded_tok.chars == tok.chars
    assert meta["step"] == 7 and meta["extra"] == {"note": "hi"}
    np.testing.assert_array_equal(opt_state["m"], opt.m)
    assert int(opt_state["t"]) == 1
    with np.load(path, allow_pickle=False) as f:  # loadable without pickle
        assert "params" in f.files


@pytest.mark.parametrize("arch", [dict(position="rotary"), dict(mlp="relu2")])
def test_a_checkpoint_records_the_architecture_options(tmp_path, arch):
    model = TinyGPT(5, d_model=8, n_heads=2, n_layers=1, max_seq_len=8, seed=1, **arch)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, CharTokenizer("abcde"))
    loaded, _, _, _ = load_checkpoint(path)
    assert loaded.config == model.config
    x = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_with_a_weight_average_params_are_the_average_and_the_trained_weights_ride_along(tmp_path):
    model, tok = make()
    opt = AdamW(model.params, model.grads, model.decay_mask())
    average = WeightAverage(model.params, 0.5)
    model.params += 1.0
    average.update()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, tok, opt, average=average)
    loaded, _, _, opt_state = load_checkpoint(path)
    np.testing.assert_array_equal(loaded.params, average.avg)
    np.testing.assert_array_equal(opt_state["trained_params"], model.params)
    assert int(opt_state["average_t"]) == 1 and not np.array_equal(average.avg, model.params)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.npz")


@pytest.mark.parametrize("cut", [0, 10, 0.5, -20])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, cut):
    model, tok = make()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, tok)
    raw = path.read_bytes()
    n = int(len(raw) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(raw) + cut)
    path.write_bytes(raw[:n])
    with pytest.raises(CheckpointError, match="not a readable tinygpt checkpoint"):
        load_checkpoint(path)


def test_foreign_npz_is_a_clear_error(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_save_leaves_no_temporary_files_and_replaces_atomically(tmp_path):
    model, tok = make()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, tok, step=1)
    save_checkpoint(path, model, tok, step=2)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
    assert load_checkpoint(path)[2]["step"] == 2


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_are_written_with_the_users_umask(tmp_path, umask):
    model, tok = make()
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ckpt.npz", model, tok)
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "ckpt.npz").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_a_folder_or_a_single_array_is_no_checkpoint_and_says_what_it_is(tmp_path):
    folder = tmp_path / "ckpt.npz"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(folder)
    single = tmp_path / "array.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(CheckpointError, match=r"single NumPy array \(\.npy\)"):
        load_checkpoint(single)
