"""``tinygpt train --resume`` continues bitwise where the run was stopped: right after an
evaluation, at an epoch boundary, and on another number of threads; with AdamW and every
epoch's short last batch, and with Muon, the short batches dropped and the learning rate
decayed to zero.

Each run is ``tinygpt.train.main`` in this process. The stop is asked for from the run's own
step callback, at a chosen step, by setting ``trainer.stop_requested``: what the Ctrl-C handler
does, so the trainer finishes that step, the command saves its checkpoint and returns 130. No
timing decides where a run stops. Dropout and the weight average are on, so the resumed run must
replay the masks and continue the average, and the resumed checkpoint must hold the bits of an
uninterrupted run's: parameters, optimizer moments (and Muon's momentum), trained weights, the
data stream's position and the history.
"""
import contextlib
import dataclasses
import io
import json
import math

import numpy as np
import pytest

from tinygpt import config, data, ops, train

SEQ_LEN, BATCH = 16, 4
TEXT_CHARS = 260  # 234 training characters: 13 windows of 16, batches of 4, 4, 4 and 1
EPOCHS, EVAL_INTERVAL = 3, 5
TIMING = ("tokens_per_sec", "eval_seconds")  # history entries that measure the machine


@dataclasses.dataclass(frozen=True)
class Recipe:
    optimizer: str
    last_batch: str
    min_lr_ratio: float
    steps_per_epoch: int  # 4 batches of 13 windows, or the 3 full ones

    @property
    def total_steps(self):
        return self.steps_per_epoch * EPOCHS


ADAMW_KEEP, MUON_DROP = Recipe("adamw", "keep", 0.1, 4), Recipe("muon", "drop", 0.0, 3)


def recipe_id(recipe):
    return f"{recipe.optimizer}-{recipe.last_batch}"


@pytest.fixture(scope="module", params=[ADAMW_KEEP, MUON_DROP], ids=recipe_id)
def recipe(request):
    return request.param


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, shakespeare_text):
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(shakespeare_text[:TEXT_CHARS], encoding="utf-8")
    train_ids, _ = data.split(np.arange(TEXT_CHARS))
    windows = data.windows_per_epoch(len(train_ids), SEQ_LEN)
    assert (math.ceil(windows / BATCH), windows // BATCH) == (4, 3)  # a short last batch
    return path


def flags(text_file, out, recipe, threads=1):
    return ["--data", str(text_file), "--out-dir", str(out), "--threads", str(threads),
            "--optimizer", recipe.optimizer, "--last-batch", recipe.last_batch,
            "--min-lr-ratio", str(recipe.min_lr_ratio),
            "--d-model", "16", "--n-heads", "2", "--n-layers", "2",
            "--seq-len", str(SEQ_LEN), "--batch-size", str(BATCH), "--epochs", str(EPOCHS),
            "--eval-interval", str(EVAL_INTERVAL), "--checkpoint-interval", "100",
            "--lr", "3e-3", "--warmup-steps", "2", "--max-grad-norm", "0.5",
            "--dropout", "0.1", "--ema-decay", "0.9", "--sample-tokens", "8"]


@pytest.fixture(autouse=True, scope="module")
def keep_threads():
    """The command sets the process's kernel threads; give the other tests theirs back."""
    previous = ops.get_num_threads()
    yield
    ops.set_num_threads(previous)


@contextlib.contextmanager
def stop_after(step):
    """Inside the block, a ``tinygpt train`` run stops after ``step``: its step callback sets
    ``stop_requested`` there, as Ctrl-C does. Yields a dict that receives that step's info and
    how many batches of the epoch the trainer had used."""
    original = train._Run.on_step
    seen = {}

    def on_step(run, info):
        original(run, info)
        if info["step"] == step:
            seen.update(info, batches_done_in_epoch=run.trainer.batches_done_in_epoch)
            run.trainer.stop_requested = True

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train._Run, "on_step", on_step)
        yield seen


def read_run(out):
    """(every array of ckpt.npz, its trainer state, history.json) of the run in ``out``."""
    with np.load(out / "ckpt.npz") as f:
        arrays = {name: f[name] for name in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    history = json.loads((out / "history.json").read_text())
    return arrays, meta["extra"]["trainer"], history


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, text_file, recipe):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert train.main(flags(text_file, out, recipe)) == 0
    return read_run(out)


