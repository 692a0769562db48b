"""The command lines, run as a user runs them: in a subprocess."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest

from tinygpt import load_checkpoint, ops


TINYGPT = str(Path(sys.executable).parent / "tinygpt")  # the console script pip installed


def run(module, *args, env=None):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def tinygpt(*args):
    return subprocess.run([TINYGPT, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_path):
    """The default command line, cut to 5 steps."""
    out = tmp_path_factory.mktemp("run")
    result = subprocess.run([TINYGPT, "train", "--max-steps", "5", "--eval_interval", "5",
                             "--out-dir", str(out), "--sample-tokens", "40"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TINYGPT_DATA": str(shakespeare_path)})
    return out, result


def test_train_cli_runs_end_to_end(trained):
    out, result = trained
    assert result.returncode == 0, result.stderr
    # d 128, 4 heads, 5 layers (the lab's has 4), rotary positions: no position table
    assert "1,008,256 parameters" in result.stdout
    n = len(ops.op_backends())
    assert f"backend auto: cython ({n} of {n} ops compiled)" in result.stdout
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
    assert meta["extra"]["config"]["batch_size"] == 16 and meta["extra"]["config"]["seq_len"] == 128
    assert meta["extra"]["config"]["ema_decay"] == 0.998 and "trained_params" in opt


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


def test_the_tinygpt_command_lists_and_dispatches_its_subcommands(trained):
    listing = tinygpt("--help")
    assert listing.returncode == 0
    for command in ("train", "sample", "eval", "export", "plot"):
        assert command in listing.stdout
    assert tinygpt().returncode == 2
    unknown = tinygpt("fly")
    assert unknown.returncode == 2 and "unknown command 'fly'" in unknown.stderr
    assert tinygpt("--version").stdout.startswith("tinygpt 0.")
    sample = tinygpt("sample", "--checkpoint", str(trained[0] / "ckpt.npz"), "--max-new-tokens",
                     "12", "--temperature", "0", "--threads", "1")
    assert sample.returncode == 0 and sample.stdout.startswith("ROMEO:"), sample.stderr


def test_eval_reports_loss_perplexity_and_bits_per_character(trained, tmp_path):
    out, result = trained
    history = json.loads((out / "history.json").read_text())
    report = tinygpt("eval", "--checkpoint", str(out / "ckpt.npz"), "--batch-size", "16")
    assert report.returncode == 0, report.stderr
    assert "validation split of tiny_shakespeare" in report.stdout
    # the checkpoint holds the averaged weights that the run evaluated at its last step
    loss = float(report.stdout.split("loss ")[1].split()[0])
    assert loss == pytest.approx(history["val_loss"][-1], abs=1e-4)
    bits = float(report.stdout.split("| ")[-1].split()[0])
    assert bits == pytest.approx(loss / np.log(2), abs=2e-4)
    text = tmp_path / "lines.txt"
    text.write_text("ROMEO:\nWhat light through yonder window breaks?\n" * 3)
    other = tinygpt("eval", "--checkpoint", str(out / "ckpt.npz"), "--data", str(text))
    assert other.returncode == 0 and str(text) in other.stdout, other.stderr
    text.write_text("naïve")
    foreign = tinygpt("eval", "--checkpoint", str(out / "ckpt.npz"), "--data", str(text))
    assert foreign.returncode == 2 and "'ï'" in foreign.stderr and "Traceback" not in foreign.stderr


def test_resume_accepts_a_longer_run_and_refuses_other_changes(tmp_path, small_text):
    out = str(tmp_path / "run")
    first = run("tinygpt.train", "--data", str(small_text), "--max-steps", "4", *SMALL,
                "--out-dir", out)
    assert first.returncode == 0, first.stderr
    refused = run("tinygpt.train", "--resume", "--out-dir", out, "--lr", "0.1")
    assert refused.returncode == 2 and "--lr cannot change when resuming" in refused.stderr
    refused = run("tinygpt.train", "--resume", "--out-dir", out, "--d_model", "32")
    assert refused.returncode == 2 and "--d-model cannot change" in refused.stderr
    same = run("tinygpt.train", "--resume", "--out-dir", out, "--seq-len", "16", "--max-steps",
               "7", "--eval-interval", "3", "--threads", "2")  # a setting given unchanged is fine
    assert same.returncode == 0, same.stderr
    assert "resuming at step 4 of 7" in same.stdout
    model, _, meta, _ = load_checkpoint(Path(out) / "ckpt.npz")
    assert meta["step"] == 7 and meta["extra"]["config"]["max_steps"] == 7
    assert meta["extra"]["trainer"]["history"]["step"] == list(range(1, 8))
    assert meta["extra"]["trainer"]["history"]["eval_step"] == [1, 2, 3, 4, 6, 7]  # 4 steps: every 1


def test_a_toml_config_drives_the_run_and_flags_override_it(tmp_path, small_text):
    config = tmp_path / "run.toml"
    config.write_text(f'data = "{small_text}"\nd-model = 24\nn_heads = 3\nn_layers = 1\n'
                      f'seq_len = 16\nbatch_size = 4\nmax_steps = 2\nlr = 5e-3\n'
                      f'sample_tokens = 5\nthreads = 1\n')
    result = run("tinygpt.train", "--config", str(config), "--lr", "2e-3",
                 "--out-dir", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    model, _, meta, _ = load_checkpoint(tmp_path / "o" / "ckpt.npz")
    assert model.config.d_model == 24 and model.config.n_heads == 3
    assert meta["extra"]["config"]["lr"] == 2e-3 and meta["extra"]["config"]["max_steps"] == 2
    config.write_text("batch = 4\n")
    bad = run("tinygpt.train", "--config", str(config))
    assert bad.returncode == 2 and "unknown setting 'batch'" in bad.stderr


def test_init_from_fine_tunes_a_saved_model_on_a_text_of_its_characters(tmp_path, small_text):
    source = tmp_path / "source"
    first = run("tinygpt.train", "--data", str(small_text), "--max-steps", "3", *SMALL,
                "--out-dir", str(source))
    assert first.returncode == 0, first.stderr
    exported = tmp_path / "model.safetensors"
    assert tinygpt("export", str(source / "ckpt.npz"), "--format", "safetensors", "--out",
                   str(exported)).returncode == 0
    start, tokenizer = load_checkpoint(source / "ckpt.npz")[:2]
    text = tmp_path / "sonnet.txt"
    text.write_text(small_text.read_text()[5000:9000])  # the same play: a subset of characters
    for origin in (source / "ckpt.npz", exported):
        # learning rates of 1e-12 and no average: the weights stay where --init-from put them
        tuned = run("tinygpt.train", "--init-from", str(origin), "--data", str(text),
                    "--max-steps", "1", "--lr", "1e-12", "--muon-lr", "1e-12",
                    "--ema-decay", "0", "--seq-len", "16",
                    "--batch-size", "4", "--sample-tokens", "5", "--threads", "1",
                    "--out-dir", str(tmp_path / "tuned"))
        assert tuned.returncode == 0, tuned.stderr
        model, tuned_tokenizer, meta, _ = load_checkpoint(tmp_path / "tuned" / "ckpt.npz")
        assert tuned_tokenizer.chars == tokenizer.chars and model.config.d_model == 16
        np.testing.assert_allclose(model.params, start.params, atol=1e-9)
        assert meta["extra"]["config"]["init_from"] == str(origin)
    text.write_text("Zebra {quagga}")
    foreign = run("tinygpt.train", "--init-from", str(exported), "--data", str(text))
    assert foreign.returncode == 2, foreign.stderr
    named = foreign.stderr.split("characters the model does not know: ")[1].split(";")[0]
    assert "{" in named and "}" in named and "e" not in named
    shaped = run("tinygpt.train", "--init-from", str(exported), "--data", str(small_text),
                 "--d-model", "32")
    assert shaped.returncode == 2 and "--d-model 32 differs from the model" in shaped.stderr


def test_plotting_leaves_the_callers_matplotlib_backend_alone(trained, tmp_path):
    import matplotlib

    from tinygpt.plot import plot_history

    matplotlib.use("svg")
    history = json.loads((trained[0] / "history.json").read_text())
    plot_history(history, tmp_path / "loss.png")
    assert matplotlib.get_backend().lower() == "svg"
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
