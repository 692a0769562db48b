"""tinygpt: train a tiny GPT-2-style character model on a CPU with NumPy and Cython kernels."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import load_dataset, load_text
from .model import TinyGPT
from .ops import (available_kernels, backend_summary, get_backend, get_num_threads, op_backends,
                  set_backend, set_num_threads, using_backend)
from .tokenizer import CharTokenizer
from .trainer import Trainer, evaluate, train_model

__all__ = [
    "CharTokenizer", "TinyGPT", "train_model", "Trainer", "evaluate",
    "load_dataset", "load_text", "save_checkpoint", "load_checkpoint", "CheckpointError",
    "set_backend", "get_backend", "using_backend", "set_num_threads", "get_num_threads",
    "available_kernels", "op_backends", "backend_summary",
]
__version__ = "0.1.0"
