"""Prepared corpora: a text encoded once into token ids on disk, read back through np.memmap."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tinygpt import CharTokenizer
from tinygpt import corpus


def test_prepared_ids_are_the_tokenizers(tmp_path, shakespeare_path, shakespeare_text, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_CHARS", 100_003)  # many chunks, cut anywhere
    tokenizer, count = corpus.prepare(shakespeare_path, tmp_path / "prep")
    reference = CharTokenizer(shakespeare_text)
    assert tokenizer.chars == reference.chars and count == len(shakespeare_text)
    loaded, ids = corpus.load(tmp_path / "prep")
    assert loaded.chars == reference.chars
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint8 and not ids.flags.writeable
    np.testing.assert_array_equal(ids, reference.encode(shakespeare_text))


def test_newlines_and_multibyte_characters_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_CHARS", 7)
    text = "naïve\r\ncafé 日本語\rend\n" * 50 + "€"
    path = tmp_path / "text.txt"
    path.write_bytes(text.encode("utf-8"))
    corpus.prepare(path, tmp_path / "prep")
    tokenizer, ids = corpus.load(tmp_path / "prep")
    read = path.read_text(encoding="utf-8")  # as load_text reads a text file
    assert tokenizer.chars == CharTokenizer(read).chars
    assert tokenizer.decode(ids) == read


@pytest.mark.parametrize("vocab,dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16),
                                         (65536, np.uint16), (65537, np.uint32)])
def test_the_smallest_unsigned_dtype_holds_the_vocabulary(vocab, dtype):
    assert corpus.token_dtype(vocab) == dtype


def test_a_wide_vocabulary_is_stored_in_uint16(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2
    path = tmp_path / "wide.txt"
    path.write_text(text, encoding="utf-8")
    corpus.prepare(path, tmp_path / "prep")
    tokenizer, ids = corpus.load(tmp_path / "prep")
    assert ids.dtype == np.uint16 and tokenizer.decode(ids) == text


def test_bad_inputs_and_unfinished_directories_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        corpus.prepare(tmp_path / "missing.txt", tmp_path / "out")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        corpus.prepare(tmp_path / "empty.txt", tmp_path / "out")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match="latin.txt is not UTF-8"):
        corpus.prepare(tmp_path / "latin.txt", tmp_path / "out")
    with pytest.raises(corpus.CorpusError, match="a folder but not a prepared corpus"):
        corpus.load(tmp_path)
    (tmp_path / "good.txt").write_text("abcabc")
    corpus.prepare(tmp_path / "good.txt", tmp_path / "prep")
    with open(tmp_path / "prep" / corpus.TOKENS, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(corpus.CorpusError, match="should hold 6 ids"):
        corpus.load(tmp_path / "prep")
    meta = json.loads((tmp_path / "prep" / corpus.META).read_text())
    (tmp_path / "prep" / corpus.META).write_text(json.dumps({**meta, "dtype": "uint64"}))
    with pytest.raises(corpus.CorpusError, match="does not fit"):
        corpus.load(tmp_path / "prep")


def test_prepare_command(tmp_path, shakespeare_path):
    result = subprocess.run([sys.executable, "-m", "tinygpt.prepare", "--data",
                             str(shakespeare_path), "--out", str(tmp_path / "prep")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1,115,394 tokens (uint8), vocabulary of 65" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "tinygpt.prepare", "--data",
                              str(tmp_path / "none.txt"), "--out", str(tmp_path / "p")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "none.txt does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_training_from_a_prepared_corpus_is_the_run_from_its_text(tmp_path, shakespeare_text):
    from tinygpt import load_checkpoint, train

    text = tmp_path / "small.txt"
    text.write_text(shakespeare_text[:30_000])
    corpus.prepare(text, tmp_path / "prep")
    common = ["--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--seq-len", "16",
              "--batch-size", "4", "--max-steps", "30", "--eval-interval", "10",
              "--dropout", "0.1", "--sample-tokens", "5", "--threads", "1"]
    for source, out in ((text, "from_text"), (tmp_path / "prep", "from_dir")):
        assert train.main(["--data", str(source), *common, "--out-dir", str(tmp_path / out)]) == 0
    a, b = (load_checkpoint(tmp_path / out / "ckpt.npz") for out in ("from_text", "from_dir"))
    np.testing.assert_array_equal(a[0].params, b[0].params)
    assert a[1].chars == b[1].chars
    history_a, history_b = (meta["extra"]["trainer"]["history"] for meta in (a[2], b[2]))
    assert history_a["train_loss"] == history_b["train_loss"]
    assert history_a["val_loss"] == history_b["val_loss"]
