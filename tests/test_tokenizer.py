import numpy as np
import pytest

from tinygpt import CharTokenizer


def test_round_trip_on_the_real_data(shakespeare_text):
    tok = CharTokenizer(shakespeare_text)
    ids = tok.encode(shakespeare_text)
    assert tok.vocab_size == 65
    assert len(ids) == len(shakespeare_text)
    assert tok.decode(ids) == shakespeare_text
    assert tok.decode(np.array(ids)) == shakespeare_text


def test_vocabulary_is_sorted_and_ids_follow_it():
    tok = CharTokenizer("banana!")
    assert tok.chars == ["!", "a", "b", "n"]
    assert tok.encode("ban") == [2, 1, 3]
    assert tok.decode([3, 1]) == "na"
    assert tok.vocab_size == 4


def test_unknown_character_names_character_and_position():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"'z' at position 2"):
        tok.encode("abzc")


def test_empty_text_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")


def test_non_string_input_is_rejected():
    with pytest.raises(TypeError):
        CharTokenizer(["a", "b"])
    with pytest.raises(TypeError):
        CharTokenizer("ab").encode(b"ab")


def test_decode_rejects_bad_ids():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="id 3 at position 1"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="id -1"):
        tok.decode([-1])
    with pytest.raises(TypeError):
        tok.decode(np.array([0.0, 1.0]))
    assert tok.decode([]) == ""


def test_vocabulary_round_trips_through_its_saved_form():
    tok = CharTokenizer("hello world")
    again = CharTokenizer.from_vocabulary("".join(tok.chars))
    assert again.encode("world") == tok.encode("world")
    with pytest.raises(ValueError):
        CharTokenizer.from_vocabulary("aab")


def test_check_covers_names_the_characters_outside_the_vocabulary():
    tok = CharTokenizer("hello")
    tok.check_covers("hole", "a.txt")
    with pytest.raises(ValueError, match=r"a.txt has 2 characters the model does not know: 'wz'"):
        tok.check_covers("zwhole", "a.txt")
