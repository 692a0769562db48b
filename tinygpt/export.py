"""Export a model to safetensors or to a Hugging Face transformers directory, and load either back.

    python -m tinygpt.export CHECKPOINT --format {safetensors,hf} --out PATH

safetensors: one file with the named parameters (``model.p``) and metadata holding the config
and vocabulary. hf: a directory (config.json, model.safetensors, vocab.json) that
``transformers.AutoModelForCausalLM.from_pretrained`` loads and that gives tinygpt's logits: a
GPT-2 model for learned positions, a GPT-NeoX model (sequential residuals, rotary over the whole
head) for rotary ones, either with GELU (tanh) or squared ReLU. Neither format needs torch or
transformers here: both are written and read with the safetensors NumPy API.
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
from .model import ROTARY_BASE, GPTConfig, TinyGPT
from .tokenizer import CharTokenizer

FORMAT = "tinygpt"
HF_WEIGHTS, HF_CONFIG, HF_VOCAB = "model.safetensors", "config.json", "vocab.json"
HF_EPS = 1e-5  # tinygpt's LayerNorm epsilon

# transformers' activation (ACT2FN name) -> tinygpt's mlp; the first for each mlp is written.
# gelu_new and gelu_pytorch_tanh are both the tanh approximation; relu2 is max(x, 0)^2.
_HF_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu2": "relu2"}
# GPT-NeoX's rotary settings that tinygpt computes (GPT-NeoX's half-split layout is tinygpt's)
_NEOX_ROPE = {"rope_type": "default", "rope_theta": ROTARY_BASE, "partial_rotary_factor": 1.0}
# the same in transformers 4.x's keys (it rotates a quarter of each head when rotary_pct is absent)
_NEOX_ROPE_4X = {"rotary_emb_base": ROTARY_BASE, "rotary_pct": 1.0}


@dataclasses.dataclass(frozen=True)
class _HFFormat:
    """A transformers model that computes tinygpt's forward for one ``position``."""
    model_type: str
    architecture: str
    position: str          # the tinygpt position option it expresses
    fields: dict           # GPTConfig field -> config.json key
    inner: tuple           # (key of the MLP width, transformers' default when absent)
    activation: tuple      # (key of the MLP activation, transformers' default when absent)
    dropout: tuple         # (keys that are all tinygpt's dropout, default when absent)
    # config.json keys that decide the forward pass: (transformers' default when absent, the
    # values tinygpt computes the same way; the first is written)
    fixed: dict
    written: dict          # further keys written (of these, tinygpt checks the rotary's)
    top: dict              # tinygpt parameter -> tensor name
    block: dict            # a block's parameter -> tensor name under block_prefix
    block_prefix: str      # with {i} the layer
    transposed: frozenset  # parameters stored transposed, (out, in)
    qkv_by_head: bool      # q, k, v interleaved per head: rows (H, 3, D), not tinygpt's (3, H, D)


_GPT2 = _HFFormat(
    model_type="gpt2", architecture="GPT2LMHeadModel", position="learned",
    fields={"vocab_size": "vocab_size", "d_model": "n_embd", "n_heads": "n_head",
            "n_layers": "n_layer", "max_seq_len": "n_positions"},
    inner=("n_inner", None),  # None: 4 * n_embd
    activation=("activation_function", "gelu_new"),
    # tinygpt drops the embeddings and each residual branch, never attention weights
    dropout=(("resid_pdrop", "embd_pdrop"), 0.1),
    fixed={
        "layer_norm_epsilon": (HF_EPS, (HF_EPS,)),
        "scale_attn_weights": (True, (True,)),
        "scale_attn_by_inverse_layer_idx": (False, (False,)),
        "add_cross_attention": (False, (False,)),
        "tie_word_embeddings": (True, (False,)),
        "attn_pdrop": (0.1, (0.0,)),
    },
    written={"reorder_and_upcast_attn": False, "initializer_range": 0.02, "use_cache": True},
    top={"wte": "transformer.wte.weight", "wpe": "transformer.wpe.weight",
         "lnf_w": "transformer.ln_f.weight", "lnf_b": "transformer.ln_f.bias",
         "head_w": "lm_head.weight"},
    block={"ln1_w": "ln_1.weight", "ln1_b": "ln_1.bias",
           "attn_w": "attn.c_attn.weight", "attn_b": "attn.c_attn.bias",
           "proj_w": "attn.c_proj.weight", "proj_b": "attn.c_proj.bias",
           "ln2_w": "ln_2.weight", "ln2_b": "ln_2.bias",
           "fc_w": "mlp.c_fc.weight", "fc_b": "mlp.c_fc.bias",
           "fc2_w": "mlp.c_proj.weight", "fc2_b": "mlp.c_proj.bias"},
    block_prefix="transformer.h.{i}.",
    transposed=frozenset({"head_w"}),  # GPT-2's Conv1D weights are (in, out) like tinygpt's
    qkv_by_head=False,
)

