"""Training settings, defined once.

``TrainConfig`` holds how a model is trained, with the lab's defaults (what ``train_model`` and
``Trainer`` use). ``RunConfig`` extends it with the model's shape, the data and the output files,
with the command line's defaults: the best recipe measured on these machines (docs/results.md).
The command line's flags, a ``--config run.toml`` file and a checkpoint's saved settings are all
read into a ``RunConfig``, and every value is checked here, once.
"""
import dataclasses
import functools
import math
import numbers
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .model import MLPS, POSITIONS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _setting(default, help, resumable=False):
    """A dataclass field with its command-line help; ``resumable`` settings may change on
    --resume (they extend or re-pace a run without changing what it computes so far)."""
    return field(default=default, metadata={"help": help, "resumable": resumable})


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the optimizer, the schedule, the batches. Defaults are the lab's."""
    epochs: int = _setting(10, "passes over the training data", resumable=True)
    batch_size: int = _setting(32, "sequences per step (the global batch, over every rank)")
    grad_accum: int = _setting(1, "micro-batches per rank whose gradients are summed before each "
                                  "step (the batch must divide by ranks x grad_accum)")
    seq_len: int = _setting(64, "characters per training sequence")
    lr: float = _setting(1e-3, "peak learning rate (linear warmup, then cosine decay to "
                               "min_lr_ratio of it)")
    min_lr_ratio: float = _setting(0.1, "learning rate at the end of the cosine decay, as a "
                                        "fraction of the peak")
    warmup_steps: int = _setting(100, "steps of linear learning-rate warmup")
    weight_decay: float = _setting(0.01, "decoupled weight decay (matrices and "
                                         "embeddings only)")
    optimizer: str = _setting("adamw", "adamw, or muon: Muon (orthogonalised momentum) for the "
                                       "blocks' matrices, AdamW for the rest")
    muon_momentum: float = _setting(0.95, "Muon's momentum (Nesterov), with --optimizer muon")
    muon_lr: typing.Optional[float] = _setting(
        None, "peak learning rate of Muon's matrices, on lr's schedule (default: lr; Muon's "
              "update is scaled to AdamW's RMS)")
    last_batch: str = _setting("keep", "an epoch's last, short batch: keep (a step on fewer "
                                       "sequences) or drop (its few windows wait for the next "
                                       "epoch's shuffle)")
    max_grad_norm: float = _setting(1.0, "clip the global gradient norm to this (0: no clipping)")
    ema_decay: float = _setting(0.0, "evaluate, sample and save a moving average of the weights "
                                     "with this decay per step (0: off, the raw weights)")
    eval_interval: typing.Optional[int] = _setting(
        None, "steps between evaluations (default: a tenth of the run)", resumable=True)
    eval_batches: typing.Optional[int] = _setting(
        None, "evaluate on the first this many batches of the validation split (default: all "
              "of it; a cap for corpora too large to evaluate whole)", resumable=True)
    max_steps: typing.Optional[int] = _setting(
        None, "stop after this many steps (replaces the epoch count)", resumable=True)
    seed: int = _setting(0, "seed of the initial weights, the data order and dropout")

    def __post_init__(self):
        for f in dataclasses.fields(self):  # numbers come out as plain int and float
            value = _checked(f.name, getattr(self, f.name), _hints(type(self))[f.name])
            object.__setattr__(self, f.name, value)
        for name in ("epochs", "batch_size", "grad_accum", "seq_len", "eval_interval",
                     "eval_batches", "max_steps"):
            _at_least(name, getattr(self, name), 1)
        for name in ("warmup_steps", "weight_decay", "max_grad_norm", "ema_decay",
                     "min_lr_ratio"):
            _at_least(name, getattr(self, name), 0)
        for name in ("lr", "muon_lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a finite number > 0, got "
                                 f"{getattr(self, name)!r}")
        if not self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if not self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"muon_momentum must lie in [0, 1), got {self.muon_momentum!r}")
        _one_of("optimizer", self.optimizer, ("adamw", "muon"))
        _one_of("last_batch", self.last_batch, ("keep", "drop"))


