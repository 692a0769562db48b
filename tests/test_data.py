import hashlib
import urllib.error

import numpy as np
import pytest

from tinygpt import data


def test_data_set_facts(shakespeare_path):
    raw = shakespeare_path.read_bytes()
    assert len(raw) == 1_115_394
    assert hashlib.sha256(raw).hexdigest() == data.SHA256
    tokenizer, train, val = data.load_dataset(shakespeare_path)
    assert tokenizer.vocab_size == 65
    assert len(train) == 1_003_854 and len(val) == 111_540
    assert tokenizer.decode(train[:6]) == "First "


def test_lookup_prefers_explicit_path_then_env(tmp_path, monkeypatch, shakespeare_path):
    other = tmp_path / "other.txt"
    other.write_text("to be or not to be")
    monkeypatch.setenv("TINYGPT_DATA", str(shakespeare_path))
    assert data.load_text(other) == "to be or not to be"
    assert len(data.load_text()) == 1_115_394


def test_env_copy_must_be_the_verified_data_set(tmp_path, monkeypatch):
    fake = tmp_path / "fake.txt"
    fake.write_text("not shakespeare")
    monkeypatch.setenv("TINYGPT_DATA", str(fake))
    with pytest.raises(ValueError, match="sha256"):
        data.load_text()
    monkeypatch.setenv("TINYGPT_DATA", str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="TINYGPT_DATA"):
        data.load_text()


def test_cache_is_used_when_no_path_or_env(tmp_path, monkeypatch, shakespeare_path):
    monkeypatch.delenv("TINYGPT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "tinygpt").mkdir()
    (tmp_path / "tinygpt" / data.FILENAME).write_bytes(shakespeare_path.read_bytes())
    assert len(data.load_text()) == 1_115_394


def test_offline_without_a_copy_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYGPT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as err:
        data.load_text()
    message = str(err.value)
    assert "--data" in message and "TINYGPT_DATA" in message and str(tmp_path) in message


def test_download_is_verified_and_written_to_the_cache(tmp_path, monkeypatch, shakespeare_path):
    monkeypatch.delenv("TINYGPT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    payload = shakespeare_path.read_bytes()

    class Response:
        def __init__(self, body):
            self.body = body

        def read(self):
            return self.body

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: Response(b"corrupted"))
    with pytest.raises(ValueError, match="sha256"):
        data.load_text()
    assert not (tmp_path / "tinygpt" / data.FILENAME).exists()
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: Response(payload))
    assert len(data.load_text()) == 1_115_394
    assert (tmp_path / "tinygpt" / data.FILENAME).read_bytes() == payload


def test_missing_or_empty_explicit_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.load_text(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        data.load_text(empty)


def test_split_is_ninety_ten():
    train, val = data.split(np.arange(1000))
    assert len(train) == 900 and len(val) == 100
    assert train[-1] + 1 == val[0]


@pytest.mark.parametrize("n_tokens,seq_len", [(1000, 16), (33, 16), (17, 16), (1001, 7)])
def test_epoch_windows_are_shifted_pairs_that_never_overlap(n_tokens, seq_len):
    tokens = np.arange(n_tokens)
    rng = np.random.default_rng(0)
    batches = list(data.epoch_batches(tokens, 8, seq_len, rng))
    xs = np.concatenate([x for x, _ in batches])
    ys = np.concatenate([y for _, y in batches])
    assert xs.shape[1] == seq_len
    np.testing.assert_array_equal(ys, xs + 1)  # targets are the next tokens
    starts = np.sort(xs[:, 0])
    assert np.all(np.diff(starts) == seq_len)  # non-overlapping, contiguous windows
    assert len(starts) == data.windows_per_epoch(n_tokens, seq_len)
    assert ys.max() < n_tokens


@pytest.mark.parametrize("n_windows,batch_size", [(13, 4), (12, 4), (4, 4)])
def test_dropping_the_last_batch_keeps_only_full_batches_and_the_same_shuffles(n_windows,
                                                                                batch_size):
    """keep: every window once, the last batch short when the windows do not divide. drop: the
    full batches only, the same windows in the same order, and the generator left where keep
    leaves it, so the next epoch is the same in both modes."""
    seq_len = 8
    tokens = np.arange((n_windows + 1) * seq_len + 3)  # n_windows, and room for an offset
    epochs = {}
    for drop_last in (False, True):
        rng = np.random.default_rng(0)
        batches = list(data.epoch_batches(tokens, batch_size, seq_len, rng, drop_last))
        assert len(batches) == data.batches_per_epoch(len(tokens), batch_size, seq_len, drop_last)
        epochs[drop_last] = ([len(x) for x, _ in batches],
                             np.concatenate([x[:, 0] for x, _ in batches]), rng.random())
    (kept_sizes, kept, kept_next), (dropped_sizes, dropped, dropped_next) = epochs.values()
    full, rest = divmod(n_windows, batch_size)
    assert kept_sizes == [batch_size] * full + ([rest] if rest else [])
    assert dropped_sizes == [batch_size] * full
    assert len(np.unique(kept)) == n_windows  # no window lost or repeated
    np.testing.assert_array_equal(dropped, kept[:full * batch_size])
    assert dropped_next == kept_next


def test_dropping_the_only_short_batch_is_an_error():
    with pytest.raises(ValueError, match="32 tokens give 3 windows of 8, fewer than batch_size 4"):
        data.batches_per_epoch(4 * 8, 4, 8, drop_last=True)
    assert data.batches_per_epoch(4 * 8, 4, 8) == 1


def test_epochs_differ_in_order_and_offset():
    tokens = np.arange(10_000)
    rng = np.random.default_rng(0)
    epochs = [np.concatenate([x[:, 0] for x, _ in data.epoch_batches(tokens, 4, 32, rng)])
              for _ in range(5)]
    assert len({int(starts.min()) for starts in epochs}) > 1  # the offset moves
    assert not np.array_equal(np.argsort(epochs[0]), np.argsort(epochs[1]))  # so does the order


def test_check_tokens_rejects_bad_arrays():
    with pytest.raises(ValueError, match="integer"):
        data.check_tokens(np.zeros(100), "train_data", 8)
    with pytest.raises(ValueError, match="at least"):
        data.check_tokens(np.zeros(8, dtype=int), "train_data", 8)
    with pytest.raises(ValueError, match="1-D"):
        data.check_tokens(np.zeros((10, 10), dtype=int), "train_data", 8)