_NEOX = _HFFormat(
    model_type="gpt_neox", architecture="GPTNeoXForCausalLM", position="rotary",
    fields={"vocab_size": "vocab_size", "d_model": "hidden_size",
            "n_heads": "num_attention_heads", "n_layers": "num_hidden_layers",
            "max_seq_len": "max_position_embeddings"},
    inner=("intermediate_size", 24576),
    activation=("hidden_act", "gelu"),  # transformers' "gelu" is the exact erf GELU
    # hidden_dropout drops the embeddings and each residual branch, as tinygpt's dropout does
    dropout=(("hidden_dropout",), 0.0),
    fixed={
        "use_parallel_residual": (True, (False,)),
        "layer_norm_eps": (HF_EPS, (HF_EPS,)),
        "attention_bias": (True, (True,)),
        "tie_word_embeddings": (False, (False,)),
        "attention_dropout": (0.0, (0.0,)),
    },
    # transformers 5 reads rope_parameters, 4.x rotary_emb_base and rotary_pct
    written={"rope_parameters": _NEOX_ROPE, **_NEOX_ROPE_4X,
             "initializer_range": 0.02, "use_cache": True},
    # transformers 5 loads embed_out (the name 4.x and the Hub's GPT-NeoX models use) as lm_head
    top={"wte": "gpt_neox.embed_in.weight",
         "lnf_w": "gpt_neox.final_layer_norm.weight", "lnf_b": "gpt_neox.final_layer_norm.bias",
         "head_w": "embed_out.weight"},
    block={"ln1_w": "input_layernorm.weight", "ln1_b": "input_layernorm.bias",
           "attn_w": "attention.query_key_value.weight",
           "attn_b": "attention.query_key_value.bias",
           "proj_w": "attention.dense.weight", "proj_b": "attention.dense.bias",
           "ln2_w": "post_attention_layernorm.weight", "ln2_b": "post_attention_layernorm.bias",
           "fc_w": "mlp.dense_h_to_4h.weight", "fc_b": "mlp.dense_h_to_4h.bias",
           "fc2_w": "mlp.dense_4h_to_h.weight", "fc2_b": "mlp.dense_4h_to_h.bias"},
    block_prefix="gpt_neox.layers.{i}.",
    transposed=frozenset({"head_w", "attn_w", "proj_w", "fc_w", "fc2_w"}),  # torch Linear
    qkv_by_head=True,
)

_HF_FORMATS = (_GPT2, _NEOX)
_HF_BY_TYPE = {fmt.model_type: fmt for fmt in _HF_FORMATS}


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
    """Write a transformers directory (config.json, model.safetensors, vocab.json): GPT-2 for
    learned positions, GPT-NeoX for rotary ones. ValueError for a model no transformers
    model computes."""
    _check_pair(model, tokenizer)
    fmt = _hf_format(model.config)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {_hf_name(fmt, name): _to_hf(fmt, model.config, name, array)
               for name, array in model.p.items()}
    atomic_write_bytes(directory / HF_WEIGHTS,
                       safetensors.numpy.save(tensors, metadata={"format": "pt"}))
    atomic_write_text(directory / HF_CONFIG,
                      json.dumps(_hf_config(fmt, model), indent=2) + "\n")
    vocab = {ch: i for i, ch in enumerate(tokenizer.chars)}
    atomic_write_text(directory / HF_VOCAB, json.dumps(vocab, indent=2) + "\n")


