"""Faults end cleanly and lose nothing.

A write of ``tinygpt train`` that fails (disk full, permission denied, a file where a folder
should be) stops the run with one line naming the file and the reason, leaves no temporary
file and keeps the last checkpoint loadable. A training process killed with SIGKILL resumes to
the same bits as a run never killed. Bad input files are refused with their names and without
NumPy's advice to unpickle them.

Faults are driven deterministically: writes fail at a chosen write of a chosen file, and kills
happen at a chosen output line or at a chosen write, never after a sleep.
"""
import errno
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tinygpt import CheckpointError, files, load_checkpoint, load_dataset, load_text, ops, train

TINY = ["--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--seq-len", "16",
        "--batch-size", "4", "--sample-tokens", "5", "--threads", "1"]
OUTPUTS = ("ckpt.npz", "best.npz", "history.json", "loss.png", "samples.txt")
TIMINGS = ("tokens_per_sec", "eval_seconds")  # the only history entries a rerun may change


@pytest.fixture(scope="module")
def text(tmp_path_factory, shakespeare_text):
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(shakespeare_text[:20_000])
    return path


@pytest.fixture(autouse=True)
def keep_threads():
    """train.main(--threads 1) in this process must not change the threads of later tests."""
    threads = ops.get_num_threads()
    yield
    ops.set_num_threads(threads)


def patched_os(**overrides):
    """The os module as tinygpt.files sees it, with some functions replaced."""
    return types.SimpleNamespace(**{**{k: getattr(os, k) for k in dir(os)
                                       if not k.startswith("__")}, **overrides})


def temp_files(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


def stderr_lines(capsys):
    return capsys.readouterr().err.strip().splitlines()


# ---------------------------------------------------------------- failing writes, in process

class FailingWrites:
    """Make tinygpt's atomic writes of one file (by name) fail from its ``nth`` write on.

    ``at="fsync"`` raises ``error`` once the data went to the temporary file (a disk that fills
    up: the write, flush or fsync fails); ``at="create"`` raises it when the temporary file is
    created (a folder the user may not write to). Only tinygpt.files sees the patched os and
    tempfile; other code keeps the real ones.
    """

    def __init__(self, monkeypatch, name, nth, error, at="fsync"):
        self.name, self.nth, self.error, self.at = name, nth, error, at
        self.writes = Counter()
        self.current = None
        monkeypatch.setattr(files, "tempfile", types.SimpleNamespace(mkstemp=self.mkstemp))
        monkeypatch.setattr(files, "os", patched_os(fsync=self.fsync))

    def failing(self):
        return self.current == self.name and self.writes[self.name] >= self.nth

    def mkstemp(self, dir, prefix, suffix):
        target = prefix[1:-1]  # ".ckpt.npz." -> "ckpt.npz"
        self.current = target
        self.writes[target] += 1
        if self.at == "create" and self.failing():
            raise self.error
        return tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)

    def fsync(self, fd):
        if self.at == "fsync" and self.failing() and stat.S_ISREG(os.fstat(fd).st_mode):
            raise self.error
        os.fsync(fd)


WRITE_RUN = ["--max-steps", "12", "--eval-interval", "6", "--checkpoint-interval", "4", *TINY]
# The writes of WRITE_RUN, in order: step 4: ckpt 1, history 1; step 6 (an evaluation):
# samples 1, best 1, ckpt 2, history 2, loss.png 1; step 8: ckpt 3, history 3; step 12
# (evaluation): samples 2, best 2, ckpt 4, history 4, loss.png 2; the end: final sample, then
# ckpt 5, history 5, loss.png 3, samples 3.


