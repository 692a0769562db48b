"""Export a model to safetensors or to a Hugging Face GPT-2 directory, and load either back.

    python -m tinygpt.export CHECKPOINT --format {safetensors,hf} --out PATH

safetensors: one file with the named parameters (``model.p``) and metadata holding the config
and vocabulary. hf: a directory that ``transformers.GPT2LMHeadModel.from_pretrained`` loads
(config.json, model.safetensors, vocab.json) and that gives tinygpt's logits. Neither needs
torch or transformers here: both are written and read with the safetensors NumPy API.
"""
import argparse
import dataclasses
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from . import __version__
from .checkpoint import CheckpointError, load_checkpoint
from .files import atomic_write_bytes, atomic_write_text
from .model import GPTConfig, TinyGPT
from .tokenizer import CharTokenizer

FORMAT = "tinygpt"
HF_WEIGHTS, HF_CONFIG, HF_VOCAB = "model.safetensors", "config.json", "vocab.json"
HF_EPS = 1e-5  # tinygpt's LayerNorm epsilon

# tinygpt parameter -> Hugging Face GPT-2 name: top level, then per block (h{i}.<kind>)
_HF_TOP = {
    "wte": "transformer.wte.weight", "wpe": "transformer.wpe.weight",
    "lnf_w": "transformer.ln_f.weight", "lnf_b": "transformer.ln_f.bias",
    "head_w": "lm_head.weight",
}
_HF_BLOCK = {
    "ln1_w": "ln_1.weight", "ln1_b": "ln_1.bias",
    "attn_w": "attn.c_attn.weight", "attn_b": "attn.c_attn.bias",
    "proj_w": "attn.c_proj.weight", "proj_b": "attn.c_proj.bias",
    "ln2_w": "ln_2.weight", "ln2_b": "ln_2.bias",
    "fc_w": "mlp.c_fc.weight", "fc_b": "mlp.c_fc.bias",
    "fc2_w": "mlp.c_proj.weight", "fc2_b": "mlp.c_proj.bias",
}
# GPT-2 config keys that decide the forward pass: (transformers' default when absent, the
# values tinygpt computes the same way). Both activations are tinygpt's tanh-approximate GELU.
_HF_FIXED = {
    "activation_function": ("gelu_new", ("gelu_new", "gelu_pytorch_tanh")),
    "layer_norm_epsilon": (HF_EPS, (HF_EPS,)),
    "scale_attn_weights": (True, (True,)),
    "scale_attn_by_inverse_layer_idx": (False, (False,)),
    "add_cross_attention": (False, (False,)),
    "tie_word_embeddings": (True, (False,)),
    "attn_pdrop": (0.1, (0.0,)),
}


# ---------------------------------------------------------------- saving

def save_safetensors(path: str | Path, model: TinyGPT, tokenizer: CharTokenizer) -> None:
    """Write model.p (each tensor in the model's dtype) + config, vocabulary, dtype as metadata."""
    _check_pair(model, tokenizer)
    metadata = {
        "format": FORMAT,
        "tinygpt_version": __version__,
        "config": json.dumps(model.config.to_dict()),
        "vocab": json.dumps("".join(tokenizer.chars)),
        "dtype": model.dtype.name,
    }
    atomic_write_bytes(path, safetensors.numpy.save(dict(model.p), metadata=metadata))


def save_hf(directory: str | Path, model: TinyGPT, tokenizer: CharTokenizer) -> None:
    """Write a GPT2LMHeadModel directory: config.json, model.safetensors, vocab.json."""
    _check_pair(model, tokenizer)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {_hf_name(name): np.ascontiguousarray(_hf_layout(name, array))
               for name, array in model.p.items()}
    atomic_write_bytes(directory / HF_WEIGHTS,
                       safetensors.numpy.save(tensors, metadata={"format": "pt"}))
    atomic_write_text(directory / HF_CONFIG, json.dumps(_hf_config(model), indent=2) + "\n")
    vocab = {ch: i for i, ch in enumerate(tokenizer.chars)}
    atomic_write_text(directory / HF_VOCAB, json.dumps(vocab, indent=2) + "\n")


def _check_pair(model, tokenizer):
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} characters, "
                         f"the model's vocab_size is {model.config.vocab_size}")


