"""The command lines, run as a user runs them: in a subprocess."""
import json
import os
import signal
import subprocess
import sys

import numpy as np

import pytest

from tinygpt import load_checkpoint


def run(module, *args, env=None):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_path):
    """The default command line, cut to 5 steps."""
    out = tmp_path_factory.mktemp("run")
    result = run("tinygpt.train", "--max-steps", "5", "--eval_interval", "5",
                 "--out-dir", str(out), "--sample-tokens", "40",
                 env={"TINYGPT_DATA": str(shakespeare_path)})
    return out, result


def test_train_cli_runs_end_to_end(trained):
    out, result = trained
    assert result.returncode == 0, result.stderr
    assert "1,024,640 parameters" in result.stdout  # d 128, 4 heads, 5 layers (the lab's has 4)
    assert "step     5/5" in result.stdout and "tok/s" in result.stdout and "ETA" in result.stdout
    assert "val loss" in result.stdout and "val perplexity" in result.stdout
    history = json.loads((out / "history.json").read_text())
    assert history["step"] == [1, 2, 3, 4, 5] and history["eval_step"] == [5]
    samples = (out / "samples.txt").read_text()
    assert samples.startswith("=== step 5, val loss ")  # a short sample at each evaluation
    final = samples.split("=== final, step 5 ===\n")[1]
    assert final.startswith("ROMEO:") and len(final) == len("ROMEO:") + 40 + 1
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "best.npz").is_file()
    model, tok, meta, opt = load_checkpoint(out / "ckpt.npz")
    assert meta["step"] == 5 and int(opt["t"]) == 5
    assert model.config.d_model == 128 and model.config.n_layers == 5
    assert meta["extra"]["args"]["batch_size"] == 16 and meta["extra"]["args"]["seq_len"] == 128
    assert meta["extra"]["args"]["ema_decay"] == 0.998 and "trained_params" in opt


SMALL = ["--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--seq-len", "16",
         "--batch-size", "4", "--sample-tokens", "5", "--threads", "1"]


@pytest.fixture(scope="module")
def small_text(tmp_path_factory, shakespeare_text):
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(shakespeare_text[:20_000])
    return path