def _check_pair(model, tokenizer):
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} characters, "
                         f"the model's vocab_size is {model.config.vocab_size}")


def _hf_format(config):
    """The transformers model that computes this GPTConfig's forward, or ValueError."""
    formats = [fmt for fmt in _HF_FORMATS if fmt.position == config.position]
    if not formats or config.mlp not in _HF_ACTIVATIONS.values():
        raise ValueError(
            f"no transformers model computes position={config.position!r} with "
            f"mlp={config.mlp!r}: the hf format covers position "
            f"{' or '.join(repr(fmt.position) for fmt in _HF_FORMATS)} (GPT-2, GPT-NeoX) with "
            f"mlp {' or '.join(repr(mlp) for mlp in dict.fromkeys(_HF_ACTIVATIONS.values()))}")
    return formats[0]


def _hf_name(fmt, name):
    """tinygpt parameter name -> its tensor name ("h3.fc_w" -> "transformer.h.3.mlp.c_fc...")."""
    if name in fmt.top:
        return fmt.top[name]
    block, kind = name.split(".")
    return fmt.block_prefix.format(i=block[1:]) + fmt.block[kind]


def _to_hf(fmt, config, name, array):
    """A tinygpt parameter in the format's layout (a new contiguous array or the same one)."""
    kind = name.split(".")[-1]
    if kind in fmt.transposed:
        array = array.T
    if fmt.qkv_by_head and kind in ("attn_w", "attn_b"):
        array = _swap_row_groups(array, 3, config.n_heads)
    return np.ascontiguousarray(array)


def _from_hf(fmt, config, name, array):
    """_to_hf's inverse: a tensor of the format -> tinygpt's layout of parameter ``name``."""
    kind = name.split(".")[-1]
    if fmt.qkv_by_head and kind in ("attn_w", "attn_b"):
        array = _swap_row_groups(array, config.n_heads, 3)
    return array.T if kind in fmt.transposed else array


def _swap_row_groups(array, outer, inner):
    """Rows ordered (outer, inner, n) -> ordered (inner, outer, n), n = rows / (outer * inner):
    tinygpt's [q | k | v] with the heads side by side (3, H, D) <-> per head (H, 3, D)."""
    grouped = array.reshape(outer, inner, -1, *array.shape[1:])
    return grouped.swapaxes(0, 1).reshape(array.shape)