@dataclass(frozen=True)
class RunConfig(TrainConfig):
    """A command-line run: the model's shape, the data, the output files, and training with the
    best measured recipe (docs/results.md has the runs behind these defaults)."""
    epochs: int = _setting(14, "passes over the training data (with weight decay 0.6 the "
                               "validation loss still fell steeply at the end of 12)",
                           resumable=True)
    batch_size: int = _setting(16, "sequences per step, over every rank (the lab suggests 64; 16 "
                                   "reaches a lower val loss in the same time)")
    seq_len: int = _setting(128, "characters per training sequence")
    lr: float = _setting(2.5e-3, "peak learning rate (the lab suggests 1e-3; 2.5e-3 reaches a "
                                 "lower val loss in the same time)")
    weight_decay: float = _setting(0.6, "decoupled weight decay (matrices and embeddings only; "
                                        "in 12 epochs 0.6 reached a lower val loss than 0.3, "
                                        "and 0.1 overfit)")
    ema_decay: float = _setting(0.998, "evaluate, sample and save a moving average of the "
                                       "weights with this decay per step (0: off)")
    muon_lr: typing.Optional[float] = _setting(
        3e-3, "peak learning rate of Muon's matrices, on lr's schedule (3e-3 ended below 5e-3 "
              "on each of 3 seeds of the 14-epoch recipe)")
    d_model: int = _setting(128, "width of the residual stream")
    n_heads: int = _setting(4, "attention heads per layer")
    n_layers: int = _setting(5, "transformer blocks (the lab suggests 4)")
    max_seq_len: typing.Optional[int] = _setting(None, "position table size (default: seq_len)")
    dropout: float = _setting(0.0, "dropout rate of the embeddings and residual branches")
    position: str = _setting("rotary", "position encoding: 'rotary' (queries and keys rotated, "
                                       "GPT-NeoX) or 'learned' (a table, GPT-2)")
    mlp: str = _setting("relu2", "the MLP's activation: 'relu2' (squared ReLU) or 'gelu' (GPT-2)")
    optimizer: str = _setting("muon", "muon: Muon (orthogonalised momentum) for the blocks' "
                                      "matrices and AdamW for the rest; or adamw")
    last_batch: str = _setting("drop", "an epoch's last, short batch: drop (its few windows "
                                       "wait for the next epoch's shuffle) or keep")
    data: typing.Optional[str] = _setting(
        None, "text file to train on (default: tiny_shakespeare, found through $TINYGPT_DATA, "
              "the user cache, or a download)")
    init_from: typing.Optional[str] = _setting(
        None, "start from the weights of this checkpoint, .safetensors file or Hugging Face "
              "directory (fine-tuning; the text must use only the model's characters)")
    out_dir: str = _setting("out", "where ckpt.npz, best.npz, history.json, loss.png and "
                                   "samples.txt go", resumable=True)
    checkpoint_interval: int = _setting(
        100, "steps between checkpoints (one is also written at every evaluation and the end)",
        resumable=True)
    threads: typing.Optional[int] = _setting(
        None, "CPU threads for kernels and BLAS (default: the CPUs this process may use)",
        resumable=True)
    prompt: str = _setting("ROMEO:", "prompt of the samples", resumable=True)
    sample_tokens: int = _setting(500, "length of the final sample", resumable=True)

    def __post_init__(self):
        super().__post_init__()
        for name in ("d_model", "n_heads", "n_layers", "max_seq_len", "checkpoint_interval",
                     "threads"):
            _at_least(name, getattr(self, name), 1)
        _at_least("sample_tokens", self.sample_tokens, 0)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        _one_of("position", self.position, POSITIONS)
        _one_of("mlp", self.mlp, MLPS)
        if self.max_seq_len is not None and self.max_seq_len < self.seq_len:
            raise ValueError(f"max_seq_len ({self.max_seq_len}) must be at least seq_len "
                             f"({self.seq_len})")

    @property
    def model_max_seq_len(self) -> int:
        return self.max_seq_len or self.seq_len

    def train_config(self) -> TrainConfig:
        """The training part, as the Trainer takes it."""
        names = [f.name for f in dataclasses.fields(TrainConfig)]
        return TrainConfig(**{name: getattr(self, name) for name in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "settings") -> "RunConfig":
        """Build from a dict (a TOML file's table, a checkpoint's JSON); keys may use dashes.
        An unknown key or a value of the wrong type is a ValueError naming it and ``source``."""
        known = {f.name for f in dataclasses.fields(cls)}
        settings = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"{source}: unknown setting {key!r}; known settings: "
                                 f"{', '.join(sorted(known))}")
            settings[name] = value
        try:
            return cls(**settings)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None


def load_toml(path) -> dict:
    """The settings in a TOML file (``batch_size = 16``, ``lr = 2.5e-3``, ...), keyed by
    setting name; an unknown or bad setting is a ValueError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path} is not valid TOML: {err}") from None
    settings = {key.replace("-", "_"): value for key, value in values.items()}
    RunConfig.from_dict(settings, source=f"config file {path}")  # check every value now
    return settings


def setting_type(name: str) -> type:
    """int, float or str: the type of a RunConfig setting's value."""
    return _hints(RunConfig)[name][0]


def resumable(name: str) -> bool:
    """Whether a RunConfig setting may change when a run is resumed."""
    return RunConfig.__dataclass_fields__[name].metadata["resumable"]


@functools.lru_cache(maxsize=None)
def _hints(cls):
    """name -> (int, float or str; whether None is allowed) for every field of cls."""
    hints = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hints[name] = (args[0] if args else hint), bool(args)
    return hints


def _checked(name, value, hint):
    """value as a plain int, float or str, or a ValueError naming the setting."""
    kind, optional = hint
    if value is None and optional:
        return None
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and math.isfinite(value):
        return float(value)
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if kind is str and isinstance(value, (str, Path)):
        return str(value)
    what = {float: "a finite number", int: "an integer", str: "a string"}[kind]
    raise ValueError(f"{name} must be {what}{' or unset' if optional else ''}, got {value!r}")


def _at_least(name, value, low):
    if value is not None and value < low:
        kind = "an integer" if isinstance(value, int) else "a number"
        raise ValueError(f"{name} must be {kind} >= {low}, got {value!r}")


def _one_of(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
