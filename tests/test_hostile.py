"""The second hostile sweep, by mechanism: ownership is proved before anything is replaced or
deleted, data is checked where it is used, outputs are never inputs, every read of a user's path
and every user-sized loop has a bound, and every parse of a user's file fails in one line."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import assert_error_output, assert_one_error, assert_same_tensors, make_text, rewrite_checkpoint, tiny_cli_flags, tiny_config

import tinygpt_cli.data.corpus as corpus_module
import tinygpt_cli.data.prepare as prepare_module
from tinygpt_cli.checkpoint import load_checkpoint
from tinygpt_cli.errors import TinyGPTError
from tinygpt_cli.interop.card import CARD_HEADER
from tinygpt_cli.lifecycle import resume, train_new
from tinygpt_cli.data.prepare import prepare_text
from tinygpt_cli.rundir import RunDir

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links as their target's path), to compare before and after."""
    return {str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


# --- ownership ---------------------------------------------------------------------------

@pytest.mark.parametrize("files, card_is_a_link", [
    ({"README.md": "mine"}, False),
    ({"config.json": "{}"}, False),
    ({"config.json": "{}", "model.safetensors": "weights of mine", "README.md": "# My model\n"}, False),
    ({"README.md": CARD_HEADER + "\nOur card, but the folder holds only a link to it.\n"}, True),
], ids=["readme", "lone-config", "export-names", "card-link"])
def test_export_overwrite_replaces_only_an_export_tinygpt_wrote(tinygpt, tiny_run, tmp_path, files, card_is_a_link):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in files.items():
        (tmp_path if card_is_a_link else folder).joinpath(name).write_text(text)
    if card_is_a_link:
        (folder / "README.md").symlink_to(tmp_path / "README.md")
    before = snapshot(tmp_path)
    code, _, err = tinygpt("export", folder, "--run", tiny_run, "--to", "hf", "--overwrite")
    assert_one_error(code, err, 2, str(folder))
    assert snapshot(tmp_path) == before  # and no staging folder is left beside it


def test_a_file_put_in_an_export_while_it_is_replaced_is_kept(tinygpt, tiny_run, tmp_path, monkeypatch):
    import tinygpt_cli.interop.export as export_module

    folder = tmp_path / "hf"
    assert tinygpt("export", folder, "--run", tiny_run, "--to", "hf")[0] == 0
    real_save = export_module.save_file

    def save_then_the_user_writes(*args, **kwargs):
        real_save(*args, **kwargs)
        (folder / "notes.txt").write_text("mine")  # between the check and the swap

    monkeypatch.setattr(export_module, "save_file", save_then_the_user_writes)
    code, _, err = tinygpt("export", folder, "--run", tiny_run, "--to", "hf", "--overwrite")
    assert_one_error(code, err, 2, "notes.txt")
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_an_export_tinygpt_wrote_is_replaced_and_an_empty_folder_filled(tinygpt, tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    assert tinygpt("export", tmp_path / "empty", "--run", tiny_run, "--to", "hf")[0] == 0
    assert (tmp_path / "empty" / "README.md").read_text(encoding="utf-8").startswith(CARD_HEADER)
    code, _, err = tinygpt("export", tmp_path / "empty", "--checkpoint", tiny_run / "last.safetensors", "--to", "hf", "--overwrite")
    assert code == 0, err
    assert "(last)" in (tmp_path / "empty" / "README.md").read_text(encoding="utf-8")


def test_runs_rm_never_deletes_through_a_symbolic_link(tinygpt, tiny_run, tmp_path, monkeypatch):
    real = tmp_path / "elsewhere" / "real"
    shutil.copytree(tiny_run, real)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    before = snapshot(real)
    code, _, err = tinygpt("runs", "--rm", "link", "--yes")
    assert_one_error(code, err, 2, "symbolic link", str(real))
    assert snapshot(real) == before and (tmp_path / "runs" / "link").is_symlink()
    shutil.copytree(tiny_run, tmp_path / "runs" / "plain")
    code, _, err = tinygpt("runs", "--rm", "plain", "--rm", "link", "--yes")  # one refused: none deleted
    assert_one_error(code, err, 2, "symbolic link")
    assert (tmp_path / "runs" / "plain" / "best.safetensors").exists()
    assert tinygpt("runs", "--rm", real, "--yes")[0] == 0 and not real.exists()  # the folder itself is deleted


# --- data that changes under us ----------------------------------------------------------

def reversed_lines(text: str) -> str:
    """Other text with the very same characters: the same character vocabulary."""
    return "\n".join(reversed(text.splitlines())) + "\n"


def test_resume_refuses_a_dataset_prepared_again_from_other_text(tinygpt, tmp_path):
    text = make_text(20_000, seed=7)
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text(reversed_lines(text))
    data, run = tmp_path / "data", tmp_path / "run"
    prepare_text(tmp_path / "a.txt", data, "a", 0.1)
    assert tinygpt("train", *tiny_cli_flags(data, max_iters=10), "--out", run)[0] == 0
    prepare_text(tmp_path / "b.txt", data, "a", 0.1)  # the same tokenizer, other token ids
    before = snapshot(run)
    code, _, err = tinygpt("resume", "--run", run, "--max-iters", "20")
    assert_one_error(code, err, 1, "prepared again since iteration 10")
    assert "--allow-data-change" in err
    assert snapshot(run) == before

    code, _, err = tinygpt("resume", "--run", run, "--max-iters", "20", "--allow-data-change")
    assert code == 0, err
    status = RunDir(run).read_status()
    assert [c["iteration"] for c in status["data_changes"]] == [10]
    assert status["data_changes"][0]["from_sha256"] != status["data_changes"][0]["to_sha256"]
    assert tinygpt("resume", "--run", run, "--max-iters", "30")[0] == 0  # the checkpoint now records the new data
    assert [c["iteration"] for c in RunDir(run).read_status()["data_changes"]] == [10]  # and run.json keeps the note


def test_a_text_rewritten_between_the_scan_and_the_encoding_is_refused(tmp_path, monkeypatch):
    text = make_text(20_000, seed=3)
    source, data = tmp_path / "a.txt", tmp_path / "data"
    source.write_text(text)
    prepare_text(source, data, "a", 0.1)
    before = snapshot(data)
    source.write_text(make_text(20_000, seed=4))
    real_scan = prepare_module.scan

    def scan_then_rewrite(*args, **kwargs):
        found = real_scan(*args, **kwargs)
        source.write_text(reversed_lines(source.read_text()))  # same size class, other bytes
        return found

    monkeypatch.setattr(prepare_module, "scan", scan_then_rewrite)
    with pytest.raises(TinyGPTError, match="changed while it was being prepared"):
        prepare_text(source, data, "a", 0.1)
    assert snapshot(data) == before  # the dataset of the text that was checked stays


def test_a_dataset_folder_inside_its_corpus_is_never_read_as_text(tinygpt, tmp_path):
    corpus = tmp_path / "self"
    corpus.mkdir()
    (corpus / "a.txt").write_text(make_text(20_000, seed=5))
    for _ in range(2):
        code, out, err = tinygpt("prepare", "text", corpus, "--data-dir", corpus / "out", "--json")
        assert code == 0, err
        summary = json.loads(out)
        assert summary["documents"] == 1 and summary["text_bytes"] == (corpus / "a.txt").stat().st_size
    assert summary["reused"]
    code, _, err = tinygpt("prepare", "text", corpus / "out", "--data-dir", corpus / "out")
    assert_one_error(code, err, 2, "dataset folder being written")
    code, _, err = tinygpt("prepare", "text", corpus / "a.txt", "--val", corpus / "out" / "meta.json", "--data-dir", corpus / "out")
    assert_one_error(code, err, 2, "dataset folder being written")


def test_links_that_leave_an_input_folder_are_skipped_unless_followed(tinygpt, tmp_path):
    corpus, outside = tmp_path / "corpus", tmp_path / "outside.txt"
    corpus.mkdir()
    (corpus / "a.txt").write_text(make_text(20_000, seed=1))
    outside.write_text(make_text(20_000, seed=2))
    (corpus / "b-out.txt").symlink_to(outside)
    (corpus / "c-in.txt").symlink_to(corpus / "a.txt")  # a second name for a file already read
    (corpus / "sub").symlink_to(corpus, target_is_directory=True)  # a loop
    code, out, err = tinygpt("prepare", "text", corpus, "--data-dir", tmp_path / "d1", "--json")
    assert code == 0, err
    assert [s["name"] for s in json.loads(out)["sources"]] == [str(corpus / "a.txt")]
    assert "skipped 1 symbolic link(s)" in err and "--follow-symlinks" in err
    code, out, err = tinygpt("prepare", "text", corpus, "--data-dir", tmp_path / "d2", "--json", "--follow-symlinks")
    assert code == 0, err
    assert [s["name"] for s in json.loads(out)["sources"]] == [str(corpus / "a.txt"), str(corpus / "b-out.txt")]


@pytest.mark.parametrize("glob", ["/etc/*", "../*", "sub/../../*", "", ".", "./", "**/", "sub/**"])
def test_a_glob_that_would_leave_the_folder_is_one_usage_error(tinygpt, small_text, glob):
    code, _, err = tinygpt("prepare", "text", small_text.parent, "--glob", glob)
    assert_one_error(code, err, 2, "--glob")


@pytest.mark.parametrize("glob, names", [("*.txt", ["a.txt", "sub/b.txt", "sub/x/y/d.txt"]), ("**/*.txt", ["a.txt", "sub/b.txt", "sub/x/y/d.txt"]),
                                         ("sub/*.txt", ["sub/b.txt"]), ("sub/**/*.txt", ["sub/b.txt", "sub/x/y/d.txt"]),
                                         ("y/*", ["sub/x/y/d.txt"]), ("./*.md", ["sub/c.md"])])
def test_a_glob_matches_as_rglob_does(tmp_path, glob, names):
    folder = tmp_path / "c"
    (folder / "sub" / "x" / "y").mkdir(parents=True)
    for name in ("a.txt", "sub/b.txt", "sub/c.md", "sub/x/y/d.txt"):
        (folder / name).write_text(make_text(3000, seed=len(name)))
    found = corpus_module.collect_sources([str(folder)], glob)
    assert [str(s.path.relative_to(folder)) for s in found.sources] == names
    assert names == sorted(str(p.relative_to(folder)) for p in folder.rglob(glob.removeprefix("./")) if p.is_file())


# --- bounds --------------------------------------------------------------------------------

class EndlessText(io.RawIOBase):
    """A standard input that never ends (`yes | tinygpt prepare text -`)."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = b"y\n" * (len(buffer) // 2) + b"y" * (len(buffer) % 2)
        return len(buffer)


def test_standard_input_is_spooled_up_to_a_limit_that_the_error_names(tinygpt, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "MAX_SPOOL_BYTES", 3 * corpus_module.READ_BYTES)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(EndlessText())))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, _, err = tinygpt("prepare", "text", "-", "--data-dir", tmp_path / "d")
    assert_one_error(code, err, 1, f"{3 * corpus_module.READ_BYTES:,}-byte limit", "standard input")
    assert [p.name for p in tmp_path.iterdir()] == []  # the spool and its folder are gone, no dataset was begun


@pytest.mark.parametrize("args, words", [
    (["generate", "--num-samples", "1000000", "--max-new-tokens", "5", "--run", "RUN"], "--num-samples"),
    (["generate", "--max-new-tokens", str(10**9), "--run", "RUN"], "--max-new-tokens"),
    (["bench", "--preset", "cpu", "--steps", str(10**9)], "--steps"),
    (["bench", "--preset", "cpu", "--repeats", str(10**9)], "--repeats"),
])
def test_user_sized_loops_have_a_limit_that_the_error_names(tinygpt, tiny_run, args, words):
    code, _, err = tinygpt(*[tiny_run if a == "RUN" else a for a in args])
    assert_one_error(code, err, 2, words)


def test_surprise_refuses_a_text_past_its_limit_before_reading_it(tinygpt, tiny_run, tmp_path, monkeypatch):
    import tinygpt_cli.inside.measure as inside_module

    big = tmp_path / "big.txt"
    big.write_text("To be, or not to be\n" * 5000)  # 100,000 bytes
    monkeypatch.setattr(inside_module, "MAX_SURPRISE_BYTES", 50_000)
    code, _, err = tinygpt("surprise", "--run", tiny_run, big)
    assert_one_error(code, err, 1, "50,000-byte limit")
    assert "eval" in err  # where a whole large text is scored


# --- one line for every parse --------------------------------------------------------------

def test_a_run_config_with_a_wrong_type_is_one_line(tinygpt, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["max_iters"] = "lots"
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = tinygpt("resume", "--run", run)
    assert_error_output(err, "max_iters", "valid integer")
    assert code == 1


@pytest.fixture
def unwritable_run(tiny_run, tmp_path):
    """A copy of the tiny run in a folder where no file can be made, for root too: immutable
    (chattr +i), its files still writable (the lock can be taken), as on a read-only share."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / ".lock").touch()
    made = subprocess.run(["chattr", "+i", str(run)], capture_output=True, text=True) if shutil.which("chattr") else None
    if made is None or made.returncode:
        pytest.skip(f"cannot make a folder immutable here: {made.stderr.strip() if made else 'no chattr'}")
    try:
        yield run
    finally:
        subprocess.run(["chattr", "-i", str(run)], check=True)


@pytest.mark.parametrize("log", ["tensorboard", "wandb"])
def test_resume_into_a_folder_it_cannot_write_changes_nothing(tinygpt, unwritable_run, log):
    """A tracker would write there first: the check comes before it."""
    before = snapshot(unwritable_run)
    code, _, err = tinygpt("resume", "--run", unwritable_run, "--max-iters", "40", "--log", log)
    assert_one_error(code, err, 1, "cannot write to the run folder")
    assert snapshot(unwritable_run) == before


# --- float16 -------------------------------------------------------------------------------

def test_a_float16_run_resumes_bit_for_bit_with_its_loss_scale(tiny_dataset, tmp_path, monkeypatch):
    """float16 skips the steps whose scaled gradients overflow and grows the scale after
    `growth_interval` clean steps: a resume takes up the scale and its count where they stood.
    A short interval moves the scale within the test."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, growth_interval=3))
    config = tiny_config(tiny_dataset, max_iters=40, dtype="float16", lr_decay="constant")
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_new(config, whole)
    train_new(tiny_config(tiny_dataset, max_iters=20, dtype="float16", lr_decay="constant"), part)
    saved = load_checkpoint(part / "last.safetensors").progress["loss_scale"]
    assert saved["scale"] != 2.0**16 or saved["growth_tracker"] != 0  # it moved
    forgetful = Path(shutil.copytree(part, tmp_path / "forgetful"))
    rewrite_checkpoint(forgetful / "last.safetensors", change_meta=lambda meta: meta.update(
        progress=json.dumps({**json.loads(meta["progress"]), "loss_scale": None})))
    resume(part, {"max_iters": 40})
    assert_same_tensors(whole / "last.safetensors", part / "last.safetensors")
    resume(forgetful, {"max_iters": 40})  # a fresh scaler from there on: the weights come out otherwise
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_same_tensors(whole / "last.safetensors", forgetful / "last.safetensors")


def test_a_checkpoint_of_format_3_with_pythons_and_numpys_states_still_resumes_bit_for_bit(tiny_dataset, tmp_path):
    """Format 3 held Python's and numpy's global generators too: they are checked, then left
    alone (tinygpt draws from neither), and the resume ends where an uninterrupted run does."""
    import random

    import numpy as np

    whole, part = tmp_path / "whole", tmp_path / "part"
    train_new(tiny_config(tiny_dataset, max_iters=40, dropout=0.1, lr_decay="constant"), whole)
    train_new(tiny_config(tiny_dataset, max_iters=20, dropout=0.1, lr_decay="constant"), part)
    state = np.random.get_state()

    def as_format_3(meta):
        meta["format_version"] = "3"
        meta["rng_python"] = json.dumps(random.getstate())
        meta["rng_numpy"] = json.dumps([state[0], state[1].tolist(), *state[2:]])

    rewrite_checkpoint(part / "last.safetensors", change_meta=as_format_3)
    python_before = random.getstate()
    resume(part, {"max_iters": 40})
    assert random.getstate() == python_before  # not set from the checkpoint
    assert_same_tensors(whole / "last.safetensors", part / "last.safetensors")
