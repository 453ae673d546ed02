"""Corpora of any size and shape: several files, folders, standard input, a separate validation
file; bounded memory; splits read through np.memmap train exactly as splits in memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ONE_THREAD_ENV, assert_error_output, assert_same_tensors, cli_env, make_text, stream_of, tiny_config

import tinygpt_cli.data.dataset as data_module
from tinygpt_cli.data.dataset import load_dataset
from tinygpt_cli.lifecycle import train_new
from tinygpt_cli.data.prepare import prepare_text
from tinygpt_cli.interop.pretrained import tokenizer_choice

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def corpus_folder(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for n, name in enumerate(("a.txt", "b.md", "sub/c.txt")):
        (folder / name).write_text(make_text(4000, seed=n), encoding="utf-8")
    (folder / "sub" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (folder / ".hidden.txt").write_text("not part of it\n")
    return folder


def test_a_folder_is_read_recursively_with_a_glob_and_binary_files_skipped(corpus_folder, tmp_path):
    result = prepare_text([str(corpus_folder)], tmp_path / "d", "d", 0.1, glob="*.txt")
    assert result.skipped_binary == 0 and result.info.documents == 2  # a.txt, sub/c.txt
    everything = prepare_text([str(corpus_folder)], tmp_path / "e", "e", 0.1)
    assert everything.skipped_binary == 1 and everything.info.documents == 3
    names = [s["name"] for s in everything.info.sources]
    assert names == [str(corpus_folder / "a.txt"), str(corpus_folder / "b.md"), str(corpus_folder / "sub" / "c.txt")]
    dataset = load_dataset(tmp_path / "e")
    text = "".join((corpus_folder / n).read_text(encoding="utf-8") for n in ("a.txt", "b.md", "sub/c.txt"))
    assert dataset.tokenizer.decode(stream_of(dataset.info, dataset.train, dataset.val).tolist()) == text


def test_documents_are_separated_by_the_end_of_text_token(corpus_folder, tmp_path):
    prepare_text([str(corpus_folder)], tmp_path / "d", "d", 0.1, tokenizer_choice("bpe", 300), glob="*.txt", val_split="end")
    dataset = load_dataset(tmp_path / "d")
    stream = np.concatenate([dataset.train, dataset.val])
    assert (stream == dataset.tokenizer.eot_id).sum() == 1  # between the two documents
    first = (corpus_folder / "a.txt").read_text(encoding="utf-8")
    at = int(np.flatnonzero(stream == dataset.tokenizer.eot_id)[0])
    assert dataset.tokenizer.decode(stream[:at].tolist()) == first


def test_a_folder_with_no_matching_file_is_one_error_line(run_cli, corpus_folder):
    proc = run_cli("prepare", "text", corpus_folder, "--glob", "*.rst")
    assert proc.returncode == 2
    assert_error_output(proc.stderr, "no text file matching '*.rst'", hint="--glob")


def test_standard_input_and_a_separate_validation_file(run_cli, tmp_path):
    train_text, val_text = make_text(6000, seed=1), make_text(1500, seed=2)
    (tmp_path / "val.txt").write_text(val_text, encoding="utf-8")
    proc = run_cli("prepare", "text", "-", "--name", "piped", "--val", "val.txt", "--json", input=train_text)
    assert proc.returncode == 0, proc.stderr
    dataset = load_dataset(tmp_path / "data" / "piped")
    assert dataset.info.val_split == "file"
    assert dataset.tokenizer.decode(dataset.train.tolist()) == train_text
    assert dataset.tokenizer.decode(dataset.val.tolist()) == val_text
    assert not list(tmp_path.glob("**/.spool.*"))  # the copy of standard input is gone


def test_a_validation_file_is_kept_whatever_the_split_asked_for(tmp_path):
    train_text, val_text = make_text(6000, seed=1), make_text(1500, seed=2)
    (tmp_path / "train.txt").write_text(train_text, encoding="utf-8")
    (tmp_path / "val.txt").write_text(val_text, encoding="utf-8")
    prepare_text(tmp_path / "train.txt", tmp_path / "d", "d", 0.1, val=str(tmp_path / "val.txt"), val_split="end")
    dataset = load_dataset(tmp_path / "d")
    assert dataset.tokenizer.decode(dataset.val.tolist()) == val_text
    assert dataset.tokenizer.decode(dataset.train.tolist()) == train_text


def test_a_text_without_line_breaks_is_read_in_bounded_pieces(tmp_path):
    from tinygpt_cli.data.corpus import FORCED_CUT, Source, read_pieces

    path = tmp_path / "one-line.txt"
    path.write_text("word " * 40_000, encoding="utf-8")
    pieces = list(read_pieces(Source(path, path.stat().st_size, "one-line.txt"), 1000))
    assert "".join(pieces) == path.read_text(encoding="utf-8")
    assert max(len(p) for p in pieces) <= FORCED_CUT * 1000 + (1 << 22)  # at most one read past the limit


def test_a_mistyped_tokenizer_is_one_usage_error(run_cli, tmp_path):
    (tmp_path / "t.txt").write_text(make_text(3000), encoding="utf-8")
    proc = run_cli("prepare", "text", "t.txt", "--tokenizer", "chr")
    assert proc.returncode == 2
    assert_error_output(proc.stderr, "--tokenizer chr", hint="--tokenizer bpe")


def test_a_split_read_through_memmap_trains_exactly_as_one_in_memory(tiny_dataset, tmp_path, monkeypatch):
    train_new(tiny_config(tiny_dataset, max_iters=20), tmp_path / "memory")
    monkeypatch.setattr(data_module, "IN_MEMORY_BYTES", 0)
    assert isinstance(load_dataset(tiny_dataset).train, np.memmap)
    train_new(tiny_config(tiny_dataset, max_iters=20), tmp_path / "mapped")
    assert_same_tensors(tmp_path / "memory" / "last.safetensors", tmp_path / "mapped" / "last.safetensors")


@pytest.mark.slow
def test_preparing_a_corpus_of_hundreds_of_mb_keeps_memory_bounded(tmp_path):
    """Peak RSS of the whole `tinygpt prepare text` process stays far below the corpus size."""
    chunk = make_text(1 << 20, seed=5).encode("utf-8")
    corpus = tmp_path / "big.txt"
    with open(corpus, "wb") as f:
        for _ in range(300):
            f.write(chunk)
    # A fresh parent, so that its children's peak RSS is the prepare's alone.
    measure = ("import resource, subprocess, sys; "
               "done = subprocess.run([sys.executable, '-m', 'tinygpt_cli', *sys.argv[1:]], stdout=subprocess.DEVNULL); "
               "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", measure, "prepare", "text", str(corpus), "--name", "big"],
                          cwd=tmp_path, env=cli_env(ONE_THREAD_ENV), capture_output=True, text=True, timeout=600)
    code, peak_kib = map(int, proc.stdout.split())
    peak_mib = peak_kib / 1024
    assert code == 0, proc.stderr
    info = load_dataset(tmp_path / "data" / "big").info
    assert info.text_bytes == 300 * len(chunk) and info.train_tokens + info.val_tokens == info.text_chars
    assert peak_mib < 400, f"peak RSS {peak_mib:.0f} MiB for a {info.text_bytes / 2**20:.0f} MiB corpus"


@pytest.mark.parametrize("tokenizer, phases", [("char", ["scan", "encode"]), ("bpe", ["scan", "merges", "encode"])])
def test_progress_has_a_stage_for_the_bpe_merges(small_text, tmp_path, tokenizer, phases):
    """A BPE's merges are learned between reading and encoding: without a stage of their own the
    bar sits at 'reading 100%' for them."""
    seen = []
    prepare_text(small_text, tmp_path / "d", "d", 0.1, tokenizer_choice(tokenizer, 300 if tokenizer == "bpe" else None),
                 progress=lambda phase, done, total: seen.append(phase) if not seen or seen[-1] != phase else None)
    assert seen == phases
