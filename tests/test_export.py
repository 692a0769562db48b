"""Export to safetensors and to Hugging Face directories (GPT-2, GPT-NeoX): bitwise round trips,
logits parity with transformers, the command line, and clear errors for files tinygpt cannot
load or write."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import tinygpt
import tinygpt.model
from tinygpt import CharTokenizer, TinyGPT
from tinygpt.checkpoint import CheckpointError, save_checkpoint
from tinygpt.export import load_model, save_hf, save_safetensors

from optional import import_or_skip

TEXT = "hello, wörld!\n\"quoted\" \\ tab\t"  # characters JSON must escape
# every (position, mlp): learned positions export as GPT-2, rotary ones as GPT-NeoX
ARCHITECTURES = [(position, mlp) for position in tinygpt.model.POSITIONS
                 for mlp in tinygpt.model.MLPS]


def make_model(tokenizer, dtype=np.float32, d_model=32, n_heads=2, n_layers=2, max_seq_len=16,
               dropout=0.1, seed=0, position="learned", mlp="gelu"):
    """A TinyGPT moved away from its init (biases and LayerNorm gains non-trivial)."""
    model = TinyGPT(tokenizer.vocab_size, d_model, n_heads, n_layers, max_seq_len,
                    dropout=dropout, position=position, mlp=mlp, seed=seed, dtype=dtype)
    model.params += np.random.default_rng(seed + 1).normal(0.0, 0.05, model.params.shape)
    return model


def assert_same_model(loaded, tokenizer_loaded, model, tokenizer):
    assert loaded.dtype == model.dtype
    assert loaded.config == model.config
    assert loaded.params.tobytes() == model.params.tobytes()  # bit for bit
    assert tokenizer_loaded.chars == tokenizer.chars


def import_hf():
    """(torch, transformers), or a skip when missing; under TINYGPT_REQUIRE_HF=1 (CI) a failure."""
    return import_or_skip("TINYGPT_REQUIRE_HF", "torch", "transformers")


@pytest.fixture
def tokenizer():
    return CharTokenizer(TEXT)


# ---------------------------------------------------------------- safetensors

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_safetensors_round_trip_is_bitwise(tmp_path, tokenizer, dtype):
    model = make_model(tokenizer, dtype=dtype, dropout=0.1)
    path = tmp_path / "model.safetensors"
    save_safetensors(path, model, tokenizer)
    assert_same_model(*load_model(path), model, tokenizer)


def test_safetensors_metadata_and_tensors(tmp_path, tokenizer):
    model = make_model(tokenizer, dropout=0.25)
    path = tmp_path / "model.safetensors"
    save_safetensors(path, model, tokenizer)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    assert meta["format"] == "tinygpt"
    assert meta["tinygpt_version"] == tinygpt.__version__
    assert meta["dtype"] == "float32"
    assert json.loads(meta["config"]) == dataclasses.asdict(model.config)
    assert json.loads(meta["vocab"]) == "".join(tokenizer.chars)
    assert set(tensors) == set(model.p)
    for name, array in tensors.items():
        assert array.dtype == np.float32 and np.array_equal(array, model.p[name]), name


def test_a_config_of_numpy_numbers_saves_as_json(tmp_path, tokenizer):
    model = TinyGPT(np.int64(tokenizer.vocab_size), np.int64(32), np.int32(2), np.int64(1),
                    np.int64(8), dropout=np.float32(0.1))
    save_safetensors(tmp_path / "m.safetensors", model, tokenizer)
    save_hf(tmp_path / "hf", model, tokenizer)
    for path in (tmp_path / "m.safetensors", tmp_path / "hf"):
        assert_same_model(*load_model(path), model, tokenizer)


def test_save_rejects_a_tokenizer_of_another_size(tmp_path, tokenizer):
    model = make_model(CharTokenizer("abc"))
    with pytest.raises(ValueError, match="vocab_size"):
        save_safetensors(tmp_path / "m.safetensors", model, tokenizer)
    with pytest.raises(ValueError, match="vocab_size"):
        save_hf(tmp_path / "hf", model, tokenizer)


# ---------------------------------------------------------------- Hugging Face directory

@pytest.mark.parametrize("position, mlp", ARCHITECTURES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hf_round_trip_is_bitwise(tmp_path, tokenizer, dtype, position, mlp):
    model = make_model(tokenizer, dtype=dtype, position=position, mlp=mlp)
    save_hf(tmp_path / "new" / "hf", model, tokenizer)  # creates the folders
    assert_same_model(*load_model(tmp_path / "new" / "hf"), model, tokenizer)


def test_hf_files(tmp_path, tokenizer):
    model = make_model(tokenizer)
    save_hf(tmp_path, model, tokenizer)
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert (config["model_type"], config["n_embd"], config["n_layer"], config["n_head"],
            config["n_positions"], config["n_inner"], config["vocab_size"]) == \
        ("gpt2", 32, 2, 2, 16, 128, tokenizer.vocab_size)
    assert config["tie_word_embeddings"] is False
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert [vocab[ch] for ch in TEXT] == tokenizer.encode(TEXT)
    with safetensors.safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert np.array_equal(f.get_tensor("lm_head.weight"), model.p["head_w"].T)
        assert np.array_equal(f.get_tensor("transformer.h.1.mlp.c_proj.weight"),
                              model.p["h1.fc2_w"])


def test_hf_neox_files(tmp_path, tokenizer):
    model = make_model(tokenizer, d_model=24, n_heads=3, position="rotary", mlp="relu2",
                       dropout=0.2)
    save_hf(tmp_path, model, tokenizer)
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert (config["model_type"], config["architectures"], config["hidden_size"],
            config["num_hidden_layers"], config["num_attention_heads"],
            config["max_position_embeddings"], config["intermediate_size"],
            config["vocab_size"], config["hidden_act"], config["hidden_dropout"]) == \
        ("gpt_neox", ["GPTNeoXForCausalLM"], 24, 2, 3, 16, 96, tokenizer.vocab_size, "relu2", 0.2)
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0,
                                         "partial_rotary_factor": 1.0}
    assert (config["rotary_pct"], config["rotary_emb_base"]) == (1.0, 10000.0)  # transformers 4
    assert (config["use_parallel_residual"], config["tie_word_embeddings"],
            config["attention_bias"], config["attention_dropout"]) == (False, False, True, 0.0)
    assert config["bos_token_id"] is config["eos_token_id"] is config["pad_token_id"] is None
    with safetensors.safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    assert "gpt_neox.embed_in.weight" in tensors and "gpt_neox.layers.1.mlp.dense_4h_to_h.bias" \
        in tensors and len(tensors) == len(model.p)
    assert np.array_equal(tensors["embed_out.weight"], model.p["head_w"].T)
    assert np.array_equal(tensors["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"],
                          model.p["h1.fc_w"].T)
    # query_key_value: torch's (out, in), its rows head by head, each head's q, k, v in turn
    qkv_w = tensors["gpt_neox.layers.1.attention.query_key_value.weight"].reshape(3, 3, 8, 24)
    qkv_b = tensors["gpt_neox.layers.1.attention.query_key_value.bias"].reshape(3, 3, 8)
    for head in range(3):
        for part in range(3):  # q, k, v
            columns = slice(part * 24 + head * 8, part * 24 + (head + 1) * 8)
            assert np.array_equal(qkv_w[head, part], model.p["h1.attn_w"][:, columns].T)
            assert np.array_equal(qkv_b[head, part], model.p["h1.attn_b"][columns])


@pytest.mark.parametrize("option, value", [("position", "alibi"), ("mlp", "swiglu")])
def test_save_hf_refuses_what_no_transformers_model_computes(tmp_path, tokenizer, monkeypatch,
                                                             option, value):
    """A future option no format covers (here one allowed for the test) is refused by name."""
    allowed = {"position": "POSITIONS", "mlp": "MLPS"}[option]
    monkeypatch.setattr(tinygpt.model, allowed, getattr(tinygpt.model, allowed) + (value,))
    model = make_model(tokenizer, **{option: value})
    with pytest.raises(ValueError, match=f"no transformers model computes .*{option}={value!r}"):
        save_hf(tmp_path, model, tokenizer)
    assert not (tmp_path / "config.json").exists()


def test_save_hf_onto_a_file_is_an_error(tmp_path, tokenizer):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="taken"):
        save_hf(target, make_model(tokenizer), tokenizer)


def load_hf_model(transformers, directory, position):
    """transformers' model for a save_hf directory, checked to be the expected class and to use
    every tensor."""
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(directory,
                                                                 output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert type(hf).__name__ == {"learned": "GPT2LMHeadModel",
                                 "rotary": "GPTNeoXForCausalLM"}[position]
    return hf.eval()


def hf_logits(torch, hf, ids):
    with torch.no_grad():
        return hf(torch.from_numpy(ids)).logits.numpy()


# Tolerances, relative to the logits' largest magnitude. float32: its epsilon is 1.2e-7 and the
# two sides sum in other orders (measured up to 4e-7). float64: 1e-10, except with rotary
# positions: transformers computes the angles in float32 for every dtype (inv_freq from a
# float32 arange, position * inv_freq and cos, sin in float32), so its tables are off tinygpt's
# float64 ones by up to about T * 2^-24 (2e-7 at T = 16) and the logits by a few 1e-9; with
# transformers' own tables tinygpt agrees to 1e-10 (test_..._rotary_angles below).
TOLERANCE = {("learned", "float32"): 1e-5, ("rotary", "float32"): 1e-5,
             ("learned", "float64"): 1e-10, ("rotary", "float64"): 1e-7}


@pytest.mark.parametrize("position, mlp", ARCHITECTURES)
@pytest.mark.parametrize("n_vocab, d_model, n_heads, n_layers, max_seq_len, dtype", [
    (65, 64, 4, 3, 64, np.float32),
    (11, 32, 2, 2, 16, np.float64),
])
def test_transformers_gives_the_same_logits(tmp_path, position, mlp, n_vocab, d_model, n_heads,
                                            n_layers, max_seq_len, dtype):
    torch, transformers = import_hf()
    tokenizer = CharTokenizer("".join(chr(ord("!") + i) for i in range(n_vocab)))
    model = make_model(tokenizer, dtype, d_model, n_heads, n_layers, max_seq_len,
                       position=position, mlp=mlp)
    save_hf(tmp_path, model, tokenizer)
    hf = load_hf_model(transformers, tmp_path, position)
    assert hf.dtype == getattr(torch, np.dtype(dtype).name)  # from config.json's dtype
    tolerance = TOLERANCE[position, np.dtype(dtype).name]
    rng = np.random.default_rng(0)
    for T in (max_seq_len, 13, 1):
        ids = rng.integers(0, n_vocab, size=(2, T))
        expected = hf_logits(torch, hf, ids)
        logits = model.forward(ids)
        assert logits.shape == expected.shape
        scale = float(np.abs(expected).max())
        diff = float(np.abs(logits - expected).max())
        assert diff <= tolerance * scale, \
            f"max |tinygpt - transformers| logits = {diff:.3g} (scale {scale:.3g}) at T={T}"
        print(f"{position} {mlp}, d_model {d_model}, {n_layers} layers, "
              f"{np.dtype(dtype).name}, T={T}: max |tinygpt - transformers| = {diff:.3g} "
              f"(scale {scale:.3g})")


@pytest.mark.parametrize("mlp", tinygpt.model.MLPS)
def test_transformers_float64_differs_only_by_its_float32_rotary_angles(tmp_path, tokenizer,
                                                                         mlp):
    torch, transformers = import_hf()
    model = make_model(tokenizer, np.float64, position="rotary", mlp=mlp)
    save_hf(tmp_path, model, tokenizer)
    hf = load_hf_model(transformers, tmp_path, "rotary")
    T, half = model.config.max_seq_len, model.config.head_size // 2
    with torch.no_grad():  # transformers' tables: (1, T, D), each angle twice (half-split)
        cos, sin = hf.gpt_neox.rotary_emb(torch.zeros(1, dtype=torch.float64),
                                          torch.arange(T)[None])
    assert np.array_equal(cos[0, :, :half].numpy(), cos[0, :, half:].numpy())
    assert np.abs(cos[0, :, :half].numpy() - model.rope[0]).max() < T * 2.0 ** -24
    model.rope = tuple(np.ascontiguousarray(table[0, :, :half].numpy()) for table in (cos, sin))
    ids = np.random.default_rng(0).integers(0, tokenizer.vocab_size, size=(2, T))
    expected = hf_logits(torch, hf, ids)
    assert np.abs(model.forward(ids) - expected).max() <= 1e-10 * np.abs(expected).max()


def test_transformers_relu2_is_squared_relu():
    """The activation config.json names for mlp="relu2" is max(x, 0)^2 in transformers."""
    torch, transformers = import_hf()
    x = np.linspace(-3.0, 3.0, 601)
    relu2 = transformers.activations.ACT2FN["relu2"](torch.from_numpy(x)).numpy()
    assert np.array_equal(relu2, np.maximum(x, 0.0) ** 2)


@pytest.mark.parametrize("position", tinygpt.model.POSITIONS)
def test_transformers_greedy_generation_is_tinygpts(tmp_path, tokenizer, position):
    """A cached decode in transformers (no special tokens: nothing stops it early) picks
    tinygpt's tokens."""
    torch, transformers = import_hf()
    model = make_model(tokenizer, np.float64, position=position, mlp="relu2")
    save_hf(tmp_path, model, tokenizer)
    hf = load_hf_model(transformers, tmp_path, position)
    prompt = np.random.default_rng(0).integers(0, tokenizer.vocab_size, size=(2, 4))
    with torch.no_grad():
        expected = hf.generate(torch.from_numpy(prompt), max_new_tokens=12,
                               do_sample=False).numpy()
    assert np.array_equal(model.generate(prompt, 12, temperature=0), expected)