def _hf_name(name):
    """tinygpt parameter name -> its Hugging Face GPT-2 name ("h3.fc_w" -> "transformer.h.3...")."""
    if name in _HF_TOP:
        return _HF_TOP[name]
    block, kind = name.split(".")
    return f"transformer.h.{block[1:]}.{_HF_BLOCK[kind]}"


def _hf_layout(name, array):
    """One layout to the other (its own inverse): only the head differs, (C, V) vs (V, C)."""
    return array.T if name == "head_w" else array


def _hf_config(model):
    """GPT-2 config.json contents for the model, as a dict."""
    cfg = model.config.to_dict()
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg["vocab_size"],
        "n_positions": cfg["max_seq_len"],
        "n_embd": cfg["d_model"],
        "n_layer": cfg["n_layers"],
        "n_head": cfg["n_heads"],
        "n_inner": 4 * cfg["d_model"],
        "activation_function": "gelu_new",
        "layer_norm_epsilon": HF_EPS,
        # tinygpt drops the embeddings and each residual branch, never attention weights
        "embd_pdrop": cfg["dropout"],
        "resid_pdrop": cfg["dropout"],
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        # a character model has no special tokens (GPT-2's defaults, 50256, are out of range)
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        # transformers 5 reads "dtype", 4.x "torch_dtype"
        "dtype": model.dtype.name,
        "torch_dtype": model.dtype.name,
    }


# ---------------------------------------------------------------- loading

def load_model(path: str | Path) -> tuple[TinyGPT, CharTokenizer]:
    """A tinygpt checkpoint (.npz), a save_safetensors file or a save_hf directory
    -> (model, tokenizer), the parameters bit for bit as saved."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        return _load_hf(path)
    if path.suffix == ".npz" or zipfile.is_zipfile(path):  # a damaged .npz says so as a checkpoint
        model, tokenizer, _, _ = load_checkpoint(path)
        return model, tokenizer
    return _load_safetensors(path)


def _read_safetensors(path):
    """A safetensors file -> (tensors {name: array}, metadata dict)."""
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except (OSError, ValueError, TypeError, safetensors.SafetensorError) as err:
        raise CheckpointError(f"{path} cannot be read as safetensors ({err}); tinygpt loads a "
                              f"checkpoint .npz, a safetensors file or a save_hf directory"
                              ) from None


def _load_safetensors(path):
    tensors, meta = _read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file not written by tinygpt "
                              f"(metadata format is {meta.get('format')!r}, not {FORMAT!r})")
    try:
        config, vocab = json.loads(meta["config"]), json.loads(meta["vocab"])
        model = TinyGPT(**config, dtype=meta["dtype"])
        tokenizer = CharTokenizer.from_vocabulary(vocab)
    except KeyError as err:
        raise CheckpointError(f"{path}: the tinygpt metadata has no {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad tinygpt metadata: {err}") from None
    _check_vocab_size(path, model, tokenizer)
    _copy_params(path, model, tensors, hf=False)
    return model, tokenizer


def _load_hf(directory):
    missing = [name for name in (HF_CONFIG, HF_WEIGHTS, HF_VOCAB)
               if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"{directory} is not a save_hf directory: it has no "
                              f"{', '.join(missing)}")
    config = _config_from_hf(directory / HF_CONFIG, _read_json(directory / HF_CONFIG))
    tensors, _ = _read_safetensors(directory / HF_WEIGHTS)
    dtypes = {array.dtype for array in tensors.values()}
    if len(dtypes) != 1 or not dtypes <= {np.dtype(np.float32), np.dtype(np.float64)}:
        raise CheckpointError(f"{directory / HF_WEIGHTS}: tinygpt needs all tensors float32 "
                              f"or all float64, got {sorted(d.name for d in dtypes)}")
    model = TinyGPT(**dataclasses.asdict(config), dtype=dtypes.pop())
    tokenizer = _tokenizer_from_hf(directory / HF_VOCAB, _read_json(directory / HF_VOCAB))
    _check_vocab_size(directory / HF_VOCAB, model, tokenizer)
    _copy_params(directory / HF_WEIGHTS, model, tensors, hf=True)
    return model, tokenizer


def _read_json(path):
    """A JSON file holding an object -> that dict."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _config_from_hf(path, config):
    """A GPT-2 config.json dict -> GPTConfig, or CheckpointError when tinygpt cannot compute
    what transformers would."""
    if config.get("model_type") != "gpt2":
        raise CheckpointError(f"{path}: model_type is {config.get('model_type')!r}, not 'gpt2'")
    for key, (default, allowed) in _HF_FIXED.items():
        value = config.get(key, default)
        if value not in allowed:
            raise CheckpointError(f"{path}: {key} is {value!r} (transformers' default when "
                                  f"absent is {default!r}); tinygpt needs {allowed[0]!r}")
    try:
        gpt = GPTConfig(vocab_size=config["vocab_size"], d_model=config["n_embd"],
                        n_heads=config["n_head"], n_layers=config["n_layer"],
                        max_seq_len=config["n_positions"],
                        dropout=config.get("resid_pdrop", 0.1))
    except KeyError as err:
        raise CheckpointError(f"{path} has no {err.args[0]!r}") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    n_inner = config.get("n_inner")
    if n_inner is not None and n_inner != 4 * gpt.d_model:
        raise CheckpointError(f"{path}: n_inner is {n_inner!r}; tinygpt's MLP is 4 * n_embd "
                              f"= {4 * gpt.d_model}")
    if config.get("embd_pdrop", 0.1) != gpt.dropout:
        raise CheckpointError(f"{path}: embd_pdrop ({config.get('embd_pdrop', 0.1)!r}) differs "
                              f"from resid_pdrop ({gpt.dropout!r}); tinygpt has one dropout")
    return gpt


