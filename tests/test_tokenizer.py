"""BPE tokenizers: trained on the user's text or brought as a tokenizer.json; any text round-trips;
datasets, checkpoints, training, resume, eval (bits per byte) and generate work with them."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
from conftest import ONE_THREAD_ENV, assert_same_tensors, dataset_files, hint, make_text, signal_at_step, stream_of, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt_cli.checkpoint import load_model
from tinygpt_cli.data.dataset import load_dataset
from tinygpt_cli.data.prepare import Scan, make_tokenizer, prepare_text
from tinygpt_cli.interop.pretrained import tokenizer_choice
from tinygpt_cli.errors import TinyGPTError, TrainingStopped, UsageError
from tinygpt_cli.lifecycle import resume, train_new
from tinygpt_cli.data.tokenizer import EOT, BPETokenizer, byte_lengths, split_for_encoding, stream_text, token_dtype

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([make_text(20_000, seed=3)], 320)


@pytest.fixture(scope="module")
def bpe_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    source = root / "corpus.txt"
    source.write_text(make_text(30_000, seed=11) + "Ünïcödé, 東京 and 🌸.\n" * 20, encoding="utf-8")
    prepare_text(source, root / "data", "corpus", 0.1, tokenizer_choice("bpe", 300))
    return root / "data"


def source_of(dataset_folder):
    return dataset_folder.parent / "corpus.txt"


TEXTS = st.text(alphabet=st.sampled_from(list("ab \n\r\t.,'é東🌸")), max_size=400) | st.text(max_size=200)


@settings(max_examples=150, deadline=None)
@given(text=TEXTS, size=st.integers(1, 50))
def test_encoding_in_pieces_gives_the_ids_of_the_whole_text(bpe, text, size):
    """In pieces, and through tiktoken (which encodes the pieces): the library's ids for the whole."""
    pieces = split_for_encoding(text, size)
    assert "".join(pieces) == text
    whole = bpe.hf.encode(text, add_special_tokens=False).ids
    assert [i for piece in pieces for i in bpe.hf.encode(piece, add_special_tokens=False).ids] == whole
    assert bpe._fast is not None  # tiktoken took this BPE: the ids below are its
    assert bpe.encode(text) == whole


