"""Strings in and out: TextGenerator, tinygpt.load, stop strings and the repetition penalty."""
import numpy as np
import pytest

import tinygpt
from tinygpt import CharTokenizer, TextGenerator, TinyGPT, save_checkpoint, save_safetensors
from tinygpt.generate import sample_next


@pytest.fixture
def generator():
    tokenizer = CharTokenizer("abcdefgh \n")
    model = TinyGPT(tokenizer.vocab_size, d_model=16, n_heads=2, n_layers=1, max_seq_len=32,
                    seed=3)
    model.params += np.random.default_rng(0).normal(0, 0.3, model.params.size).astype(np.float32)
    return TextGenerator(model, tokenizer)


def test_generate_returns_the_prompt_and_the_new_text(generator):
    text = generator.generate("abc", 40, temperature=0.8, seed=1)
    assert text.startswith("abc") and len(text) == 43
    assert generator.generate("abc", 40, temperature=0.8, seed=1) == text
    ids = generator.model.generate(np.array(generator.tokenizer.encode("abc")), 40, 0.8, seed=1)
    assert generator.tokenizer.decode(ids) == text  # the same draws as the id-level API


def test_a_stop_string_ends_generation_before_it(generator):
    full = generator.generate("ab", 60, temperature=0)[2:]
    stop = full[10:12]  # a string that the greedy continuation is known to contain
    first = full.find(stop)
    streamed = []
    text = generator.generate("ab", 60, temperature=0, stop=["zz", stop], on_text=streamed.append)
    assert text == "ab" + full[:first]
    assert "".join(streamed) == full[:first]  # the stop string is never streamed
    assert generator.generate("ab", 60, temperature=0, stop="q") == "ab" + full  # never met


def test_the_repetition_penalty_pushes_seen_tokens_down():
    rng = np.random.default_rng(0)
    logits = np.array([[2.0, 1.5, -1.0], [-1.0, -1.5, -3.0]])
    seen = np.array([[True, False, False], [True, False, False]])
    assert sample_next(logits, 0, None, None, rng).tolist() == [0, 0]
    # 2 / 2 = 1 < 1.5 on the first row; -1 * 2 = -2 < -1.5 on the second
    assert sample_next(logits, 0, None, None, rng, 2.0, seen).tolist() == [1, 1]
    assert sample_next(logits, 0, None, None, rng, 1.2, seen).tolist() == [0, 0]


def test_the_penalty_reaches_generation_and_one_is_no_penalty(generator):
    plain = generator.generate("a", 30, temperature=0)
    assert generator.generate("a", 30, temperature=0, repetition_penalty=1.0) == plain
    penalized = generator.generate("a", 30, temperature=0, repetition_penalty=3.0)
    assert len(set(penalized)) > len(set(plain)), (plain, penalized)  # greedy loops less


@pytest.mark.parametrize("kwargs,match", [
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(stop=[""]), "stop"),
    (dict(temperature=-1.0), "temperature"),
])
def test_bad_sampling_settings_are_rejected(generator, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generator.generate("ab", 5, **kwargs)


def test_prompts_are_checked(generator):
    with pytest.raises(ValueError, match="'z' at position 1"):
        generator.generate("az", 5)
    with pytest.raises(ValueError, match="non-empty"):
        generator.generate("", 5)


@pytest.mark.parametrize("suffix", ["ckpt.npz", "model.safetensors"])
def test_load_reads_checkpoints_and_exported_files(tmp_path, generator, suffix):
    path = tmp_path / suffix
    if suffix.endswith(".npz"):
        save_checkpoint(path, generator.model, generator.tokenizer)
    else:
        save_safetensors(path, generator.model, generator.tokenizer)
    loaded = tinygpt.load(path)
    assert isinstance(loaded, TextGenerator)
    assert loaded.generate("ab", 30, 0.8, seed=2) == generator.generate("ab", 30, 0.8, seed=2)
