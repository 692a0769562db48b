"""``tinygpt train`` (or ``python -m tinygpt.train``): train on tiny_shakespeare or any text,
checkpoint, sample. Settings come from RunConfig: its defaults, then ``--config run.toml``, then
flags; ``--resume`` continues the run saved in --out-dir with its own settings."""
import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import corpus, data, distributed, export, files, ops
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig, load_toml, resumable, setting_type
from .files import atomic_write_text
from .model import TinyGPT
from .plot import plot_history
from .tokenizer import CharTokenizer
from .trainer import Trainer

CLI_ONLY = ("config", "resume")  # flags that are not settings
OUTPUTS = ("ckpt.npz", "best.npz", "history.json", "loss.png", "samples.txt")  # in --out-dir
# what runs did before these settings existed: a checkpoint that lacks one resumes with this
# value, whatever the default has become since
BEFORE_THE_SETTING = {"optimizer": "adamw", "last_batch": "keep", "position": "learned",
                      "mlp": "gelu", "min_lr_ratio": 0.1}


def flag(name):
    """The command-line spelling of a setting: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def build_parser():
    p = argparse.ArgumentParser(
        prog="tinygpt train",
        description="Train a tiny GPT on tiny_shakespeare (or any text file) and sample from it. "
                    "Every flag is also accepted with underscores (--batch_size).")
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="TOML",
                   help="read settings from this TOML file (flags given too override it)")
    p.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                   help="continue the run saved in --out-dir with its own settings; only "
                        "--epochs, --max-steps, intervals, threads and sampling may change")
    for f in dataclasses.fields(RunConfig):
        spellings = [flag(f.name)] + (["--" + f.name] if "_" in f.name else [])
        default = "" if f.default is None else f" (default: {f.default})"
        p.add_argument(*spellings, dest=f.name, type=setting_type(f.name),
                       default=argparse.SUPPRESS, help=f.metadata["help"] + default)
    return p


def _format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Progress:
    """A tqdm bar on a terminal; elsewhere a plain line every ``every`` steps. Evals get a line."""

    def __init__(self, trainer, every=50):
        self.every, self.total = every, trainer.total_steps
        self.start_step, self.start = trainer.step, time.perf_counter()
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=trainer.step, unit="step", dynamic_ncols=True)

    def step(self, info):
        step = info["step"]
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {info['loss']:.4f} | {info['tokens_per_sec']:,.0f} tok/s")
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total or step == self.start_step + 1:
            elapsed = time.perf_counter() - self.start
            eta = elapsed / (step - self.start_step) * (self.total - step)
            print(f"step {step:5d}/{self.total} | loss {info['loss']:.4f} | "
                  f"lr {info['lr']:.2e} | grad norm {info['grad_norm']:.3f} | "
                  f"{info['tokens_per_sec']:,.0f} tok/s | ETA {_format_eta(eta)}", flush=True)

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _encode_prompt(tokenizer, prompt):
    """The prompt's ids, or the first vocabulary character when the prompt does not fit."""
    try:
        return tokenizer.encode(prompt) or [0]
    except ValueError:
        return [0]


def _sample_entry(header, text):
    return f"=== {header} ===\n{text}\n"