def assert_same_run(out, uninterrupted, recipe):
    arrays, state, history = read_run(out)
    ref_arrays, ref_state, ref_history = uninterrupted
    # params is the weight average; the trained weights and AdamW's moments ride along
    assert {"params", "optim_m", "optim_v", "optim_t", "optim_trained_params",
            "optim_average_t"} <= set(arrays)
    assert ("optim_momentum" in arrays) == (recipe.optimizer == "muon")
    assert set(arrays) == set(ref_arrays)
    for name, value in ref_arrays.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)
    for key in ("step", "epoch_rng_state", "batches_done_in_epoch"):
        assert state[key] == ref_state[key], key
    assert state["history"] == history  # the checkpoint's copy and history.json agree
    assert history["step"] == list(range(1, recipe.total_steps + 1))
    for key, values in ref_history.items():
        if key not in TIMING:
            assert history[key] == values, key  # floats from JSON: equal means the same bits


def stop_and_resume(text_file, out, recipe, step, capsys, threads=1, resume_threads=1,
                    before_resume=None):
    """Run until ``step``, check the stop, (call ``before_resume(out)``,) then resume; returns
    the info of the last step before the stop and the stopped run's trainer state."""
    with stop_after(step) as seen:
        assert train.main(flags(text_file, out, recipe, threads)) == 130
    assert "stopped early; continue with: tinygpt train --resume" in capsys.readouterr().out
    arrays, state, history = read_run(out)
    assert state["step"] == step and history["step"][-1] == step and int(arrays["optim_t"]) == step
    if before_resume is not None:
        before_resume(out)
    assert train.main(["--resume", "--out-dir", str(out), "--threads", str(resume_threads)]) == 0
    resumed = capsys.readouterr().out
    assert f"resuming at step {step} of {recipe.total_steps}" in resumed
    assert f"| {resume_threads} threads |" in resumed
    return seen, state


def test_resume_right_after_an_evaluation(tmp_path, text_file, recipe, uninterrupted, capsys):
    seen, state = stop_and_resume(text_file, tmp_path, recipe, EVAL_INTERVAL, capsys)
    assert "val_loss" in seen  # the stop came on the evaluation's step, after it
    assert state["history"]["eval_step"] == [EVAL_INTERVAL]
    assert_same_run(tmp_path, uninterrupted, recipe)


def test_resume_at_an_epoch_boundary(tmp_path, text_file, recipe, uninterrupted, capsys):
    seen, state = stop_and_resume(text_file, tmp_path, recipe, recipe.steps_per_epoch, capsys)
    # the stopped step took the epoch's last batch (the short one, or the last full one); the
    # checkpoint's stream position is the start of the next epoch: none of its batches used, a
    # new shuffle's generator state
    assert seen["batches_done_in_epoch"] == recipe.steps_per_epoch and "val_loss" not in seen
    assert state["batches_done_in_epoch"] == 0
    assert state["epoch_rng_state"] != np.random.default_rng(0).bit_generator.state
    assert_same_run(tmp_path, uninterrupted, recipe)


def test_resume_on_another_number_of_threads(tmp_path, text_file, recipe, uninterrupted, capsys):
    seen, state = stop_and_resume(text_file, tmp_path, recipe, recipe.steps_per_epoch + 2,
                                  capsys, threads=1, resume_threads=2)
    assert state["batches_done_in_epoch"] == 2  # mid-epoch
    assert_same_run(tmp_path, uninterrupted, recipe)


def forget_new_settings(out):
    """Rewrite ckpt.npz as a version before Muon wrote it: no optimizer, muon_momentum,
    last_batch or min_lr_ratio in its settings (AdamW, every short batch and a cosine down to a
    tenth were all there was)."""
    with np.load(out / "ckpt.npz") as f:
        arrays = {name: f[name] for name in f.files}
    meta = json.loads(str(arrays["meta"]))
    for name in ("optimizer", "muon_momentum", "last_batch", "min_lr_ratio"):
        del meta["extra"]["config"][name]
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (out / "ckpt.npz").write_bytes(buffer.getvalue())


@dataclasses.dataclass(frozen=True)
class MuonByDefault(config.RunConfig):
    """The command line's settings if Muon, dropping and a decay to zero became its defaults."""
    optimizer: str = config._setting("muon", "")
    last_batch: str = config._setting("drop", "")
    min_lr_ratio: float = config._setting(0.0, "")


@pytest.mark.parametrize("recipe", [ADAMW_KEEP], indirect=True, ids=recipe_id)
def test_a_checkpoint_from_before_muon_resumes_as_it_ran(tmp_path, text_file, recipe,
                                                         uninterrupted, capsys, monkeypatch):
    """Even after the defaults change: a checkpoint that does not name its optimizer and
    last-batch rule ran AdamW and kept the short batches."""
    def before_resume(out):
        forget_new_settings(out)
        monkeypatch.setattr(train, "RunConfig", MuonByDefault)

    stop_and_resume(text_file, tmp_path, recipe, 3, capsys, before_resume=before_resume)
    assert_same_run(tmp_path, uninterrupted, recipe)
