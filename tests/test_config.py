"""Settings defined once: TrainConfig (the lab's defaults), RunConfig (the command line's recipe),
TOML files and the command line's flags."""
import dataclasses
import inspect

import pytest

from tinygpt import RunConfig, TrainConfig, train_model
from tinygpt.config import load_toml, resumable
from tinygpt.train import build_parser


def test_train_model_keeps_the_labs_defaults_and_they_are_trainconfigs():
    defaults = {name: p.default for name, p in inspect.signature(train_model).parameters.items()
                if p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}
    assert defaults == dict(epochs=10, batch_size=32, seq_len=64, lr=1e-3)
    config = TrainConfig()
    assert {name: getattr(config, name) for name in defaults} == defaults
    assert (config.weight_decay, config.ema_decay, config.warmup_steps) == (0.01, 0.0, 100)
    assert config.min_lr_ratio == 0.1
    assert (config.optimizer, config.last_batch) == ("adamw", "keep")  # the lab's behaviour


def test_the_command_lines_defaults_are_the_measured_recipe():
    config = RunConfig()
    assert (config.epochs, config.batch_size, config.seq_len, config.lr) == (14, 16, 128, 2.5e-3)
    assert (config.d_model, config.n_heads, config.n_layers) == (128, 4, 5)
    assert (config.position, config.mlp) == ("rotary", "relu2")
    assert (config.weight_decay, config.ema_decay) == (0.6, 0.998)
    assert (config.optimizer, config.muon_lr, config.last_batch) == ("muon", 3e-3, "drop")
    assert config.model_max_seq_len == 128
    assert config.train_config() == TrainConfig(
        epochs=14, batch_size=16, seq_len=128, lr=2.5e-3, weight_decay=0.6, ema_decay=0.998,
        optimizer="muon", muon_lr=3e-3, last_batch="drop")


def test_values_are_checked_once_with_messages_naming_the_setting():
    for bad, match in [(dict(lr=-1.0), "lr"), (dict(batch_size=2.5), "batch_size"),
                       (dict(threads=0), "threads"), (dict(dropout=1.0), "dropout"),
                       (dict(seq_len=256, max_seq_len=128), "max_seq_len"),
                       (dict(prompt=3), "prompt must be a string"),
                       (dict(epochs=True), "epochs must be an integer"),
                       (dict(position="alibi"), "position must be one of learned, rotary"),
                       (dict(mlp="swiglu"), "mlp must be one of gelu, relu2"),
                       (dict(optimizer="Muon"), "optimizer must be one of adamw, muon"),
                       (dict(muon_momentum=-0.1), "muon_momentum must lie in"),
                       (dict(min_lr_ratio=1.5), "min_lr_ratio must lie in"),
                       (dict(min_lr_ratio=-0.1), "min_lr_ratio must be a number >= 0"),
                       (dict(last_batch=None), "last_batch must be a string")]:
        with pytest.raises(ValueError, match=match):
            RunConfig(**bad)
    with pytest.raises(ValueError, match="unknown setting 'batchsize'"):
        RunConfig.from_dict({"batchsize": 3})
    assert RunConfig.from_dict({"batch-size": 3}).batch_size == 3


def test_toml_files_are_read_and_checked(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('batch-size = 8\nlr = 3e-3\nd_model = 64\nprompt = "JULIET:"\n')
    assert load_toml(path) == {"batch_size": 8, "lr": 3e-3, "d_model": 64, "prompt": "JULIET:"}
    path.write_text("lr = 'fast'\n")
    with pytest.raises(ValueError, match=r"run.toml: lr must be a finite number"):
        load_toml(path)
    path.write_text("lr = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(FileNotFoundError, match="none.toml"):
        load_toml(tmp_path / "none.toml")


def test_every_setting_is_a_flag_in_both_spellings_and_resumability_is_declared():
    help_text = build_parser().format_help()
    for field in dataclasses.fields(RunConfig):
        assert "--" + field.name.replace("_", "-") in help_text, field.name
        assert "--" + field.name in help_text, field.name
        assert isinstance(resumable(field.name), bool)
    assert resumable("max_steps") and resumable("threads") and resumable("epochs")
    assert not any(resumable(name) for name in ("lr", "d_model", "data", "seed", "batch_size",
                                                "optimizer", "muon_momentum", "last_batch"))