def _hf_config(fmt, model):
    """config.json contents for the model in the format, as a dict."""
    cfg = model.config.to_dict()
    activation = next(name for name, mlp in _HF_ACTIVATIONS.items() if mlp == cfg["mlp"])
    dropout_keys, _ = fmt.dropout
    return {
        "model_type": fmt.model_type,
        "architectures": [fmt.architecture],
        **{key: cfg[field] for field, key in fmt.fields.items()},
        fmt.inner[0]: 4 * cfg["d_model"],
        fmt.activation[0]: activation,
        **{key: cfg["dropout"] for key in dropout_keys},
        **{key: allowed[0] for key, (_, allowed) in fmt.fixed.items()},
        **fmt.written,
        # a character model has no special tokens (GPT-2's 50256 is out of range, and
        # GPT-NeoX's 0 and 2 would make two characters begin and end every text)
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
    _copy_params(path, model, tensors)
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
    _copy_params(directory / HF_WEIGHTS, model, tensors, _hf_format(model.config))
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
    """A GPT-2 or GPT-NeoX config.json dict -> GPTConfig, or CheckpointError when tinygpt
    cannot compute what transformers would."""
    fmt = _HF_BY_TYPE.get(config.get("model_type"))
    if fmt is None:
        raise CheckpointError(f"{path}: model_type is {config.get('model_type')!r}, not "
                              f"{' or '.join(map(repr, _HF_BY_TYPE))}")
    for key, (default, allowed) in fmt.fixed.items():
        value = config.get(key, default)
        if value not in allowed:
            raise CheckpointError(f"{path}: {key} is {value!r} (transformers' default when "
                                  f"absent is {default!r}); tinygpt needs {allowed[0]!r}")
    key, default = fmt.activation
    activation = config.get(key, default)
    if activation not in _HF_ACTIVATIONS:
        raise CheckpointError(f"{path}: {key} is {activation!r} (transformers' default when "
                              f"absent is {default!r}); tinygpt computes "
                              f"{', '.join(map(repr, _HF_ACTIVATIONS))}")
    keys, default = fmt.dropout
    dropouts = {key: config.get(key, default) for key in keys}
    if any(p != dropouts[keys[0]] for p in dropouts.values()):
        raise CheckpointError(f"{path}: {' and '.join(f'{k} ({p!r})' for k, p in dropouts.items())}"
                              f" differ; tinygpt has one dropout")
    try:
        gpt = GPTConfig(**{field: config[key] for field, key in fmt.fields.items()},
                        dropout=dropouts[keys[0]], position=fmt.position,
                        mlp=_HF_ACTIVATIONS[activation])
    except KeyError as err:
        raise CheckpointError(f"{path} has no {err.args[0]!r}") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    key, default = fmt.inner
    inner = config.get(key, default)
    if inner is not None and inner != 4 * gpt.d_model:  # GPT-2's None is 4 * n_embd
        raise CheckpointError(f"{path}: {key} is {inner!r}; tinygpt's MLP is 4 * "
                              f"{fmt.fields['d_model']} = {4 * gpt.d_model}")
    if gpt.position == "rotary":
        _check_rotary(path, config, gpt.head_size)
    return gpt


def _check_rotary(path, config, head_size):
    """CheckpointError unless GPT-NeoX rotates as tinygpt does: the settings as transformers 5
    resolves them (rope_scaling, else rope_parameters, a missing key from rotary_emb_base or
    rotary_pct), 4.x's own keys where present, and the head size the rotary spans."""
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise CheckpointError(f"{path}: the rotary settings must be a JSON object, got {rope!r}")
    found = {
        "rope_type": rope.get("rope_type", rope.get("type", "default")),
        "rope_theta": rope.get("rope_theta", config.get("rotary_emb_base", ROTARY_BASE)),
        "partial_rotary_factor": rope.get("partial_rotary_factor", config.get("rotary_pct", 0.25)),
        **{key: config.get(key, value) for key, value in _NEOX_ROPE_4X.items()},
        "head_dim": config.get("head_dim", head_size),
    }
    needed = {**_NEOX_ROPE, **_NEOX_ROPE_4X, "head_dim": head_size}
    for key, value in found.items():
        if value != needed[key]:
            raise CheckpointError(f"{path}: the rotary embedding's {key} is {value!r}; tinygpt "
                                  f"computes {needed[key]!r}")


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


def _copy_params(path, model, tensors, fmt=None):
    """Copy the file's tensors into model.p after checking names, shapes and dtype; with an
    _HFFormat fmt, the tensors have its names and layout."""
    file_names = {(_hf_name(fmt, name) if fmt else name): name for name in model.p}
    missing = sorted(set(file_names) - set(tensors))
    unexpected = sorted(set(tensors) - set(file_names))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not hold this model's tensors: "
                              f"missing {_some(missing)}, unexpected {_some(unexpected)}")
    for file_name, name in file_names.items():
        array, param = tensors[file_name], model.p[name]
        expected = _to_hf(fmt, model.config, name, param) if fmt else param
        if array.shape != expected.shape or array.dtype != param.dtype:
            raise CheckpointError(f"{path}: tensor {file_name!r} is {array.dtype} "
                                  f"{array.shape}, expected {param.dtype} {expected.shape}")
        param[...] = _from_hf(fmt, model.config, name, array) if fmt else array


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
        description="Export a tinygpt model to a safetensors file or a Hugging Face "
                    "transformers directory (loadable with "
                    "transformers.AutoModelForCausalLM.from_pretrained).")
    parser.add_argument("checkpoint",
                        help="a tinygpt checkpoint (.npz), safetensors file or hf directory")
    parser.add_argument("--format", required=True, choices=("safetensors", "hf"),
                        help="safetensors: one file; hf: a transformers directory, GPT-2 for "
                             "learned positions, GPT-NeoX for rotary ones")
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