def _tokenizer_from_hf(path, vocab):
    """vocab.json's {character: id} -> CharTokenizer, the ids exactly 0..V-1."""
    ids = list(vocab.values())
    if any(type(i) is not int for i in ids) or sorted(ids) != list(range(len(ids))):
        raise CheckpointError(f"{path}: the ids must be 0..{len(vocab) - 1}, each once")
    try:
        return CharTokenizer.from_vocabulary(sorted(vocab, key=vocab.__getitem__))
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _check_vocab_size(path, model, tokenizer):
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"{path}: the vocabulary has {tokenizer.vocab_size} characters, "
                              f"the config's vocab_size is {model.config.vocab_size}")


def _copy_params(path, model, tensors, hf):
    """Copy the file's tensors into model.p after checking names, shapes and dtype; with hf,
    the tensors have Hugging Face names and layout."""
    file_names = {(_hf_name(name) if hf else name): name for name in model.p}
    missing = sorted(set(file_names) - set(tensors))
    unexpected = sorted(set(tensors) - set(file_names))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not hold this model's tensors: "
                              f"missing {_some(missing)}, unexpected {_some(unexpected)}")
    for file_name, name in file_names.items():
        array, param = tensors[file_name], model.p[name]
        expected = _hf_layout(name, param) if hf else param
        if array.shape != expected.shape or array.dtype != param.dtype:
            raise CheckpointError(f"{path}: tensor {file_name!r} is {array.dtype} "
                                  f"{array.shape}, expected {param.dtype} {expected.shape}")
        param[...] = _hf_layout(name, array) if hf else array


def _some(names, limit=4):
    """A short printable list of names: the first few, then how many more."""
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinygpt export",
        description="Export a tinygpt model to a safetensors file or a Hugging Face GPT-2 "
                    "directory (loadable with transformers.GPT2LMHeadModel.from_pretrained).")
    parser.add_argument("checkpoint",
                        help="a tinygpt checkpoint (.npz), safetensors file or hf directory")
    parser.add_argument("--format", required=True, choices=("safetensors", "hf"),
                        help="safetensors: one file; hf: a transformers GPT-2 directory")
    parser.add_argument("--out", required=True, help="the file (safetensors) or directory (hf)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model, tokenizer = load_model(args.checkpoint)
        save = save_safetensors if args.format == "safetensors" else save_hf
        save(args.out, model, tokenizer)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.format}, {model.num_parameters():,} {model.dtype.name} "
          f"parameters, vocabulary of {tokenizer.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