@pytest.mark.parametrize("name,nth,kept_step", [
    ("ckpt.npz", 1, None),      # the first checkpoint: nothing to keep, nothing half-written
    ("ckpt.npz", 3, 6),
    ("history.json", 2, 6),     # ckpt.npz of step 6 went first
    ("loss.png", 1, 6),         # the plot of the first evaluation
    ("best.npz", 1, 4),         # best.npz goes before ckpt.npz at an evaluation
    ("samples.txt", 1, 4),      # the sample of the first evaluation
    ("samples.txt", 3, 12),     # the final sample, after the training
])
def test_a_disk_that_fills_up_stops_the_run_with_one_line_and_keeps_the_checkpoint(
        tmp_path, text, monkeypatch, capsys, name, nth, kept_step):
    out = tmp_path / "run"
    FailingWrites(monkeypatch, name, nth, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    code = train.main(["--data", str(text), "--out-dir", str(out), *WRITE_RUN])
    assert code == 1
    assert stderr_lines(capsys) == [f"error: cannot write {out / name}: No space left on device"]
    assert temp_files(out) == []
    if kept_step is None:
        assert not (out / "ckpt.npz").exists()
    else:
        assert load_checkpoint(out / "ckpt.npz")[2]["step"] == kept_step
    if name == "samples.txt" and nth > 1:  # the file that failed is as the last write left it
        assert (out / "samples.txt").read_text().count("=== step") == nth - 1


@pytest.mark.parametrize("name,nth,kept_step", [("ckpt.npz", 2, 4), ("samples.txt", 1, 4)])
def test_permission_denied_stops_the_run_with_one_line_and_keeps_the_checkpoint(
        tmp_path, text, monkeypatch, capsys, name, nth, kept_step):
    # the tests run as root, whom chmod does not stop: the refusal is simulated where the
    # operating system gives it, at the creation of the (temporary) file
    out = tmp_path / "run"
    FailingWrites(monkeypatch, name, nth, PermissionError(errno.EACCES, "Permission denied"),
                  at="create")
    code = train.main(["--data", str(text), "--out-dir", str(out), *WRITE_RUN])
    assert code == 1
    assert stderr_lines(capsys) == [f"error: cannot write {out / name}: Permission denied"]
    assert temp_files(out) == []
    assert load_checkpoint(out / "ckpt.npz")[2]["step"] == kept_step


def test_ctrl_c_during_a_checkpoint_write_keeps_the_last_checkpoint_whole(
        tmp_path, text, monkeypatch, capsys):
    out = tmp_path / "run"
    FailingWrites(monkeypatch, "ckpt.npz", 2, KeyboardInterrupt())  # the second Ctrl-C's effect
    try:
        code = train.main(["--data", str(text), "--out-dir", str(out), *WRITE_RUN])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt came out of train.main")
    assert code == 130
    assert stderr_lines(capsys) == [f"interrupted: {out / 'ckpt.npz'} holds step 4"]
    assert temp_files(out) == []
    assert load_checkpoint(out / "ckpt.npz")[2]["step"] == 4


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path,
                                                                              monkeypatch):
    path = tmp_path / "f.bin"
    files.atomic_write_bytes(path, b"old")
    FailingWrites(monkeypatch, "f.bin", 1, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(files.WriteError) as err:
        files.atomic_write_bytes(path, b"new")
    assert str(err.value) == f"cannot write {path}: No space left on device"
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert err.value.filename == str(path)
    assert path.read_bytes() == b"old" and temp_files(tmp_path) == []


# ---------------------------------------------------------------- a file where a folder goes

def test_an_out_dir_below_a_file_fails_before_training(tmp_path, text):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    result = subprocess.run([sys.executable, "-m", "tinygpt.train", "--data", str(text),
                             "--out-dir", str(blocker / "run"), *WRITE_RUN],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: cannot write {blocker / 'run'}: {blocker} is a file, not a folder"]
    assert result.stdout == ""  # not a step trained, not a line printed
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.parametrize("case", ["out-dir is a file", "ckpt.npz is a folder"])
def test_an_unwritable_out_dir_fails_before_the_first_step(tmp_path, text, monkeypatch, capsys,
                                                           case):
    from tinygpt import trainer

    def no_training(self, x, y):
        raise AssertionError("a training step ran before the out dir was checked")

    monkeypatch.setattr(trainer.Trainer, "train_step", no_training)
    out = tmp_path / "run"
    if case == "out-dir is a file":
        out.write_text("")
        expected = f"error: cannot write {out}: it is a file, not a folder"
    else:
        (out / "ckpt.npz").mkdir(parents=True)
        expected = f"error: cannot write {out / 'ckpt.npz'}: it is a folder"
    assert train.main(["--data", str(text), "--out-dir", str(out), *WRITE_RUN]) == 2
    assert stderr_lines(capsys) == [expected]


# ---------------------------------------------------------------- SIGKILL at several moments

KILL_RUN = ["--max-steps", "30", "--eval-interval", "10", "--checkpoint-interval", "2",
            "--dropout", "0.1", "--ema-decay", "0.9", *TINY]  # masks and average must replay

# python -c: run tinygpt.train, and SIGKILL the process itself just before the nth rename of
# a temporary file onto argv[1] (the data written and fsynced: the last moment before the file
# changes), so that the kill falls inside that write every time
KILL_INSIDE_A_WRITE = """
import os, signal, sys, types
from tinygpt import files, train
name, nth = sys.argv[1], int(sys.argv[2])
seen = 0
def replace(src, dst):
    global seen
    if os.path.basename(dst) == name:
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace(src, dst)
files.os = types.SimpleNamespace(**{**{k: getattr(os, k) for k in dir(os)
                                    if not k.startswith("__")}, "replace": replace})
sys.exit(train.main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, text):
    out = tmp_path_factory.mktemp("uninterrupted")
    threads = ops.get_num_threads()
    try:
        assert train.main(["--data", str(text), "--out-dir", str(out), *KILL_RUN]) == 0
    finally:
        ops.set_num_threads(threads)
    return out


def kill_at_line(out, text, starts):
    """Run tinygpt.train and SIGKILL it as soon as it prints a line starting with ``starts``."""
    proc = subprocess.Popen([sys.executable, "-m", "tinygpt.train", "--data", str(text),
                             "--out-dir", str(out), *KILL_RUN],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith(starts):
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    return proc.wait(timeout=60)


def kill_inside_write(out, text, name, nth):
    proc = subprocess.run([sys.executable, "-c", KILL_INSIDE_A_WRITE, name, str(nth),
                           "--data", str(text), "--out-dir", str(out), *KILL_RUN],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode


def comparable(out):
    """What a run leaves in its folder, less the timings: checkpoint (parameters, optimizer
    state, trainer state, samples), best.npz, history.json and samples.txt."""
    model, _, meta, optim = load_checkpoint(out / "ckpt.npz")
    extra = meta["extra"]
    history = {k: v for k, v in extra["trainer"]["history"].items() if k not in TIMINGS}
    trainer_state = {k: v for k, v in extra["trainer"].items() if k not in ("history", "seconds")}
    saved_history = json.loads((out / "history.json").read_text())
    return {
        "files": sorted(p.name for p in out.iterdir()),
        "step": meta["step"], "params": model.params, "optim": optim,
        "history": history, "trainer": trainer_state, "samples": extra["samples"],
        "history.json": {k: v for k, v in saved_history.items() if k not in TIMINGS},
        "samples.txt": (out / "samples.txt").read_text(),
        "best": load_checkpoint(out / "best.npz")[0].params,
    }


@pytest.mark.parametrize("moment", [
    ("line", "eval step 10"),   # mid-run, at the first evaluation's writes
    ("line", "eval step 20"),
    ("line", "step    30/30"),  # the last step: its evaluation, the final sample and writes
    ("write", "ckpt.npz", 1),   # inside the first checkpoint write: nothing to resume yet
    ("write", "ckpt.npz", 5),   # inside step 10's checkpoint, after its sample and best.npz
    ("write", "best.npz", 2),   # inside step 20's best.npz
    ("write", "samples.txt", 4),  # inside the final sample's write, the run saved
])
def test_a_run_killed_at_any_moment_resumes_to_the_bits_of_an_uninterrupted_run(
        tmp_path, text, uninterrupted, capsys, moment):
    out = tmp_path / "killed"
    if moment[0] == "line":
        code = kill_at_line(out, text, moment[1])
    else:
        code = kill_inside_write(out, text, *moment[1:])
    assert code in (-signal.SIGKILL, 0)  # 0: the run ended before the kill reached it
    left = temp_files(out)
    if moment[0] == "write":  # a kill inside a write leaves that write's temporary file
        assert code == -signal.SIGKILL and len(left) == 1 and left[0].startswith(f".{moment[1]}.")
    assert len(left) <= 1
    capsys.readouterr()
    if moment == ("write", "ckpt.npz", 1):
        assert not (out / "ckpt.npz").exists()  # no checkpoint, and no half of one
        # nothing to resume: the run starts again, clearing what the kill left
        assert train.main(["--data", str(text), "--out-dir", str(out), *KILL_RUN]) == 0
        printed = capsys.readouterr().out
    else:
        step = load_checkpoint(out / "ckpt.npz")[2]["step"]  # loads, whatever the moment
        assert step > 0
        assert train.main(["--resume", "--out-dir", str(out), "--threads", "1"]) == 0
        printed = capsys.readouterr().out
        assert f"resuming at step {step} of 30" in printed
    if left:
        assert f"removed {left[0]}" in printed
    assert temp_files(out) == []
    got, expected = comparable(out), comparable(uninterrupted)
    for key in ("params", "best"):
        np.testing.assert_array_equal(got.pop(key), expected.pop(key))
    got_optim, expected_optim = got.pop("optim"), expected.pop("optim")
    assert sorted(got_optim) == sorted(expected_optim)
    for key in got_optim:
        np.testing.assert_array_equal(got_optim[key], expected_optim[key])
    assert got == expected


# ---------------------------------------------------------------- files that are not what they say

def object_npz(path):
    np.savez(path, meta=np.array([{"config": {}}], dtype=object), vocab=np.array("ab"),
             params=np.zeros(3))


def pickle_npz(path):
    path.write_bytes(pickle.dumps({"params": [0.0, 1.0]}))


@pytest.mark.parametrize("make", [object_npz, pickle_npz])
def test_a_file_holding_pickled_objects_is_refused_without_advice_to_unpickle_it(tmp_path, make):
    path = tmp_path / "model.npz"
    make(path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "pickled" in message.lower()
    for advice in ("allow_pickle", "pickle.load", "trust", "unsafe"):
        assert advice not in message
    result = subprocess.run([sys.executable, "-m", "tinygpt.eval", "--checkpoint", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "allow_pickle" not in result.stderr and str(path) in result.stderr


def bad_data(tmp_path, kind):
    path = tmp_path / f"{kind}.txt"
    if kind == "latin-1":
        path.write_bytes("Roméo et Juliette\n".encode("latin-1") * 50)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    return path


@pytest.mark.parametrize("kind,reason", [("latin-1", "not UTF-8"), ("empty", "empty"),
                                         ("folder", "a folder")])
def test_a_bad_data_file_is_named_by_the_api_and_the_commands(tmp_path, kind, reason, capsys):
    path = bad_data(tmp_path, kind)
    for load in (load_text, load_dataset):
        with pytest.raises((ValueError, OSError)) as err:
            load(path)
        assert str(path) in str(err.value) and reason in str(err.value)
    assert train.main(["--data", str(path), "--out-dir", str(tmp_path / "o"), *TINY]) == 2
    [line] = stderr_lines(capsys)
    assert line.startswith("error: ") and str(path) in line and reason in line
    assert not (tmp_path / "o").exists()  # refused before the out dir was made
    from tinygpt import eval as eval_command

    checkpoint = tmp_path / "model" / "ckpt.npz"
    if not checkpoint.exists():
        small = tmp_path / "small.txt"
        small.write_text("to be or not to be, that is the question\n" * 20)
        assert train.main(["--data", str(small), "--out-dir", str(checkpoint.parent),
                           "--max-steps", "1", *TINY]) == 0
        capsys.readouterr()
    assert eval_command.main(["--checkpoint", str(checkpoint), "--data", str(path)]) == 2
    [line] = stderr_lines(capsys)
    assert line.startswith("error: ") and str(path) in line and reason in line