class _Run:
    """One command-line run: the trainer plus the files it keeps in the out dir.

    Every file is written atomically, and ckpt.npz last at each step that writes several: it
    is what a resume starts from, so a run killed at any moment resumes to the same files.
    The samples ride in the checkpoint, so samples.txt never gets one twice after a resume.
    """

    def __init__(self, config, trainer, tokenizer, samples):
        self.config, self.trainer, self.tokenizer = config, trainer, tokenizer
        self.out = Path(config.out_dir)
        self.samples = list(samples)
        self.saved_step = None  # the step of the last ckpt.npz this run wrote
        self.progress = None

    def sample(self, n_tokens, temperature=0.8):
        prompt = np.array(_encode_prompt(self.tokenizer, self.config.prompt))
        with self.trainer.eval_weights():
            out = self.trainer.model.generate(prompt, n_tokens, temperature=temperature,
                                              seed=self.config.seed + self.trainer.step)
        return self.tokenizer.decode(out)

    def save(self, name="ckpt.npz", plot=True):
        """Checkpoint, history and (if ``plot``) loss plot, each written atomically."""
        t = self.trainer
        save_checkpoint(self.out / name, t.model, self.tokenizer, t.optimizer, t.step,
                        extra={"config": self.config.to_dict(), "trainer": t.state(),
                               "samples": self.samples}, average=t.average)
        if name == "ckpt.npz":
            self.saved_step = t.step
            atomic_write_text(self.out / "history.json", json.dumps(t.history, indent=1))
            if plot and t.history["step"]:
                plot_history(t.history, self.out / "loss.png")

    def add_sample(self, header, text):
        self.samples.append(_sample_entry(header, text))
        self.write_samples()

    def write_samples(self):
        atomic_write_text(self.out / "samples.txt", "\n".join(self.samples))

    def finish(self):
        """The end of a run: the final sample (unless stopped early), then ckpt.npz, history,
        plot and samples.txt. Returns the final sample, or None."""
        t, sample = self.trainer, None
        header = f"final, step {t.step}"
        if not t.stopping():
            sample = self.sample(self.config.sample_tokens)
            if not (self.samples and self.samples[-1] == _sample_entry(header, sample)):
                self.samples.append(_sample_entry(header, sample))  # not yet in a resumed run
        self.save()
        if sample is not None:
            self.write_samples()
        return sample

    def on_step(self, info):
        self.progress.step(info)
        step = info["step"]
        if "val_loss" in info:
            self.progress.write(f"eval step {step}: val loss {info['val_loss']:.4f} | "
                                f"val perplexity {info['val_perplexity']:.2f}")
            history = self.trainer.history
            self.add_sample(f"step {step}, val loss {info['val_loss']:.4f}", self.sample(200))
            if info["val_loss"] <= min(history["val_loss"]):
                self.save("best.npz")
        if step % self.config.checkpoint_interval == 0 or "val_loss" in info:
            self.save(plot="val_loss" in info)  # plotting takes ~0.5 s: only at evaluations


def _handle_sigint(trainer, announce=True):
    """First Ctrl-C: finish the current step, then stop (every rank: mpiexec passes it on). A
    second one interrupts at once."""
    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        if announce:
            print("\nCtrl-C: stopping after this step and saving a checkpoint "
                  "(press again to quit without saving)", file=sys.stderr, flush=True)
    return signal.signal(signal.SIGINT, handler)


def _read_text(config, tokenizer=None):
    """(tokenizer, train ids, val ids) of the run's text, or of the prepared corpus (a
    directory from ``tinygpt prepare``, read through np.memmap). A given tokenizer (of a model
    being fine-tuned or resumed) must cover every character of the text."""
    if config.data is not None and Path(config.data).is_dir():
        ids_tokenizer, ids = corpus.load(config.data)
        if tokenizer is not None and tokenizer.chars != ids_tokenizer.chars:
            raise ValueError(f"the prepared corpus {config.data} has another vocabulary than the "
                             f"model ({ids_tokenizer.vocab_size} characters against "
                             f"{tokenizer.vocab_size}); prepare its text again, or train from "
                             f"the text file")
        tokenizer = ids_tokenizer
    else:
        text = data.load_text(config.data)
        if tokenizer is None:
            tokenizer = CharTokenizer(text)
        tokenizer.check_covers(text, config.data or "tiny_shakespeare")
        ids = np.array(tokenizer.encode(text), dtype=np.int32)
    train_ids, val_ids = data.split(ids)
    for part, ids in (("training part (the first 90%)", train_ids),
                      ("validation part (the last 10%)", val_ids)):
        if len(ids) < config.seq_len + 1:
            raise ValueError(f"{config.data or 'tiny_shakespeare'} is too short for --seq-len "
                             f"{config.seq_len}: its {part} has {len(ids)} characters, and "
                             f"needs at least {config.seq_len + 1}")
    return tokenizer, train_ids, val_ids


def _new_trainer(config, tokenizer, train_ids, val_ids):
    model = TinyGPT(tokenizer.vocab_size, config.d_model, config.n_heads, config.n_layers,
                    config.model_max_seq_len, seed=config.seed, dropout=config.dropout,
                    position=config.position, mlp=config.mlp)
    return Trainer(model, train_ids, config.train_config(), val_data=val_ids,
                   group=distributed.group())


