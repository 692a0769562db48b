"""The command lines, run as a user runs them: in a subprocess."""
import json
import os
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
    assert "826,368 parameters" in result.stdout  # the lab's config: d 128, 4 layers, 4 heads
    assert "step     5/5" in result.stdout and "tok/s" in result.stdout and "ETA" in result.stdout
    assert "val loss" in result.stdout and "val perplexity" in result.stdout
    history = json.loads((out / "history.json").read_text())
    assert history["step"] == [1, 2, 3, 4, 5] and history["eval_step"] == [5]
    sample = (out / "samples.txt").read_text()
    assert sample.startswith("ROMEO:") and len(sample) == len("ROMEO:") + 40 + 1
    model, tok, meta, opt = load_checkpoint(out / "ckpt.npz")
    assert meta["step"] == 5 and int(opt["t"]) == 5
    assert model.config.d_model == 128 and model.config.n_layers == 4
    assert meta["extra"]["args"]["batch_size"] == 64 and meta["extra"]["args"]["seq_len"] == 128


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