@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_any_text_round_trips_and_streams_whole_characters(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode("utf-8")
    pieces = list(stream_text(bpe, ids))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("text, cut", [("foo \nBar baz\n" * 50, True), ("foo\r\nBar\r\n" * 50, False), ("a\n\nb\n  c\n" * 50, True)])
def test_cuts_around_whitespace_keep_the_ids_of_the_whole_text(bpe, text, cut):
    pieces = split_for_encoding(text, 7)
    assert (len(pieces) > 1) == cut  # CRLF text has no safe cut: whitespace on both sides of each newline
    assert [i for piece in pieces for i in bpe.hf.encode(piece).ids] == bpe.hf.encode(text).ids


def test_a_token_may_end_inside_a_character_and_the_stream_holds_it_back(bpe):
    ids = bpe.encode("東")  # three bytes the small BPE never merged: three tokens
    assert len(ids) == 3 and all(len(bpe.token_bytes(i)) == 1 for i in ids)
    assert list(stream_text(bpe, ids)) == ["東"]


def test_the_end_of_text_token_and_the_byte_alphabet_come_first(bpe):
    assert bpe.eot_id == 0 and bpe.token_bytes(0) == EOT.encode()
    assert sorted(bpe.token_bytes(i) for i in range(1, 257)) == [bytes([b]) for b in range(256)]
    assert byte_lengths(bpe)[:257].tolist() == [0] + [1] * 256  # the end of a document is no text


@pytest.mark.parametrize("value, size, words", [
    ("bpe", 256, "257 to"), ("bpe", 2**20 + 1, "257 to"), ("char", 512, "--vocab-size is for --tokenizer bpe"),
])
def test_impossible_vocabulary_sizes_are_usage_errors(value, size, words):
    with pytest.raises(UsageError) as info:
        tokenizer_choice(value, size)
    assert words in info.value.message


def test_token_ids_past_uint16_are_stored_as_uint32():
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32


@pytest.mark.parametrize("content, words", [
    ("not json", "not JSON"),
    (json.dumps({"model": {"type": "WordPiece"}}), "not a BPE tokenizer.json"),
    (json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Whitespace"}, "decoder": None}),
     "not a byte-level one"),
])
def test_a_file_that_is_not_a_byte_level_bpe_is_refused_in_one_line(tmp_path, content, words):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(UsageError) as info:
        make_tokenizer(tokenizer_choice(str(path), None), Scan())
    assert words in info.value.message and "\n" not in info.value.message


def test_a_tokenizer_file_prepares_the_same_dataset_as_the_tokenizer_it_holds(bpe_dataset, tmp_path):
    source = source_of(bpe_dataset)
    result = prepare_text(source, tmp_path / "again", "again", 0.1, tokenizer_choice(str(bpe_dataset / "tokenizer.json"), None))
    assert (tmp_path / "again" / "train.bin").read_bytes() == (bpe_dataset / "train.bin").read_bytes()
    assert result.info.tokenizer == "bpe" and result.info.tokenizer_spec.startswith("file:")
    assert load_dataset(tmp_path / "again").tokenizer == load_dataset(bpe_dataset).tokenizer


def test_a_bpe_dataset_holds_its_tokenizer_file_and_fewer_tokens_than_characters(bpe_dataset):
    dataset = load_dataset(bpe_dataset)
    assert sorted(p.name for p in bpe_dataset.iterdir() if not p.name.startswith(".")) == sorted(dataset_files("bpe"))
    assert dataset.info.tokenizer == "bpe" and dataset.info.vocab_size == dataset.tokenizer.size == 300
    assert dataset.train.dtype == np.uint16
    assert dataset.info.train_tokens + dataset.info.val_tokens < dataset.info.text_chars
    text = (source_of(bpe_dataset)).read_text(encoding="utf-8")
    assert dataset.tokenizer.decode(stream_of(dataset.info, dataset.train, dataset.val).tolist()) == text


def test_preparing_again_with_another_tokenizer_rebuilds_and_leaves_no_stale_file(bpe_dataset, tmp_path):
    source = source_of(bpe_dataset)
    char = prepare_text(source, tmp_path / "d", "d", 0.1)
    assert prepare_text(source, tmp_path / "d", "d", 0.1).reused
    bpe = prepare_text(source, tmp_path / "d", "d", 0.1, tokenizer_choice("bpe", 300))
    assert not bpe.reused and char.info.vocab_size != bpe.info.vocab_size
    assert not (tmp_path / "d" / "vocab.json").exists() and load_dataset(tmp_path / "d").tokenizer.kind == "bpe"


def test_a_large_vocabulary_is_stored_as_uint32(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {EOT: 0, **{ch: i + 1 for i, ch in enumerate(sorted(alphabet))}}
    vocab |= {f"x{i}": len(vocab) + i for i in range(2**16)}  # never produced: no merge makes them
    hf = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf.save(str(tmp_path / "big.json"))
    source = tmp_path / "text.txt"
    source.write_text(make_text(3_000), encoding="utf-8")
    info = prepare_text(source, tmp_path / "d", "d", 0.1, tokenizer_choice(str(tmp_path / "big.json"), None)).info
    dataset = load_dataset(tmp_path / "d")
    assert info.token_dtype == "uint32" and dataset.train.dtype == np.uint32
    assert dataset.tokenizer.decode(dataset.train[:50].tolist()) == source.read_text(encoding="utf-8")[:50]
    result = train_new(tiny_config(tmp_path / "d", max_iters=2, warmup_iters=1, eval_interval=2, eval_iters=1), tmp_path / "run")
    assert result.iteration == 2 and load_model(tmp_path / "run" / "best.safetensors")[0].config.vocab_size == info.vocab_size


# --- training, resume, eval and generate on BPE ------------------------------------------------

def test_a_bpe_run_resumes_bit_exactly_and_its_checkpoint_alone_generates(bpe_dataset, tmp_path):
    config = tiny_config(bpe_dataset, max_iters=30, eval_interval=10)
    train_new(config, tmp_path / "whole")
    with pytest.raises(TrainingStopped):
        train_new(config, tmp_path / "part", signal_at_step(20, signal.SIGINT))
    resume(tmp_path / "part")
    assert_same_tensors(tmp_path / "whole" / "last.safetensors", tmp_path / "part" / "last.safetensors")

    model, ckpt = load_model(tmp_path / "whole" / "best.safetensors")
    assert ckpt.tokenizer == load_dataset(bpe_dataset).tokenizer and model.config.vocab_size == 300
    from tinygpt_cli.sampling import generate

    ids = list(generate(model, ckpt.tokenizer.encode("東京 🌸 "), 40, seed=1))
    # A barely trained byte-level model may sample bytes that form no character: they show as
    # U+FFFD, exactly as a whole decode shows them, never as broken UTF-8.
    assert "".join(stream_text(ckpt.tokenizer, ids)) == ckpt.tokenizer.decode(ids)


def test_cli_eval_reports_bits_per_byte_over_the_split_bytes(run_cli, bpe_dataset, tmp_path):
    train_new(tiny_config(bpe_dataset, max_iters=10), tmp_path / "run")
    proc = run_cli("eval", "--run", tmp_path / "run", "--json", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    val = json.loads(proc.stdout)["val"]
    dataset = load_dataset(bpe_dataset)
    assert val["bytes"] == int(byte_lengths(dataset.tokenizer)[dataset.val[1:]].sum())
    assert val["bits_per_byte"] == pytest.approx(val["loss"] * val["tokens"] / val["bytes"] / math.log(2))
    assert val["bits_per_byte"] < val["bits_per_token"]  # a BPE token is more than a byte on average
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_bits_per_byte" in r for r in metrics if "val_loss" in r)


def test_cli_generate_streams_a_bpe_model_with_any_prompt(run_cli, bpe_dataset, tmp_path):
    train_new(tiny_config(bpe_dataset, max_iters=10), tmp_path / "run")
    proc = run_cli("generate", "--run", tmp_path / "run", "--prompt", "Ωmega ∂ 東", "--max-new-tokens", "30", "--seed", "2",
                   env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Ωmega ∂ 東")


def test_a_dataset_with_another_tokenizer_is_refused_by_eval_and_resume(run_cli, bpe_dataset, tiny_dataset, tmp_path):
    train_new(tiny_config(bpe_dataset, max_iters=10), tmp_path / "run")
    proc = run_cli("eval", "--run", tmp_path / "run", "--data-dir", tiny_dataset, env=ONE_THREAD_ENV)
    assert proc.returncode == 1 and proc.stderr.startswith("Error:") and "differs" in proc.stderr
    with pytest.raises(TinyGPTError) as info:
        resume(tmp_path / "run", {"max_iters": 20, "data_dir": str(tiny_dataset)})
    assert "different tokenizer" in info.value.message and hint(info.value)