def _start(requested):
    """A new run: (config, trainer, tokenizer), from --init-from's weights if given."""
    config = RunConfig.from_dict(requested, source="settings")
    if config.init_from is None:
        tokenizer, train_ids, val_ids = _read_text(config)
        return config, _new_trainer(config, tokenizer, train_ids, val_ids), tokenizer, []
    source, tokenizer = export.load_model(config.init_from)
    shape = {name: getattr(source.config, name)
             for name in ("d_model", "n_heads", "n_layers", "max_seq_len", "position", "mlp")}
    for name, value in shape.items():
        if requested.get(name, value) != value:
            raise ValueError(f"{flag(name)} {requested[name]} differs from the model in "
                             f"{config.init_from} ({value}); leave it out to fine-tune that model")
    if "seq_len" not in requested:  # the recipe's length, or the model's context if shorter
        shape["seq_len"] = min(config.seq_len, shape["max_seq_len"])
    config = RunConfig.from_dict({**requested, **shape}, source=f"--init-from {config.init_from}")
    trainer = _new_trainer(config, *_read_text(config, tokenizer))
    trainer.model.params[...] = source.params
    return config, trainer, tokenizer, []


def _saved_samples(meta, out):
    """The samples a resumed run continues: those in its checkpoint, or (a checkpoint written
    before samples went into it) samples.txt as it stands."""
    if "samples" in meta["extra"]:
        return [str(entry) for entry in meta["extra"]["samples"]]
    path = Path(out) / "samples.txt"
    return [path.read_text(encoding="utf-8", errors="replace")] if path.is_file() else []


def _resume(requested):
    """The run saved in out_dir, with the changes to it that a resume allows."""
    path = Path(requested.get("out_dir", RunConfig.out_dir)) / "ckpt.npz"
    saved_model, tokenizer, meta, optim = load_checkpoint(path)
    if optim is None or "config" not in meta["extra"]:
        raise ValueError(f"{path} holds no training run to resume")
    saved = RunConfig.from_dict({**BEFORE_THE_SETTING, **meta["extra"]["config"]},
                                source=str(path))
    for name, value in requested.items():
        if value != getattr(saved, name) and not resumable(name):
            raise ValueError(f"{flag(name)} cannot change when resuming (the run in {path} has "
                             f"{getattr(saved, name)!r}, got {value!r}); only --epochs, "
                             f"--max-steps, the intervals, --threads and the sampling settings "
                             f"may. Start a new run in another --out-dir for other settings")
    config = dataclasses.replace(saved, **{"threads": None, **requested})
    trainer = _new_trainer(config, *_read_text(config, tokenizer))
    trainer.model.params[...] = optim.get("trained_params", saved_model.params)
    trainer.optimizer.load_state(optim)
    if trainer.average is not None:
        trainer.average.load_state(saved_model.params, optim.get("average_t", 0))
    trainer.load_state(meta["extra"]["trainer"])
    if trainer.total_steps < trainer.step:
        raise ValueError(f"the run in {path} is at step {trainer.step}, past the "
                         f"{trainer.total_steps} steps asked for")
    return config, trainer, tokenizer, _saved_samples(meta, config.out_dir)


def _settings(args):
    """What the user asked for: the TOML file's settings, overridden by the flags given."""
    given = vars(args)
    requested = load_toml(given["config"]) if "config" in given else {}
    requested.update((k, v) for k, v in given.items() if k not in CLI_ONLY)
    return requested, given.get("resume", False)


def _prepare_out_dir(out):
    """Before any training step: --out-dir exists (created if need be) and takes files, and
    what writes killed mid-write (SIGKILL, a power cut) left there is cleared away."""
    files.check_writable(out, OUTPUTS)
    removed = files.remove_stale_temps(out, OUTPUTS)
    if removed:
        print(f"tinygpt: removed {', '.join(p.name for p in removed)} (left by a run killed "
              f"while writing)", flush=True)


class _RootFailed(Exception):
    """Rank 0 could not set the run up (and has said why)."""


