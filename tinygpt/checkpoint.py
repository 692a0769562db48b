"""Checkpoints: one .npz (no pickle) with config, parameters, optimizer state and vocabulary."""
import io
import json
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from .files import atomic_write_bytes
from .model import TinyGPT
from .tokenizer import CharTokenizer

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be read as a tinygpt checkpoint."""


def save_checkpoint(path, model: TinyGPT, tokenizer: CharTokenizer, optimizer=None, step: int = 0,
                    extra: Optional[dict] = None, average=None) -> None:
    """Write model + tokenizer (+ optimizer state, step, ``extra`` JSON-able dict) atomically.

    With a WeightAverage, the checkpoint's parameters are the average (what sampling uses) and
    the trained weights go with the optimizer state (what a resumed run continues from).
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "dtype": model.dtype.name,
        "step": int(step),
        "extra": extra or {},
    }
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "vocab": np.array("".join(tokenizer.chars)),
        "params": model.params if average is None else average.avg,
    }
    if optimizer is not None:
        arrays.update({f"optim_{k}": v for k, v in optimizer.state().items()})
    if average is not None:
        arrays.update(optim_trained_params=model.params, optim_average_t=np.int64(average.t))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())


def _unreadable(path, reason):
    return CheckpointError(f"{path} is not a readable tinygpt checkpoint: {reason}")


def _reason(err):
    """Why a file could not be read, in words that never suggest unpickling it: NumPy's own
    messages about object arrays advise allow_pickle=True, which would run the file's code."""
    if isinstance(err, KeyError):
        return f"it has no {err.args[0]!r} entry"
    text = str(err)
    if "pickle" in text.lower() or "object arrays" in text.lower():
        return "it holds pickled Python objects, which tinygpt never loads"
    return text


def _not_an_npz(path):
    """Why a file that is not a zip archive is no checkpoint: what it looks like instead."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "the file is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single NumPy array (.npy), not an .npz archive"
    if head[:1] == b"\x80":
        return "it is a Python pickle, which tinygpt never loads"
    return "it is not an .npz (zip) archive, or it is cut short"


def load_checkpoint(path) -> tuple[TinyGPT, CharTokenizer, dict, Optional[dict]]:
    """Read a checkpoint -> (model, tokenizer, meta dict, optimizer state dict or None).

    Never unpickles: a file holding Python objects is refused with CheckpointError."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if not zipfile.is_zipfile(path):
            raise _unreadable(path, _not_an_npz(path))
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        meta = json.loads(str(arrays["meta"]))
        vocab = str(arrays["vocab"])
        params = arrays["params"]
        model = TinyGPT(**meta["config"], dtype=meta["dtype"])
        if params.shape != model.params.shape:
            raise ValueError(f"params has shape {params.shape}, config needs {model.params.shape}")
        model.params[...] = params
        tokenizer = CharTokenizer.from_vocabulary(vocab)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        raise _unreadable(path, _reason(err)) from None
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"{path}: vocabulary has {tokenizer.vocab_size} characters, "
                              f"model expects {model.config.vocab_size}")
    optim = None
    if "optim_m" in arrays:
        optim = {k[len("optim_"):]: v for k, v in arrays.items() if k.startswith("optim_")}
    return model, tokenizer, meta, optim
