"""Dataset folders: prepare, reuse, re-prepare, detect damage; downloads and their limits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import dataset_files, hint, make_text, stream_of, tmp_files

from tinygpt_cli.data import dataset as data
from tinygpt_cli.data.dataset import (
    OWNER_MARK,
    DatasetInfo,
    check_name,
    decode_text,
    download,
    intact_dataset,
    load_dataset,
)
from tinygpt_cli.data.prepare import prepare_text, split_sizes
from tinygpt_cli.errors import TinyGPTError, UsageError
from tinygpt_cli.data.vocab import Vocabulary


def _decode_splits(folder):
    vocab = Vocabulary.load(folder / "vocab.json")
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    return vocab, train, val


def test_prepare_text_writes_a_complete_folder(small_text, tmp_path):
    text = small_text.read_text(encoding="utf-8")
    folder = tmp_path / "data" / "small"
    result = prepare_text(small_text, folder, "small", 0.1, val_split="end")
    assert result.reused is False
    info = result.info
    for name in dataset_files("char"):
        assert (folder / name).is_file(), name
    assert not tmp_files(tmp_path)

    assert info.name == "small" and info.path == folder and info.source == str(small_text)
    assert info.text_bytes == small_text.stat().st_size
    assert info.text_chars == len(text)
    assert info.train_tokens + info.val_tokens == len(text)
    assert info.vocab_size == len(set(text))
    assert not (folder / "input.txt").exists()  # no copy of the corpus
    assert info.train_bytes + info.val_bytes == info.text_bytes

    vocab, train, val = _decode_splits(folder)
    assert len(train) == info.train_tokens and len(val) == info.val_tokens
    assert vocab.decode(train.tolist()) + vocab.decode(val.tolist()) == text
    # the validation split is the end of the text
    assert vocab.decode(val.tolist()) == text[info.train_tokens:]

    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["format"] == "tinygpt-dataset" and meta["version"] == 4
    assert (meta["tokenizer"], meta["tokenizer_spec"], meta["token_dtype"], meta["val_split"]) == ("char", "char", "uint16", "end")
    assert meta["sha256"] == data.sha256_hex(small_text.read_bytes())
    assert meta["sources"] == [{"name": str(small_text), "bytes": info.text_bytes, "sha256": meta["sha256"]}]
    assert intact_dataset(folder) == info


def test_prepare_text_non_ascii_round_trip(tmp_path):
    text = ("Ünïcödé façade — 東京 🌸 naïve café\t¿qué?\n" * 40)
    src = tmp_path / "uni.txt"
    src.write_text(text, encoding="utf-8")
    info = prepare_text(src, tmp_path / "uni", "uni", 0.25).info
    assert info.text_bytes == len(text.encode("utf-8")) > info.text_chars == len(text)
    vocab, train, val = _decode_splits(tmp_path / "uni")
    assert vocab.decode(stream_of(info, train, val).tolist()) == text
    assert info.train_bytes + info.val_bytes == info.text_bytes


def test_the_spread_split_validates_on_the_whole_corpus(tmp_path):
    """Several sources, one after the other: val holds a share of each, not the last one's."""
    sources = []
    for n, word in enumerate(("alpha", "beta", "gamma", "delta")):
        sources.append(tmp_path / f"{word}.txt")
        sources[-1].write_text(f"{word} {n}\n" * 1500, encoding="utf-8")
    info = prepare_text([str(s) for s in sources], tmp_path / "d", "d", 0.1).info
    assert (info.val_split, info.documents) == ("spread", 4)
    vocab, train, val = _decode_splits(tmp_path / "d")
    assert vocab.decode(stream_of(info, train, val).tolist()) == "".join(s.read_text(encoding="utf-8") for s in sources)
    held_out = vocab.decode(val.tolist())
    assert all(word in held_out for word in ("alpha", "beta", "gamma", "delta"))
    assert abs(info.val_tokens / (info.train_tokens + info.val_tokens) - 0.1) < 0.02


@pytest.mark.parametrize("val_fraction", [0.1, 0.2, 0.5])
def test_val_fraction_is_honoured(small_text, tmp_path, val_fraction):
    n = len(small_text.read_text(encoding="utf-8"))
    info = prepare_text(small_text, tmp_path / "d", "d", val_fraction, val_split="end").info
    assert info.val_fraction == val_fraction
    assert info.train_tokens == int(n * (1 - val_fraction))
    assert info.val_tokens == n - info.train_tokens
    assert abs(info.val_tokens / n - val_fraction) < 0.01
    assert (tmp_path / "d" / "val.bin").stat().st_size == 2 * info.val_tokens


