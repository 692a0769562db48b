"""Data-parallel training over MPI, for real: `mpiexec -n 2 python -m tinygpt.train`.

Needs the mpi extra (mpi4py and an MPI with mpiexec); skipped without it, except in CI
(TINYGPT_REQUIRE_MPI=1), where a missing MPI fails.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygpt import load_checkpoint

from optional import import_or_skip

SMALL = ["--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--seq-len", "16",
         "--batch-size", "8", "--sample-tokens", "5", "--eval-interval", "25"]


@pytest.fixture(scope="module")
def mpiexec():
    import_or_skip("TINYGPT_REQUIRE_MPI", "mpi4py")
    path = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    if not Path(path).exists():
        pytest.fail("mpi4py is installed but there is no mpiexec")
    return path


@pytest.fixture(scope="module")
def text(tmp_path_factory, shakespeare_text):
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(shakespeare_text[:30_000])
    return path


def train(out, text, *args, ranks=1, mpiexec=None, env=None):
    """tinygpt train into ``out``, under mpiexec with ``ranks`` ranks when given one."""
    command = [sys.executable, "-m", "tinygpt.train", "--data", str(text), *SMALL, *args,
               "--out-dir", str(out)]
    if mpiexec is not None:
        command = [mpiexec, "-n", str(ranks), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def losses(out):
    return np.array(json.loads((Path(out) / "history.json").read_text())["train_loss"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text, mpiexec):
    """50 steps of the same global batch: 2 ranks x 1 thread (twice), 1 rank x 2 threads,
    1 rank with --grad-accum 2 (twice)."""
    root = tmp_path_factory.mktemp("runs")
    plan = {"2x1": (2, ["--threads", "1"]), "2x1 again": (2, ["--threads", "1"]),
            "1x2": (1, ["--threads", "2"]), "accum": (1, ["--grad-accum", "2"]),
            "accum again": (1, ["--grad-accum", "2"])}
    results = {}
    for name, (ranks, args) in plan.items():
        out = root / name.replace(" ", "_")
        done = train(out, text, "--max-steps", "50", *args, ranks=ranks, mpiexec=mpiexec)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        results[name] = out, done
    return results


def test_two_ranks_train_as_one_process_with_the_same_global_batch(runs):
    one, two, accum = (losses(runs[name][0]) for name in ("1x2", "2x1", "accum"))
    assert len(one) == len(two) == len(accum) == 50
    # the same batches split two ways: equal up to the rounding of a sum in another order
    np.testing.assert_allclose(two, one, rtol=1e-5)
    np.testing.assert_allclose(accum, one, rtol=1e-5)
    assert not np.array_equal(two, one)  # the split is real: not one process in disguise
    # two halves weighted by 1/2 and added: the Allreduce of two ranks adds them as
    # grad_accum 2 does in one process, so these two agree to the bit
    np.testing.assert_array_equal(two, accum)


@pytest.mark.parametrize("name", ["2x1", "accum"])
def test_each_layout_is_bitwise_repeatable(runs, name):
    first, second = (load_checkpoint(runs[n][0] / "ckpt.npz") for n in (name, f"{name} again"))
    np.testing.assert_array_equal(first[0].params, second[0].params)
    np.testing.assert_array_equal(losses(runs[name][0]), losses(runs[f"{name} again"][0]))


def test_only_rank_0_prints_and_writes_the_single_process_files(runs):
    out, done = runs["2x1"]
    assert done.stdout.count("tinygpt: ") == 1 and "2 ranks x 1 threads" in done.stdout
    assert done.stdout.count("final val loss") == 1 and done.stderr.count("error") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in runs["1x2"][0].iterdir())
    model, _, meta, optim = load_checkpoint(out / "ckpt.npz")
    assert meta["step"] == 50 and int(optim["t"]) == 50


def test_a_run_stopped_by_ctrl_c_resumes_on_two_ranks_bitwise_and_on_one(tmp_path, text, mpiexec,
                                                                         runs):
    stopped = tmp_path / "stopped"
    command = [mpiexec, "-n", "2", sys.executable, "-m", "tinygpt.train", "--data", str(text),
               *SMALL, "--max-steps", "50", "--threads", "1", "--out-dir", str(stopped)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # Ctrl-C to mpiexec once training is under way
        if line.startswith("step"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.count("Ctrl-C: stopping") == 1  # rank 0 alone says it
    at = load_checkpoint(stopped / "ckpt.npz")[2]["step"]
    assert 0 < at < 50
    shutil.copytree(stopped, tmp_path / "copy")
    resumed = train(stopped, text, "--resume", ranks=2, mpiexec=mpiexec)
    assert resumed.returncode == 0 and f"resuming at step {at} of 50" in resumed.stdout
    straight = load_checkpoint(runs["2x1"][0] / "ckpt.npz")
    final = load_checkpoint(stopped / "ckpt.npz")
    np.testing.assert_array_equal(final[0].params, straight[0].params)
    np.testing.assert_array_equal(final[3]["v"], straight[3]["v"])
    np.testing.assert_array_equal(losses(stopped), losses(runs["2x1"][0]))
    on_one = train(tmp_path / "copy", text, "--resume")  # the same file, one process
    assert on_one.returncode == 0, on_one.stderr
    np.testing.assert_allclose(losses(tmp_path / "copy"), losses(stopped), rtol=1e-5)


def test_a_failing_rank_ends_the_job_with_its_message(tmp_path, mpiexec):
    """Rank 1 finds no data where rank 0 does: the job ends, saying so, instead of hanging."""
    shared = os.environ["TINYGPT_DATA"] if "TINYGPT_DATA" in os.environ else None
    if shared is None:
        pytest.skip("needs TINYGPT_DATA to give the ranks different data paths")
    rank_args = [sys.executable, "-m", "tinygpt.train", *SMALL, "--max-steps", "5",
                 "--out-dir", str(tmp_path / "o")]
    command = [mpiexec, "-n", "1", "-env", "TINYGPT_DATA", shared, *rank_args, ":",
               "-n", "1", "-env", "TINYGPT_DATA", str(tmp_path / "nowhere.txt"), *rank_args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "error (rank 1 of 2): FileNotFoundError" in done.stderr
    assert "nowhere.txt" in done.stderr


def test_ranks_that_diverge_are_stopped_at_the_next_evaluation(tmp_path, text, mpiexec):
    """A rank whose weights drift (here: one nudged on rank 1 after step 3) is caught by the
    checksum compared at every evaluation."""
    script = (
        "import sys\n"
        "from tinygpt import train, trainer\n"
        "step = trainer.Trainer.train_step\n"
        "def drifting(self, x, y):\n"
        "    result = step(self, x, y)\n"
        "    if self.group.rank == 1 and self.step == 3:\n"
        "        self.model.params[0] += 1e-3\n"
        "    return result\n"
        "trainer.Trainer.train_step = drifting\n"
        "sys.exit(train.main(sys.argv[1:]))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([mpiexec, "-n", "2", sys.executable, "-c", script, "--data", str(text),
                           *SMALL, "--max-steps", "20", "--eval-interval", "5",
                           "--checkpoint-interval", "2", "--out-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stderr
    # no --threads: each rank takes its share of the CPUs this machine lets it use
    assert f"2 ranks x {max(1, len(os.sched_getaffinity(0)) // 2)} threads" in done.stdout
    assert "ranks [1] hold parameters that differ from rank 0's at step 5" in done.stderr
    assert load_checkpoint(tmp_path / "o" / "ckpt.npz")[2]["step"] < 5  # the last good one


def test_a_batch_that_does_not_divide_is_refused_naming_the_three_numbers(tmp_path, text,
                                                                         mpiexec):
    done = train(tmp_path / "o", text, "--batch-size", "6", "--grad-accum", "2", ranks=2,
                 mpiexec=mpiexec)
    assert done.returncode == 2
    assert "batch_size 6 must divide by the number of ranks (2) times grad_accum (2)" \
        in done.stderr
    assert "Traceback" not in done.stderr


def test_without_mpiexec_training_never_imports_mpi4py(tmp_path, text):
    script = ("import sys\nfrom tinygpt import train\n"
              "code = train.main(sys.argv[1:])\n"
              "print('mpi4py imported' if 'mpi4py' in sys.modules else 'no mpi4py')\n"
              "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script, "--data", str(text), *SMALL,
                           "--max-steps", "2", "--out-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("no mpi4py") and "ranks" not in done.stdout
