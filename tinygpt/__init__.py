"""tinygpt: train a tiny GPT-2-style character model on a CPU with NumPy and Cython kernels."""
__version__ = "0.1.0"  # the one place the version is written (pyproject reads it)

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import RunConfig, TrainConfig
from .data import load_dataset, load_text
from .model import TinyGPT
from .ops import (available_kernels, backend_summary, get_backend, get_num_threads, op_backends,
                  set_backend, set_num_threads, using_backend)
from .tokenizer import CharTokenizer
from .textgen import TextGenerator, load
from .trainer import Trainer, evaluate, train_model

_EXPORTS = ("load_model", "save_hf", "save_safetensors")


def __getattr__(name):
    """tinygpt.export's functions, imported on first use: importing the module here would make
    ``python -m tinygpt.export`` warn that it was imported before it ran."""
    if name in _EXPORTS:
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'tinygpt' has no attribute {name!r}")


__all__ = [
    "CharTokenizer", "TinyGPT", "train_model", "Trainer", "TrainConfig", "RunConfig", "evaluate",
    "load", "TextGenerator", "load_dataset", "load_text", "save_checkpoint", "load_checkpoint",
    "CheckpointError", "load_model", "save_safetensors", "save_hf",
    "set_backend", "get_backend", "using_backend", "set_num_threads", "get_num_threads",
    "available_kernels", "op_backends", "backend_summary",
]