# ---------------------------------------------------------------- the command line

def run_export(*args):
    return subprocess.run([sys.executable, "-m", "tinygpt.export", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fmt, position, mlp", [("safetensors", "learned", "gelu"),
                                               ("hf", "learned", "gelu"),
                                               ("hf", "rotary", "relu2")])
def test_cli_exports_a_checkpoint(tmp_path, tokenizer, fmt, position, mlp):
    model = make_model(tokenizer, position=position, mlp=mlp)
    checkpoint = tmp_path / "ckpt.npz"
    save_checkpoint(checkpoint, model, tokenizer, step=7)
    out = tmp_path / ("model.safetensors" if fmt == "safetensors" else "hf")
    done = run_export(checkpoint, "--format", fmt, "--out", out)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout and len(done.stdout.splitlines()) == 1
    assert_same_model(*load_model(out), model, tokenizer)
    assert_same_model(*load_model(checkpoint), model, tokenizer)


@pytest.mark.parametrize("case", ["missing", "corrupt", "out_is_a_file"])
def test_cli_errors_without_a_traceback(tmp_path, tokenizer, case):
    checkpoint, out = tmp_path / "ckpt.npz", tmp_path / "out"
    if case == "corrupt":
        checkpoint.write_bytes(b"\x00 this is not a checkpoint \x00" * 8)
    if case == "out_is_a_file":
        save_checkpoint(checkpoint, make_model(tokenizer), tokenizer)
        out.write_text("a file")
    done = run_export(checkpoint, "--format", "hf", "--out", out)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr, done.stderr
    # the last line: runpy may warn before it that tinygpt/__init__.py imports tinygpt.export
    assert done.stderr.splitlines()[-1].startswith("error: "), done.stderr
    assert str(checkpoint if case != "out_is_a_file" else out) in done.stderr