def test_interrupt_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path, small_text):
    common = ["--data", str(small_text), "--max-steps", "300", "--eval-interval", "100",
              "--dropout", "0.1", "--ema-decay", "0.9", *SMALL]  # masks and average must replay
    straight = run("tinygpt.train", *common, "--out-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "tinygpt.train", *common, "--out-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("step"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout
    _, _, meta, _ = load_checkpoint(out / "ckpt.npz")
    stopped_at = meta["step"]
    assert 0 < stopped_at < 300

    resumed = run("tinygpt.train", "--resume", "--out-dir", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stopped_at} of 300" in resumed.stdout
    final = load_checkpoint(out / "ckpt.npz")
    expected = load_checkpoint(tmp_path / "straight" / "ckpt.npz")
    assert final[2]["step"] == 300
    np.testing.assert_array_equal(final[0].params, expected[0].params)
    np.testing.assert_array_equal(final[3]["v"], expected[3]["v"])
    np.testing.assert_array_equal(final[3]["trained_params"], expected[3]["trained_params"])
    assert not np.array_equal(final[3]["trained_params"], final[0].params)  # params: the average
    assert final[2]["extra"]["trainer"]["history"]["train_loss"] == \
        expected[2]["extra"]["trainer"]["history"]["train_loss"]


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    result = run("tinygpt.train", "--resume", "--out-dir", str(tmp_path))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_plot_cli_redraws_loss_png(trained, tmp_path):
    out, _ = trained
    (out / "loss.png").unlink()
    result = run("tinygpt.plot", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    missing = run("tinygpt.plot", str(tmp_path))
    assert missing.returncode == 2 and "history.json" in missing.stderr


def test_sample_cli_continues_the_prompt(trained):
    out, _ = trained
    result = run("tinygpt.sample", "--checkpoint", str(out / "ckpt.npz"), "--prompt", "JULIET:",
                 "--max-new-tokens", "30", "--top-k", "5", "--seed", "1", "--num-samples", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("JULIET:") == 2 and "--- sample 2 ---" in result.stdout
    again = run("tinygpt.sample", "--checkpoint", str(out / "ckpt.npz"), "--prompt", "JULIET:",
                "--max-new-tokens", "30", "--top-k", "5", "--seed", "1", "--num-samples", "2")
    assert again.stdout == result.stdout


def test_sample_cli_reports_missing_and_corrupt_checkpoints(tmp_path, trained):
    result = run("tinygpt.sample", "--checkpoint", str(tmp_path / "none.npz"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    broken = tmp_path / "broken.npz"
    broken.write_bytes((trained[0] / "ckpt.npz").read_bytes()[:1000])
    result = run("tinygpt.sample", "--checkpoint", str(broken))
    assert result.returncode == 2 and "not a readable tinygpt checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_sample_cli_rejects_characters_outside_the_vocabulary(trained):
    result = run("tinygpt.sample", "--checkpoint", str(trained[0] / "ckpt.npz"), "--prompt", "ROMEO€")
    assert result.returncode == 2 and "'€' at position 5" in result.stderr


def test_train_cli_on_any_text_file_with_bad_config_and_missing_data(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("abcdefgh " * 200)
    result = run("tinygpt.train", "--data", str(text), "--max-steps", "2", "--d-model", "16",
                 "--n-heads", "2", "--n-layers", "1", "--seq-len", "16", "--batch-size", "4",
                 "--out-dir", str(tmp_path / "o"), "--sample-tokens", "5", "--prompt", "abc",
                 "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "ckpt.npz").is_file()
    bad = run("tinygpt.train", "--data", str(text), "--d-model", "30", "--n-heads", "4")
    assert bad.returncode == 2 and "divisible" in bad.stderr
    missing = run("tinygpt.train", "--data", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_train_help_lists_both_spellings():
    result = run("tinygpt.train", "--help")
    assert result.returncode == 0
    for flag in ("--batch-size", "--batch_size", "--max-grad-norm", "--threads", "--out-dir"):
        assert flag in result.stdout


def test_sample_cli_reads_a_prompt_file_and_checks_sampling_flags(tmp_path, trained):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("KING:\n")
    ckpt = str(trained[0] / "ckpt.npz")
    result = run("tinygpt.sample", "--checkpoint", ckpt, "--prompt-file", str(prompt),
                 "--max-new-tokens", "10", "--top-p", "0.9", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("KING:\n") and len(result.stdout) == len("KING:\n") + 10 + 1
    bad = run("tinygpt.sample", "--checkpoint", ckpt, "--top-p", "1.5")
    assert bad.returncode == 2 and "top_p" in bad.stderr
    missing = run("tinygpt.sample", "--checkpoint", ckpt, "--prompt-file", str(tmp_path / "no.txt"))
    assert missing.returncode == 2 and "no.txt" in missing.stderr


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, small_text, monkeypatch,
                                                                     capsys):
    from tinygpt import train, trainer

    real_step = trainer.Trainer.train_step

    def blow_up_at_step_7(self, x, y):
        if self.step == 7:
            raise FloatingPointError(f"loss became nan at step {self.step}; stopping")
        return real_step(self, x, y)

    monkeypatch.setattr(trainer.Trainer, "train_step", blow_up_at_step_7)
    code = train.main(["--data", str(small_text), "--max-steps", "20", "--eval-interval", "10",
                       "--checkpoint-interval", "5", "--out-dir", str(tmp_path), *SMALL])
    assert code == 1
    assert "loss became nan at step 7" in capsys.readouterr().err
    model, _, meta, _ = load_checkpoint(tmp_path / "ckpt.npz")
    assert meta["step"] == 5 and np.isfinite(model.params).all()