def _setup(args, group):
    """(config, trainer, tokenizer, samples, resuming). Rank 0 reads the settings, the data and
    the checkpoint; the other ranks build the same trainer from rank 0's settings, then every
    rank takes rank 0's weights, optimizer state and place in the data."""
    requested, resuming = _settings(args)
    threads = requested.get("threads")
    if threads is None and group.size > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = distributed.fair_share_of_cpus()  # the ranks on a machine share its CPUs
    if threads is not None:
        ops.set_num_threads(threads)
    if group.rank == 0:
        try:
            config, trainer, tokenizer, samples = (_resume if resuming else _start)(requested)
            _prepare_out_dir(config.out_dir)
        except (OSError, ValueError):
            group.broadcast_object(None)
            raise
        group.broadcast_object((config.to_dict(), tokenizer.chars))
    else:
        shared = group.broadcast_object(None)
        if shared is None:
            raise _RootFailed
        config = RunConfig.from_dict(shared[0], source="rank 0's settings")
        tokenizer, samples = CharTokenizer.from_vocabulary(shared[1]), []
        trainer = _new_trainer(config, *_read_text(config, tokenizer))
    if group.size > 1:
        trainer.sync_from_root()
    return config, trainer, tokenizer, samples, resuming


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        group = distributed.group()
    except RuntimeError as err:  # under mpiexec without mpi4py
        print(f"error: {err}", file=sys.stderr)
        return 2
    if group.size == 1:
        return _train(args, group)
    try:
        return _train(args, group)
    except Exception as err:  # one rank's failure ends every rank, with its message, not a hang
        print(f"error (rank {group.rank} of {group.size}): {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        group.abort(1)


def _train(args, group) -> int:
    """The run on this rank; only rank 0 prints and writes files."""
    try:
        config, trainer, tokenizer, samples, resuming = _setup(args, group)
    except _RootFailed:  # rank 0 said why
        return 2
    except (OSError, ValueError) as err:  # bad settings, data, checkpoint or --out-dir
        if group.rank != 0:
            raise  # rank 0 is waiting for this rank: end the job (see main)
        print(f"error: {err}", file=sys.stderr)
        return 2
    previous_handler = _handle_sigint(trainer, announce=group.rank == 0)
    if group.rank != 0:
        try:
            trainer.run()
        except (FloatingPointError, distributed.RanksDiverged):  # met by every rank at once;
            return 1  # rank 0 says so
        finally:
            signal.signal(signal.SIGINT, previous_handler)
        return 130 if trainer.stopping() else 0
    model = trainer.model
    ranks = f"{group.size} ranks x " if group.size > 1 else ""
    print(f"tinygpt: {model.num_parameters():,} parameters | vocab {tokenizer.vocab_size} | "
          f"{len(trainer.train_data):,} train / {len(trainer.val_data):,} val tokens | "
          f"{'resuming at step ' + str(trainer.step) + ' of ' if resuming else ''}"
          f"{trainer.total_steps} steps | {ranks}{ops.get_num_threads()} threads | "
          f"backend {ops.backend_summary()}", flush=True)
    run = _Run(config, trainer, tokenizer, samples)
    run.progress = _Progress(trainer)
    trainer.callback = run.on_step
    try:
        try:
            trainer.run()
        finally:
            run.progress.close()
        sample = run.finish()
    except (FloatingPointError, distributed.RanksDiverged) as err:
        print(f"error: {err}. The last good checkpoint in {run.out} is untouched.",
              file=sys.stderr)
        return 1
    except OSError as err:  # a write failed: files.WriteError names the file and the reason
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: no new checkpoint, the last one is whole
        ckpt = run.out / "ckpt.npz"
        kept = (f"{ckpt} holds step {run.saved_step}" if run.saved_step is not None else
                f"{ckpt} is as it was" if resuming else "no checkpoint was written")
        print(f"\ninterrupted: {kept}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    print(f"saved {run.out / 'ckpt.npz'}, history.json and loss.png at step {trainer.step}")
    if trainer.stopping():
        print(f"stopped early; continue with: tinygpt train --resume --out-dir {run.out}")
        return 130
    history = trainer.history
    if history["val_loss"]:
        print(f"final val loss {history['val_loss'][-1]:.4f} | "
              f"val perplexity {history['val_perplexity'][-1]:.2f}")
    print(f"--- sample (temperature 0.8) ---\n{sample}\n---")
    print(f"saved {run.out / 'samples.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