# ---------------------------------------------------------------- load_model errors

def test_load_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")


def test_load_foreign_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    path.write_bytes(safetensors.numpy.save({"weight": np.ones((2, 3), np.float32)}))
    with pytest.raises(CheckpointError, match="not written by tinygpt"):
        load_model(path)


def test_load_tinygpt_metadata_with_other_tensors(tmp_path, tokenizer):
    model = make_model(tokenizer)
    path = tmp_path / "model.safetensors"
    save_safetensors(path, model, tokenizer)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    tensors = {("head" if name == "head_w" else name): np.array(array)
               for name, array in model.p.items()}
    path.write_bytes(safetensors.numpy.save(tensors, metadata=meta))
    with pytest.raises(CheckpointError, match="missing head_w, unexpected head"):
        load_model(path)


def test_load_tinygpt_safetensors_with_missing_metadata(tmp_path, tokenizer):
    model = make_model(tokenizer)
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors.numpy.save(dict(model.p), metadata={"format": "tinygpt"}))
    with pytest.raises(CheckpointError, match="no 'config'"):
        load_model(path)


def test_load_wrong_shape(tmp_path, tokenizer):
    model = make_model(tokenizer)
    save_safetensors(tmp_path / "m.safetensors", model, tokenizer)
    with safetensors.safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    tensors = dict(model.p, wpe=np.zeros((8, 32), np.float32))
    (tmp_path / "m.safetensors").write_bytes(safetensors.numpy.save(tensors, metadata=meta))
    with pytest.raises(CheckpointError, match=r"'wpe' is float32 \(8, 32\), expected float32 "
                                              r"\(16, 32\)"):
        load_model(tmp_path / "m.safetensors")