def test_split_sizes():
    assert split_sizes(1_115_394, 0.1) == (1_003_854, 111_540)
    assert split_sizes(1000, 0.25) == (750, 250)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_out_of_range(small_text, tmp_path, bad):
    with pytest.raises(UsageError, match="--val-fraction"):
        prepare_text(small_text, tmp_path / "d", "d", bad)
    assert not (tmp_path / "d").exists()


def test_second_run_reuses_without_rewriting(small_text, tmp_path):
    folder = tmp_path / "d"
    first = prepare_text(small_text, folder, "d", 0.1)
    mtimes = {name: (folder / name).stat().st_mtime_ns for name in dataset_files("char")}
    second = prepare_text(small_text, folder, "d", 0.1)
    assert second.reused is True
    assert second.info == first.info
    assert {name: (folder / name).stat().st_mtime_ns for name in dataset_files("char")} == mtimes
    assert sorted(p.name for p in folder.iterdir()) == sorted((*dataset_files("char"), OWNER_MARK))


def test_changed_text_is_prepared_again(small_text, tmp_path):
    folder = tmp_path / "d"
    first = prepare_text(small_text, folder, "d", 0.1).info
    new_text = make_text(6000, seed=99) + "Zebra quartz jumps 123.\n"
    small_text.write_text(new_text, encoding="utf-8")
    result = prepare_text(small_text, folder, "d", 0.1)
    assert result.reused is False
    assert result.info.sha256 != first.sha256
    assert result.info.text_chars == len(new_text)
    vocab, train, val = _decode_splits(folder)
    assert vocab.decode(stream_of(result.info, train, val).tolist()) == new_text
    assert intact_dataset(folder) == result.info


def test_changed_val_fraction_is_prepared_again(small_text, tmp_path):
    folder = tmp_path / "d"
    prepare_text(small_text, folder, "d", 0.1)
    result = prepare_text(small_text, folder, "d", 0.2)
    assert result.reused is False and result.info.val_fraction == 0.2
    assert intact_dataset(folder).val_fraction == 0.2


def _flip_last_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage",
    ["flip-train", "flip-val", "truncate-train", "delete-val", "delete-vocab", "bad-vocab", "bad-meta", "meta-other-format"],
)
def test_damage_is_detected(small_text, tmp_path, damage):
    folder = tmp_path / "d"
    prepare_text(small_text, folder, "d", 0.1)
    assert intact_dataset(folder) is not None
    kind, _, what = damage.partition("-")
    if kind == "flip":
        _flip_last_byte(folder / f"{what}.bin")
    elif kind == "truncate":
        (folder / "train.bin").write_bytes((folder / "train.bin").read_bytes()[:-2])
    elif kind == "delete":
        (folder / f"{what}.{'json' if what == 'vocab' else 'bin'}").unlink()
    elif damage == "bad-vocab":
        (folder / "vocab.json").write_text(json.dumps({"format": "tinygpt-vocab", "version": 1, "size": 1, "chars": ["a"]}))
    elif damage == "bad-meta":
        (folder / "meta.json").write_text("{ not json")
    else:
        meta = json.loads((folder / "meta.json").read_text())
        meta["format"] = "something-else"
        (folder / "meta.json").write_text(json.dumps(meta))
    assert intact_dataset(folder) is None
    with pytest.raises(TinyGPTError) as exc:
        load_dataset(folder)
    assert "damaged or incomplete" in exc.value.message
    assert "tinygpt prepare" in hint(exc.value)


def test_damaged_dataset_is_rebuilt_by_prepare(small_text, tmp_path):
    folder = tmp_path / "d"
    prepare_text(small_text, folder, "d", 0.1)
    _flip_last_byte(folder / "train.bin")
    result = prepare_text(small_text, folder, "d", 0.1)
    assert result.reused is False
    assert load_dataset(folder).info == result.info


def test_load_dataset(small_text, tmp_path):
    folder = tmp_path / "d"
    info = prepare_text(small_text, folder, "d", 0.1).info
    ds = load_dataset(folder)
    assert ds.info == info
    assert ds.train.dtype == np.uint16 and len(ds.train) == info.train_tokens and len(ds.val) == info.val_tokens
    assert ds.tokenizer.decode(stream_of(info, ds.train, ds.val).tolist()) == small_text.read_text(encoding="utf-8")


def test_load_dataset_without_meta(tmp_path):
    with pytest.raises(TinyGPTError, match="no prepared dataset") as exc:
        load_dataset(tmp_path / "shakespeare")
    assert hint(exc.value) == "tinygpt prepare shakespeare"
    with pytest.raises(TinyGPTError) as exc:
        load_dataset(tmp_path / "mine")
    assert "tinygpt prepare text" in hint(exc.value)


