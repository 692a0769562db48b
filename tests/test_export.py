"""Export to safetensors and to a Hugging Face GPT-2 directory: bitwise round trips, logits parity
with transformers, the command line, and clear errors for files tinygpt cannot load."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import tinygpt
from tinygpt import CharTokenizer, TinyGPT
from tinygpt.checkpoint import CheckpointError, save_checkpoint
from tinygpt.export import load_model, save_hf, save_safetensors

from optional import import_or_skip

TEXT = "hello, wörld!\n\"quoted\" \\ tab\t"  # characters JSON must escape


def make_model(tokenizer, dtype=np.float32, d_model=32, n_heads=2, n_layers=2, max_seq_len=16,
               dropout=0.1, seed=0):
    """A TinyGPT moved away from its init (biases and LayerNorm gains non-trivial)."""
    model = TinyGPT(tokenizer.vocab_size, d_model, n_heads, n_layers, max_seq_len,
                    dropout=dropout, seed=seed, dtype=dtype)
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

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hf_round_trip_is_bitwise(tmp_path, tokenizer, dtype):
    model = make_model(tokenizer, dtype=dtype)
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


def test_save_hf_onto_a_file_is_an_error(tmp_path, tokenizer):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="taken"):
        save_hf(target, make_model(tokenizer), tokenizer)


@pytest.mark.parametrize("n_vocab, d_model, n_heads, n_layers, max_seq_len, dtype, tolerance", [
    (11, 32, 2, 2, 16, np.float32, 1e-4),
    (65, 128, 4, 5, 64, np.float32, 1e-4),
    (11, 32, 2, 2, 16, np.float64, 1e-12),
])
def test_transformers_gives_the_same_logits(tmp_path, n_vocab, d_model, n_heads, n_layers,
                                            max_seq_len, dtype, tolerance):
    torch, transformers = import_hf()
    tokenizer = CharTokenizer("".join(chr(ord("!") + i) for i in range(n_vocab)))
    model = make_model(tokenizer, dtype, d_model, n_heads, n_layers, max_seq_len)
    save_hf(tmp_path, model, tokenizer)
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert hf.dtype == getattr(torch, np.dtype(dtype).name)  # from config.json's dtype
    rng = np.random.default_rng(0)
    for T in (13, 1):
        ids = rng.integers(0, n_vocab, size=(2, T))
        with torch.no_grad():
            expected = hf(torch.from_numpy(ids)).logits.numpy()
        logits = model.forward(ids)
        diff = float(np.abs(logits - expected).max())
        assert logits.shape == expected.shape
        assert diff < tolerance, f"max |tinygpt - transformers| logits = {diff:.3g} at T={T}"
        print(f"d_model {d_model}, {n_layers} layers, {np.dtype(dtype).name}, T={T}: "
              f"max |tinygpt - transformers| = {diff:.3g}")


# ---------------------------------------------------------------- the command line

def run_export(*args):
    return subprocess.run([sys.executable, "-m", "tinygpt.export", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fmt", ["safetensors", "hf"])
def test_cli_exports_a_checkpoint(tmp_path, tokenizer, fmt):
    model = make_model(tokenizer)
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


def edit_hf_dir(directory, config=None, vocab=None, drop_tensor=None, drop_file=None):
    """Change a save_hf directory: update config.json, replace vocab.json, drop a tensor or a
    whole file."""
    if vocab is not None:
        (directory / "vocab.json").write_text(json.dumps(vocab))
    if config:
        path = directory / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
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