def edit_hf_dir(directory, config=None, vocab=None, drop_tensor=None, drop_file=None,
                drop_keys=()):
    """Change a save_hf directory: update config.json or drop keys from it, replace vocab.json,
    drop a tensor or a whole file."""
    if vocab is not None:
        (directory / "vocab.json").write_text(json.dumps(vocab))
    if config or drop_keys:
        path = directory / "config.json"
        config = {**json.loads(path.read_text()), **(config or {})}
        path.write_text(json.dumps({k: v for k, v in config.items() if k not in drop_keys}))
    if drop_tensor:
        path = directory / "model.safetensors"
        with safetensors.safe_open(str(path), framework="numpy") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys() if name != drop_tensor}
        path.write_bytes(safetensors.numpy.save(tensors, metadata={"format": "pt"}))
    if drop_file:
        (directory / drop_file).unlink()


@pytest.mark.parametrize("edit, message", [
    (dict(config={"tie_word_embeddings": True}, drop_tensor="lm_head.weight"),
     "tie_word_embeddings is True"),
    (dict(config={"tie_word_embeddings": None}), "tie_word_embeddings is None"),
    (dict(config={"activation_function": "relu"}), "activation_function is 'relu'"),
    (dict(config={"n_inner": 100}), "n_inner is 100"),
    (dict(config={"embd_pdrop": 0.2}), r"resid_pdrop \(0.1\) and embd_pdrop \(0.2\) differ"),
    (dict(config={"model_type": "llama"}), "model_type is 'llama'"),
    (dict(config={"layer_norm_epsilon": 1e-6}), "layer_norm_epsilon"),
    (dict(config={"n_embd": 64, "n_inner": 256}),
     r"'transformer.wte.weight' is float32 \(\d+, 32\), expected float32 \(\d+, 64\)"),
    (dict(config={"vocab_size": 3}), "vocab_size is 3"),
    (dict(config={"n_head": 5}), r"d_model \(32\) must be divisible by n_heads \(5\)"),
    (dict(config={"n_layer": None}), "n_layers must be an integer"),
    (dict(vocab={"a": 0, "b": 0}), "ids must be 0..1, each once"),
    (dict(vocab={"a": 0, "b": "1"}), "ids must be 0..1, each once"),
    (dict(vocab={"ab": 0}), "single characters"),
    (dict(drop_tensor="transformer.h.1.ln_2.bias"), "missing transformer.h.1.ln_2.bias"),
    (dict(drop_file="vocab.json"), "has no vocab.json"),
])
def test_load_hf_dir_tinygpt_cannot_represent(tmp_path, tokenizer, edit, message):
    save_hf(tmp_path, make_model(tokenizer), tokenizer)
    edit_hf_dir(tmp_path, **edit)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value)


