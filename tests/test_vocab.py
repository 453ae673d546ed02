"""The character vocabulary: canonical ids, lossless round trips, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import hint
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt_cli.errors import TinyGPTError, UsageError
from tinygpt_cli.data.vocab import MAX_VOCAB_SIZE, UnknownCharactersError, Vocabulary

# Any character a UTF-8 text can hold: no lone surrogates. Whitespace, non-ASCII and emoji included.
CHARS = st.characters(blacklist_categories=("Cs",))
SPECIAL = st.sampled_from(["\n", "\t", "\r", " ", "\u00a0", "é", "ß", "中", "😀", "🎉", "\U0010ffff", "\x00"])
TEXT = st.text(st.one_of(CHARS, SPECIAL), min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_round_trip_of_the_vocab_text(text):
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert len(ids) == len(text)
    assert vocab.decode(ids) == text
    assert vocab.encode_array(text).dtype == np.uint16
    assert set(vocab.chars) == set(text)


@settings(max_examples=100, deadline=None)
@given(TEXT, st.data())
def test_round_trip_of_any_text_drawn_from_the_vocab(corpus, data):
    vocab = Vocabulary.from_text(corpus)
    text = data.draw(st.text(st.sampled_from(vocab.chars), max_size=300))
    assert vocab.decode(vocab.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(TEXT)
def test_ids_follow_code_point_order(text):
    vocab = Vocabulary.from_text(text)
    codepoints = [ord(c) for c in vocab.chars]
    assert codepoints == sorted(set(codepoints))
    # id i is the i-th smallest character: the same text always gives the same ids
    for i, ch in enumerate(vocab.chars):
        assert vocab.encode(ch) == [i]
    assert Vocabulary.from_text(text[::-1]) == vocab


def test_known_small_vocab():
    vocab = Vocabulary.from_text("hello world\n")
    assert vocab.chars == ("\n", " ", "d", "e", "h", "l", "o", "r", "w")
    assert vocab.size == len(vocab) == 9
    assert vocab.encode("hello") == [4, 3, 5, 5, 6]
    assert vocab.counts(vocab.encode_array("hello")).tolist() == [0, 0, 0, 1, 1, 2, 1, 0, 0]


@settings(max_examples=50, deadline=None)
@given(TEXT)
def test_json_save_load_round_trip(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    vocab = Vocabulary.from_text(text)
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.chars == vocab.chars
    obj = json.loads(path.read_text(encoding="utf-8"))
    assert obj["size"] == vocab.size and obj["chars"] == list(vocab.chars)
    assert not list(path.parent.glob("*.tmp"))


def test_unknown_characters_are_listed():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(UnknownCharactersError) as exc:
        vocab.encode("abxzyx😀")
    err = exc.value
    assert isinstance(err, UsageError) and err.exit_code == 2
    assert err.unknown == ["x", "y", "z", "😀"]
    for ch in ("'x'", "'y'", "'z'", "'😀'"):
        assert ch in err.message
    assert err.message.startswith("4 character(s) not in the vocabulary")
    assert hint(err)


def test_many_unknown_characters_are_summarised():
    vocab = Vocabulary.from_text("a")
    with pytest.raises(UnknownCharactersError) as exc:
        vocab.encode("".join(chr(0x4E00 + i) for i in range(25)))
    assert len(exc.value.unknown) == 25
    assert "and 5 more" in exc.value.message


def test_more_than_65536_distinct_characters_is_refused():
    # every code point from 0x20 up, skipping surrogates: MAX_VOCAB_SIZE + 1 distinct characters
    cps = [c for c in range(0x20, 0x20 + MAX_VOCAB_SIZE + 3000) if not 0xD800 <= c <= 0xDFFF][: MAX_VOCAB_SIZE + 1]
    text = "".join(map(chr, cps))
    with pytest.raises(TinyGPTError, match="65,537 distinct characters"):
        Vocabulary.from_text(text)
    # exactly the limit still fits, and its largest id survives uint16
    vocab = Vocabulary.from_text(text[:MAX_VOCAB_SIZE])
    assert vocab.size == MAX_VOCAB_SIZE
    assert vocab.encode(text[MAX_VOCAB_SIZE - 1]) == [MAX_VOCAB_SIZE - 1]


def test_empty_text_is_refused():
    with pytest.raises(TinyGPTError, match="empty"):
        Vocabulary.from_text("")


def test_decode_out_of_range_id():
    vocab = Vocabulary.from_text("ab")
    with pytest.raises(TinyGPTError, match="out of range"):
        vocab.decode([0, 1, 2])


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        "[1, 2, 3]",
        json.dumps({"format": "other", "version": 1, "size": 2, "chars": ["a", "b"]}),
        json.dumps({"format": "tinygpt-vocab", "version": 99, "size": 2, "chars": ["a", "b"]}),
        json.dumps({"format": "tinygpt-vocab", "version": 1, "size": 3, "chars": ["a", "b"]}),
        json.dumps({"format": "tinygpt-vocab", "version": 1, "size": 2, "chars": ["b", "a"]}),
        json.dumps({"format": "tinygpt-vocab", "version": 1, "size": 2, "chars": ["a", "a"]}),
        json.dumps({"format": "tinygpt-vocab", "version": 1, "size": 2, "chars": ["a", "bc"]}),
        json.dumps({"format": "tinygpt-vocab", "version": 1, "size": 2, "chars": ["a", 7]}),
        json.dumps({"format": "tinygpt-vocab", "version": 1, "size": 0, "chars": []}),
    ],
    ids=["not-json", "list", "format", "version", "size", "unsorted", "duplicate", "multichar", "non-str", "empty"],
)
def test_bad_vocab_json_is_rejected(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TinyGPTError) as exc:
        Vocabulary.load(path)
    assert str(path) in exc.value.message


def test_missing_and_non_utf8_vocab_files(tmp_path):
    with pytest.raises(TinyGPTError, match="no vocabulary file"):
        Vocabulary.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"chars": ["\xff"]}')
    with pytest.raises(TinyGPTError, match="cannot read vocabulary"):
        Vocabulary.load(bad)


def test_constructor_requires_sorted_distinct_chars():
    with pytest.raises(ValueError):
        Vocabulary(("b", "a"))
    assert Vocabulary(("a", "b")).size == 2


def test_lone_surrogate_is_an_unknown_character():
    # what a non-UTF-8 command-line argument turns into (surrogateescape): a clear error, not a crash
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(UnknownCharactersError) as exc:
        vocab.encode("a\udcff")
    assert exc.value.unknown == ["\udcff"]