def test_dataset_info_round_trips_through_meta(small_text, tmp_path):
    info = prepare_text(small_text, tmp_path / "d", "d", 0.1).info
    meta = info.to_dict()
    assert meta.pop("format") == "tinygpt-dataset" and meta.pop("version") == 4
    assert DatasetInfo(path=info.path, **meta) == info


# --- reading and decoding sources ------------------------------------------------------------


def test_decode_text_errors():
    with pytest.raises(TinyGPTError, match="is empty"):
        decode_text(b"", "f.txt")
    with pytest.raises(TinyGPTError, match="0xff at byte offset 1,234"):
        decode_text(b"a" * 1234 + b"\xff" + b"b" * 10, "f.txt")
    with pytest.raises(TinyGPTError, match="NUL byte at character 3"):
        decode_text("aé\n\x00b".encode(), "f.txt")
    assert decode_text("héllo".encode(), "f.txt") == "héllo"


def test_read_source_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        data.read_source(str(tmp_path / "absent.txt"))
    with pytest.raises(UsageError, match="is a folder"):
        data.read_source(str(tmp_path))


@pytest.mark.parametrize("name", ["poems", "my_data.v2", "A-1", "x" * 64])
def test_check_name_accepts(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "a..b", ".hidden", "", "x" * 65, "sp ace", "-x"])
def test_check_name_rejects(name):
    with pytest.raises(UsageError):
        check_name(name)


def test_text_too_short_writes_nothing(tmp_path):
    src = tmp_path / "short.txt"
    src.write_text("x" * 300)
    with pytest.raises(TinyGPTError, match="too short") as exc:
        prepare_text(src, tmp_path / "d", "d", 0.1)
    assert "--val-fraction" in hint(exc.value)
    assert not (tmp_path / "d").exists()


# --- downloads, against a local server only ---------------------------------------------------


def test_download_returns_the_body(http_server, no_proxy):
    body = b"hello world\n" * 100
    assert download(http_server.serve("/a.txt", body), timeout=10) == body
    assert download(http_server.serve("/b.txt", body, with_length=False), timeout=10) == body


def test_download_size_limit_declared(http_server, no_proxy):
    url = http_server.serve("/big.txt", b"x" * 1000)
    with pytest.raises(TinyGPTError, match="1,000 bytes, over the 999-byte download limit"):
        download(url, max_bytes=999, timeout=10)
    assert download(url, max_bytes=1000, timeout=10) == b"x" * 1000


def test_download_size_limit_undeclared(http_server, no_proxy):
    url = http_server.serve("/stream.txt", b"y" * 5000, with_length=False)
    with pytest.raises(TinyGPTError, match="more than the 100-byte download limit"):
        download(url, max_bytes=100, timeout=10)
    assert download(url, max_bytes=5000, timeout=10) == b"y" * 5000


def test_download_http_error(http_server, no_proxy):
    with pytest.raises(TinyGPTError, match="HTTP 404") as exc:
        download(http_server.url("/missing.txt"), timeout=10)
    assert "--source" in hint(exc.value)


def test_download_connection_refused(closed_port_url, no_proxy):
    with pytest.raises(TinyGPTError, match="cannot reach") as exc:
        download(closed_port_url, timeout=10)
    assert "--source" in hint(exc.value)


@pytest.mark.parametrize("url", ["ftp://example.com/input.txt", "file:///etc/passwd", "gopher://x/y"])
def test_download_rejects_other_schemes(url):
    with pytest.raises(UsageError, match="unsupported URL scheme"):
        download(url)


def test_a_spread_split_has_blocks_many_contexts_long_for_any_character_tokenizer(tmp_path):
    """A window across a block boundary predicts from unrelated text: blocks of a twentieth of the
    validation share, also when the character vocabulary is given (it was sized as a BPE's, a
    third as long, and a 100,000-character corpus had blocks as short as one context of 64)."""
    from tinygpt_cli.data.prepare import VAL_BLOCKS, TokenizerChoice

    source = tmp_path / "text.txt"
    source.write_text(make_text(200_000), encoding="utf-8")
    own = prepare_text(source, tmp_path / "own", "own", 0.1).info
    given = prepare_text(source, tmp_path / "given", "given", 0.1, TokenizerChoice("given", given=Vocabulary.load(own.path / "vocab.json"))).info
    assert own.block_tokens == given.block_tokens == int(own.text_chars * 0.1 / VAL_BLOCKS) >= 8 * 64