ROPE = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}


@pytest.mark.parametrize("edit, message", [
    (dict(config={"use_parallel_residual": True}), "use_parallel_residual is True"),
    (dict(drop_keys=["use_parallel_residual"]), "use_parallel_residual is True"),
    (dict(config={"hidden_act": "gelu"}), "hidden_act is 'gelu'"),  # the exact, erf GELU
    (dict(drop_keys=["hidden_act"]), "hidden_act is 'gelu'"),
    (dict(config={"tie_word_embeddings": True}, drop_tensor="embed_out.weight"),
     "tie_word_embeddings is True"),
    (dict(config={"intermediate_size": 100}), "intermediate_size is 100"),
    (dict(drop_keys=["intermediate_size"]), "intermediate_size is 24576"),
    (dict(config={"attention_bias": False}), "attention_bias is False"),
    (dict(config={"layer_norm_eps": 1e-6}), "layer_norm_eps"),
    (dict(config={"attention_dropout": 0.1}), "attention_dropout is 0.1"),
    (dict(config={"rope_parameters": {**ROPE, "partial_rotary_factor": 0.25}}),
     "partial_rotary_factor is 0.25"),
    (dict(drop_keys=["rope_parameters", "rotary_pct"]), "partial_rotary_factor is 0.25"),
    (dict(config={"rope_parameters": {**ROPE, "rope_theta": 500.0}}), "rope_theta is 500.0"),
    (dict(config={"rope_parameters": {**ROPE, "rope_type": "linear", "factor": 2.0}}),
     "rope_type is 'linear'"),
    (dict(config={"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
     "rope_type is 'dynamic'"),
    (dict(config={"rope_parameters": "default"}), "must be a JSON object"),
    (dict(config={"rotary_pct": 0.5}), "rotary_pct is 0.5"),  # what transformers 4.x reads
    (dict(config={"rotary_emb_base": 500}), "rotary_emb_base is 500"),
    (dict(config={"head_dim": 4}), "head_dim is 4"),  # the rotary would span 4 of 16
    (dict(config={"num_attention_heads": 3}), r"d_model \(32\) must be divisible"),
    (dict(drop_tensor="gpt_neox.layers.0.attention.dense.bias"),
     "missing gpt_neox.layers.0.attention.dense.bias"),
])
def test_load_neox_dir_tinygpt_cannot_compute(tmp_path, tokenizer, edit, message):
    save_hf(tmp_path, make_model(tokenizer, position="rotary"), tokenizer)
    edit_hf_dir(tmp_path, **edit)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("position", tinygpt.model.POSITIONS)
def test_a_directory_saved_by_transformers_loads_back(tmp_path, tokenizer, position):
    """transformers 5 writes rope_parameters alone (no rotary_pct): tinygpt reads what it wrote."""
    torch, transformers = import_hf()
    model = make_model(tokenizer, position=position, mlp="relu2")
    save_hf(tmp_path / "ours", model, tokenizer)
    load_hf_model(transformers, tmp_path / "ours", position).save_pretrained(tmp_path / "theirs")
    (tmp_path / "theirs" / "vocab.json").write_bytes(
        (tmp_path / "ours" / "vocab.json").read_bytes())
    assert_same_model(*load_model(tmp_path / "theirs"), model, tokenizer)
