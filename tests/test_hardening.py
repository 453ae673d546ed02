"""Hardening: a run survives a kill at any instant, bad input of every kind fails readably,
signals during evaluation and saving stop cleanly, and readers never see a partial checkpoint.

Faults are injected from the test side only: monkeypatching in this process, or a small wrapper
script that patches the real modules and then runs the real `tinygpt` entry point.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (ONE_THREAD_ENV, TINY_MODEL, TINY_TEXT_CHARS, TINY_TRAIN, assert_one_error, assert_same_tensors, cli_env, hint,
                      make_text, stream_of, tiny_cli_flags, tiny_config, wait_for)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tinygpt_cli.checkpoint as checkpoint_module
import tinygpt_cli.data.dataset as data_module
import tinygpt_cli.system.fsutil as fsutil_module
from tinygpt_cli.checkpoint import load_checkpoint, read_metadata
from tinygpt_cli.config import ALL_FIELDS, flag_name, resolve_config
from tinygpt_cli.data.dataset import load_dataset
from tinygpt_cli.data.prepare import prepare_text
from tinygpt_cli.errors import CheckpointError, ConfigError, TinyGPTError, TrainingStopped, UsageError
from tinygpt_cli.model import GPT
from tinygpt_cli.params import param_report
from tinygpt_cli.rundir import RunDir
from tinygpt_cli.runs.table import read_summary
from tinygpt_cli.lifecycle import TrainingReporter, resume, train_new
from tinygpt_cli.train import Trainer, learning_rate_at
from tinygpt_cli.data.vocab import UnknownCharactersError, Vocabulary

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Settings of the runs below: an eval (and a `last` save) every 5 steps, a constant rate after
# warmup so that a run resumed to N steps can be compared with one trained straight to N.
EVERY_5 = dict(eval_interval=5, eval_iters=1, batch_size=4, lr_decay="constant")
LONG = 100_000  # max_iters of subprocess runs that are killed long before the end


# --- helpers ---------------------------------------------------------------------------------

def tmp_leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def popen_cli(args: list, cwd: Path, log: Path, wrapper: list | None = None) -> subprocess.Popen:
    """`python -m tinygpt_cli ARGS` (or `python WRAPPER ... ARGS`), output to a file so no pipe fills up."""
    command = [sys.executable, *map(str, wrapper or ["-m", "tinygpt_cli"]), *map(str, args)]
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.Popen(command, cwd=str(cwd), env=cli_env(ONE_THREAD_ENV), stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def kill_hard(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def assert_recoverable(run: Path, data_dir: Path, more: int = 10, **settings) -> int:
    """Whatever state a killed training left in `run`, the folder is usable again: `resume`
    completes from an intact `last` checkpoint, or (nothing saved yet) fails readably and
    `train --overwrite` starts it again; either way `best` is the checkpoint of the best loss
    recorded. `more`: iterations to train after resuming (10: past the evaluation that was cut
    short). Returns the iteration resumed from (-1: started over)."""
    last = run / "last.safetensors"
    if last.exists():
        ckpt = load_checkpoint(last)  # loads and verifies its digest
        assert ckpt.optimizer is not None and ckpt.rng is not None
        target = ckpt.iteration + more
        result = resume(run, {"max_iters": target})
        assert result.iteration == target
        started_from = ckpt.iteration
    else:
        with pytest.raises(TinyGPTError) as info:
            resume(run)
        assert hint(info.value), info.value.message  # says what to do instead
        train_new(tiny_config(data_dir, **{**settings, "max_iters": 3}), run, overwrite=True)
        started_from = -1
    assert RunDir(run).read_status()["status"] == "finished"
    final = load_checkpoint(last)
    best = load_checkpoint(run / "best.safetensors")
    # The best checkpoint is the one whose loss the run records as its best.
    assert best.val_loss == final.best_val_loss, (best.iteration, best.val_loss, final.best_val_loss)
    return started_from


# A wrapper around the real entry point that injects one fault into the `last` save (or, for
# mode best-save, the `best` save) of iteration AT: argv = MODE MARKER AT tinygpt-args...
FAULT_WRAPPER = r'''
import os, resource, signal, sys, time
from pathlib import Path

import tinygpt_cli.checkpoint as checkpoint
import tinygpt_cli.system.fsutil as fsutil
from tinygpt_cli.cli.app import main

mode, marker, at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
real_save, real_fsync_dir = checkpoint.save_file, fsutil._fsync_dir
armed = []


def hang():
    marker.touch()  # tells the test that the process now sits inside the save
    time.sleep(600)  # the test kills it here


def save_file(tensors, filename, metadata=None):
    if mode == "best-save" and Path(filename).name.startswith(".best.safetensors.") and int(metadata["iteration"]) == at:
        hang()  # the save of the new best checkpoint has begun
    targeted = Path(filename).name.startswith(".last.safetensors.") and int(metadata["iteration"]) == at
    if not targeted:
        return real_save(tensors, filename, metadata=metadata)
    if mode == "efbig":  # a real write error from the real writer: files may not grow past 4 KiB now
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return real_save(tensors, filename, metadata=metadata)
    real_save(tensors, filename, metadata=metadata)
    if mode == "half":  # as if killed halfway through writing
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        hang()
    elif mode == "complete":  # written, not yet renamed
        hang()
    elif mode == "after-rename":
        armed.append(True)


def fsync_dir(folder):
    if armed:  # the new file has its final name; the folder is not yet synced
        hang()
    real_fsync_dir(folder)


checkpoint.save_file = save_file
fsutil._fsync_dir = fsync_dir
sys.argv = ["tinygpt", *sys.argv[4:]]
main()
'''


def train_with_fault(data_dir: Path, tmp_path: Path, settings: dict, fault: str):
    """Start `tinygpt train` under FAULT_WRAPPER, which injects `fault` into the save at
    iteration 10 and touches the returned marker file when it gets there."""
    run, log, marker = tmp_path / "run", tmp_path / "log.txt", tmp_path / "inside-save"
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(FAULT_WRAPPER, encoding="utf-8")
    proc = popen_cli(["train", *tiny_cli_flags(data_dir, **settings), "--out", run], tmp_path, log,
                     wrapper=[wrapper, fault, marker, 10])
    return proc, run, log, marker


# --- 1. a kill at any instant --------------------------------------------------------------

@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_sigkill_after_a_delay_leaves_a_resumable_run(tiny_dataset, tmp_path, delay):
    run, log = tmp_path / "run", tmp_path / "log.txt"
    settings = dict(EVERY_5, max_iters=LONG)
    proc = popen_cli(["train", *tiny_cli_flags(tiny_dataset, **settings), "--out", run], tmp_path, log)
    try:
        time.sleep(delay)  # only chooses the instant of the kill
        assert proc.poll() is None, log.read_text(encoding="utf-8")
    finally:
        kill_hard(proc)
    assert proc.returncode == -signal.SIGKILL
    if (run / "run.json").exists():  # a killed run shows as crashed, not as running
        assert read_summary(run).status == "crashed"
    assert_recoverable(run, tiny_dataset, **settings)


@pytest.mark.parametrize("mode", ["half", "complete", "after-rename"])
def test_sigkill_during_a_checkpoint_write(tiny_dataset, tmp_path, mode):
    settings = dict(EVERY_5, max_iters=LONG)
    proc, run, log, marker = train_with_fault(tiny_dataset, tmp_path, settings, mode)
    try:
        wait_for(marker.exists, proc, log)
    finally:
        kill_hard(proc)
    assert proc.returncode == -signal.SIGKILL

    # The kill hit the save of iteration 10: the final name holds iteration 5 (not yet
    # replaced) or iteration 10 (replaced), never a part of either.
    expected = 10 if mode == "after-rename" else 5
    assert load_checkpoint(run / "last.safetensors").iteration == expected
    leftovers = tmp_leftovers(run)
    if mode == "after-rename":
        assert not leftovers
    else:
        assert [p.name.startswith(".last.safetensors.") for p in leftovers] == [True], leftovers
        with pytest.raises(CheckpointError) if mode == "half" else nullcontext():
            load_checkpoint(leftovers[0])  # half a file is detected as damaged

    # Resuming (the lock of the killed process is gone, the stray temp file is removed)
    # gives exactly the run trained straight to the same iteration.
    assert assert_recoverable(run, tiny_dataset, **settings) == expected
    assert not tmp_leftovers(run)
    straight = tmp_path / "straight"
    train_new(tiny_config(tiny_dataset, **{**settings, "max_iters": expected + 10}), straight)
    assert_same_tensors(run / "last.safetensors", straight / "last.safetensors")


def test_sigkill_between_the_saves_of_one_evaluation_keeps_best_consistent(tiny_dataset, tmp_path):
    """Killed when the evaluation at 10 found a new best and its saves are under way: once the
    run is resumed, even with nothing left to train, `best` holds the best loss `last` records."""
    settings = dict(EVERY_5, max_iters=LONG)
    proc, run, log, marker = train_with_fault(tiny_dataset, tmp_path, settings, "best-save")
    try:
        wait_for(marker.exists, proc, log)
    finally:
        kill_hard(proc)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "best.safetensors").iteration == 5
    # `best` is saved before `last`: both are still at 5 and agree (with last-then-best, `last`
    # would be at 10 with a best loss that no `best` file holds).
    assert assert_recoverable(run, tiny_dataset, more=0, **settings) == 5


def test_a_real_write_error_during_a_save_is_one_error_line_and_the_run_resumes(tiny_dataset, tmp_path):
    """The real writer (safetensors) fails with EFBIG past a file-size limit set mid-run: the CLI
    prints one Error and one Try line, the previous `last` stays, the status says failed."""
    settings = dict(EVERY_5, max_iters=LONG)
    proc, run, log, marker = train_with_fault(tiny_dataset, tmp_path, settings, "efbig")
    try:
        proc.wait(timeout=120)
    finally:
        kill_hard(proc)
    output = log.read_text(encoding="utf-8")
    assert proc.returncode == 1, output
    error = output[output.index("Error:"):].splitlines()
    assert error[0] == f"Error: cannot write checkpoint {run / 'last.safetensors'}: File too large", output
    assert error[1].startswith("Try: ") and f"tinygpt resume --run {run}" in error[1], output
    assert len(error) == 2 and "Traceback" not in output, output
    assert load_checkpoint(run / "last.safetensors").iteration == 5
    assert not tmp_leftovers(run)
    status = RunDir(run).read_status()
    assert status["status"] == "failed" and "File too large" in status["reason"]
    assert assert_recoverable(run, tiny_dataset, **settings) == 5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncation_or_zero_filled_range_is_detected(tiny_run, tmp_path, data):
    raw = (tiny_run / "last.safetensors").read_bytes()
    if data.draw(st.booleans(), label="truncate"):
        damaged = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        start = data.draw(st.integers(0, len(raw) - 1), label="start")
        length = data.draw(st.integers(1, 4096), label="length")
        damaged = raw[:start] + bytes(min(length, len(raw) - start)) + raw[start + length:]
        assume(damaged != raw)  # zeros over bytes that were zero change nothing
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in info.value.message and "\n" not in info.value.message


# --- 2. bad input ------------------------------------------------------------------------

_ODD_STRINGS = ["3", "0.1", "-1", "nan", "inf", "-inf", "1e999", "", " ", "cosine", "rope", "gelu", "true", "auto", "é", "0x10"]
ODD_VALUES = st.one_of(
    st.integers(-3, 64),
    st.integers(2**31, 2**80),
    st.integers(-(2**80), -(2**31)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -0.0, 0.5, 0.999999, 10**400, "9" * 500]),
    st.sampled_from(_ODD_STRINGS),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.just("a"), st.integers(), max_size=1),
)


@settings(max_examples=150, deadline=None)
@given(flags=st.dictionaries(st.sampled_from(ALL_FIELDS), ODD_VALUES, max_size=5))
def test_any_hyperparameters_validate_into_a_working_model_or_fail_readably(flags):
    try:
        config = resolve_config(None, None, {**TINY_MODEL, "vocab_size": 20, **flags})
    except UsageError as e:  # nothing but a UsageError (exit 2) may escape
        assert isinstance(e, ConfigError) and e.exit_code == 2
        assert e.message.startswith("invalid configuration:") and e.problems
        for problem in e.problems:
            assert problem.strip() and len(problem) < 300, problem  # a huge input is not echoed whole
            assert "Traceback" not in problem and "pydantic" not in problem.lower()
        named = [p for p in e.problems if p.startswith("--")]
        assert all(p.split(":")[0] in {flag_name(f) for f in ALL_FIELDS} for p in named), e.message
        return
    # Valid: every number is finite and usable by what training does with it.
    for name, value in config.flat().items():
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)
    np.random.RandomState(config.train.seed)
    torch.Generator().manual_seed(config.train.seed)
    assert all(math.isfinite(learning_rate_at(s, config.train)) for s in (0, config.train.max_iters // 2, config.train.max_iters))
    report = param_report(config.model)
    assert report.total > 0
    if report.total > 300_000 or config.model.block_size > 512:
        return  # a valid but big model: building it would only test this machine's memory
    model = GPT(config.model).eval()
    T = min(config.model.block_size, 16)
    idx = torch.randint(0, config.model.vocab_size, (2, T))
    with torch.no_grad():
        logits, loss = model(idx, idx)
    assert logits.shape == (2, T, config.model.vocab_size)
    assert torch.isfinite(logits).all() and torch.isfinite(loss)


@pytest.mark.parametrize("flag,value,words", [
    ("--learning-rate", "nan", "--learning-rate: Input should be a finite number"),
    ("--learning-rate", "inf", "--learning-rate: Input should be a finite number"),
    ("--dropout", "nan", "--dropout: Input should be a finite number"),
    ("--dropout", "-inf", "--dropout: Input should be a finite number"),
    ("--grad-clip", "inf", "--grad-clip: Input should be a finite number"),
    ("--seed", str(2**40), "--seed: Input should be less than or equal to 4294967295"),
])
def test_cli_train_rejects_non_finite_and_out_of_range_numbers(tinygpt, tiny_dataset, tmp_path, flag, value, words):
    code, out, err = tinygpt("train", "--preset", "cpu", "--data-dir", tiny_dataset, flag, value, "--out", tmp_path / "run")
    assert_one_error(code, err, 2, "invalid configuration", words)
    assert out == ""
    assert not (tmp_path / "run").exists()


def test_cli_train_rejects_a_non_number_before_doing_anything(tinygpt, tmp_path):
    code, out, err = tinygpt("train", "--n-layer", "abc", "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err and "--n-layer" in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_vocab(tiny_run) -> Vocabulary:
    return Vocabulary.from_dict(read_metadata(tiny_run / "best.safetensors")["vocab"])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_prompt_encodes_or_lists_exactly_its_unknown_characters(tiny_vocab, data):
    vocab = tiny_vocab
    anything = st.characters(exclude_categories=())  # surrogates and control characters too
    prompt = data.draw(st.text(alphabet=st.one_of(st.sampled_from(vocab.chars), anything), min_size=1, max_size=40))
    unknown = sorted(set(prompt) - set(vocab.chars))
    if not unknown:
        assert vocab.decode(vocab.encode(prompt)) == prompt
        return
    with pytest.raises(UnknownCharactersError) as info:
        vocab.encode(prompt)
    e = info.value
    assert e.exit_code == 2 and e.unknown == unknown
    assert e.message.startswith(f"{len(unknown)} character(s) not in the vocabulary")
    assert "\n" not in e.message  # listed with repr: newlines and controls are escaped
    for ch in unknown[:20]:
        assert repr(ch) in e.message
    assert (f"and {len(unknown) - 20} more" in e.message) == (len(unknown) > 20)


def _other_vocabulary_dataset(tiny_dataset: Path, folder: Path, change: str) -> Path:
    """The tiny dataset's text with one character replaced (same vocabulary size, other
    characters) or one added (one more character), prepared into `folder`."""
    text = make_text(TINY_TEXT_CHARS, seed=2024)
    assert load_dataset(tiny_dataset).info.text_chars == len(text) and "q" in text and "#" not in text
    source = folder.parent / "other.txt"
    source.write_text(text.replace("q", "#") if change == "same-size" else text + "#", encoding="utf-8")
    prepare_text(source, folder, "tiny", 0.1)
    return folder


@pytest.mark.parametrize("change", ["same-size", "one-more"])
def test_resume_refuses_a_dataset_whose_vocabulary_changed(tiny_run, tiny_dataset, tmp_path, change):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data_dir = _other_vocabulary_dataset(tiny_dataset, tmp_path / "data", change)
    other, mine = load_dataset(data_dir).tokenizer, load_dataset(tiny_dataset).tokenizer
    assert other != mine and (other.size == mine.size) == (change == "same-size")
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config["train"]["data_dir"] = str(data_dir)  # the run's own dataset folder, prepared again from another text
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    with pytest.raises(TinyGPTError) as info:
        resume(run, {"max_iters": 40})
    assert not isinstance(info.value, TrainingStopped)
    assert "different tokenizer" in info.value.message and str(data_dir) in info.value.message
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}  # nothing touched


@pytest.mark.parametrize("extra", [0, 1, 10**6])
def test_cli_train_block_size_not_smaller_than_a_split(tinygpt, tiny_dataset, tmp_path, extra):
    val_tokens = load_dataset(tiny_dataset).info.val_tokens
    code, out, err = tinygpt("train", *tiny_cli_flags(tiny_dataset, block_size=val_tokens + extra), "--out", tmp_path / "run")
    assert_one_error(code, err, 2, f"--block-size: {val_tokens + extra} must be smaller than each split", f"val {val_tokens:,}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "/abs", "x/../../y", ".hidden"])
def test_prepare_text_names_that_leave_their_folder_are_refused(tinygpt, tmp_path, monkeypatch, small_text, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p for p in tmp_path.rglob("*"))
    code, out, err = tinygpt("prepare", "text", small_text, "--name", name)
    assert_one_error(code, err, 2, "invalid dataset name", repr(name))
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not Path("/abs").exists()


def test_prepare_text_of_a_binary_file(tinygpt, tmp_path):
    blob = tmp_path / "model.bin"
    blob.write_bytes(bytes(range(1, 256)) * 64)
    code, _, err = tinygpt("prepare", "text", blob, "--data-dir", tmp_path / "d")
    assert_one_error(code, err, 1, "not UTF-8 text", "byte offset")
    blob.write_bytes(("text " * 200 + "\x00" + "more " * 200).encode())
    code, _, err = tinygpt("prepare", "text", blob, "--data-dir", tmp_path / "d")
    assert_one_error(code, err, 1, "looks binary", "NUL byte at byte offset 1,000")
    assert not (tmp_path / "d").exists()


@settings(max_examples=40, deadline=None)
@given(prefix=st.sampled_from(["", make_text(3000, seed=9)]), blob=st.binary(max_size=600))
def test_prepare_text_of_any_bytes_builds_a_dataset_or_fails_readably(prefix, blob):
    raw = prefix.encode() + blob
    with tempfile.TemporaryDirectory() as tmp:
        source, folder = Path(tmp) / "in.txt", Path(tmp) / "d"
        source.write_bytes(raw)
        try:
            result = prepare_text(source, folder, "d", 0.1)
        except TinyGPTError as e:
            assert e.message and "\n" not in e.message
            assert not (folder / "meta.json").exists() and not list(Path(tmp).rglob("*.tmp"))
            return
        dataset = load_dataset(folder)
        assert dataset.tokenizer.decode(stream_of(dataset.info, dataset.train, dataset.val).tolist()) == raw.decode("utf-8")
        assert result.info.text_bytes == len(raw)


def test_an_enormous_file_is_streamed_and_a_binary_one_refused_at_its_first_bytes(tinygpt, tmp_path):
    """prepare reads a local file of any size in pieces; `vocab FILE` still refuses one past its
    limit before reading it."""
    huge = tmp_path / "huge.txt"
    huge.touch()
    os.truncate(huge, data_module.MAX_SOURCE_BYTES + 1)  # sparse zeros: nothing is really written
    code, _, err = tinygpt("prepare", "text", huge, "--data-dir", tmp_path / "d")
    assert_one_error(code, err, 1, str(huge), "looks binary", "byte offset 0")
    assert not (tmp_path / "d").exists()
    code, _, err = tinygpt("vocab", huge)
    assert_one_error(code, err, 1, "-byte limit")


def test_an_endless_device_is_refused_at_its_first_bytes(tmp_path):
    with pytest.raises(TinyGPTError, match="/dev/zero looks binary"):
        prepare_text(Path("/dev/zero"), tmp_path / "d", "d", 0.1)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("source", ["ftp://example.com/input.txt", "file:///etc/passwd", "FILE:///etc/hostname",
                                    "gopher://example.com/x", "javascript://alert(1)"])
def test_source_with_a_scheme_other_than_http_is_a_usage_error(tinygpt, tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    code, _, err = tinygpt("prepare", "shakespeare", "--source", source)
    assert_one_error(code, err, 2, "unsupported URL scheme", source)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("out", ["afile", "afile/run"])
def test_out_where_no_folder_can_be_made(tiny_dataset, tmp_path, out):
    # tests run as root, so permissions do not stop a write: route the folder through a regular file
    (tmp_path / "afile").write_text("in the way\n")
    with pytest.raises(TinyGPTError) as info:
        train_new(tiny_config(tiny_dataset, max_iters=3), tmp_path / out)
    assert not isinstance(info.value, UsageError)
    assert info.value.message.startswith(f"cannot create run folder {tmp_path / out}")
    assert "--out" in hint(info.value)
    assert (tmp_path / "afile").read_text() == "in the way\n"


class KeepBytes(TrainingReporter):
    """Keeps a copy of `last.safetensors` as it is right after the evaluation at `at`."""

    def __init__(self, run: Path, at: int):
        self.run, self.at, self.copy = run, at, None

    def on_eval(self, record):
        if record["iter"] == self.at:
            self.copy = (self.run / "last.safetensors").read_bytes()


@pytest.mark.parametrize("at", [0, 10])
def test_a_full_disk_during_a_save_is_a_checkpoint_error_and_keeps_the_previous_file(tiny_dataset, tmp_path, monkeypatch, at):
    run = tmp_path / "run"
    real_save = checkpoint_module.save_file

    def full_disk(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".last.") and int(metadata["iteration"]) == at:
            real_save(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 3])  # the disk filled up here
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    keep = KeepBytes(run, 5)
    config = tiny_config(tiny_dataset, **EVERY_5, max_iters=15)
    with pytest.raises(CheckpointError) as info:
        train_new(config, run, keep)
    monkeypatch.undo()
    e = info.value
    assert e.exit_code == 1
    assert e.message == f"cannot write checkpoint {run / 'last.safetensors'}: No space left on device"
    assert "free some disk space" in hint(e)
    assert not tmp_leftovers(run)
    status = RunDir(run).read_status()
    assert status["status"] == "failed" and "No space left on device" in status["reason"]
    if at == 0:  # nothing was saved yet: the hint starts the run again
        assert not (run / "last.safetensors").exists()
        assert f"tinygpt train --out {run} --overwrite" in hint(e)
    else:  # the previous `last` is untouched, and the run goes on from it
        assert (run / "last.safetensors").read_bytes() == keep.copy
        assert f"tinygpt resume --run {run}" in hint(e) and "iteration 5" in hint(e)
    assert assert_recoverable(run, tiny_dataset, **EVERY_5) == (5 if at else -1)


# --- 3. signals during evaluation and during a save ---------------------------------------------

@pytest.mark.parametrize("where,signum,code", [
    ("evaluate", signal.SIGINT, 130),
    ("evaluate", signal.SIGTERM, 143),
    ("save", signal.SIGINT, 130),
    ("save", signal.SIGTERM, 143),
])
def test_a_signal_during_evaluation_or_a_save_stops_after_saving(tiny_dataset, tmp_path, monkeypatch, where, signum, code):
    run = tmp_path / "run"
    sent = []
    if where == "evaluate":
        real_evaluate = Trainer.evaluate

        def evaluate(self):
            if self.step == 10 and not sent:
                sent.append(True)
                os.kill(os.getpid(), signum)
            return real_evaluate(self)

        monkeypatch.setattr(Trainer, "evaluate", evaluate)
    else:
        real_save = checkpoint_module.save_file

        def save_file(tensors, filename, metadata=None):
            if Path(filename).name.startswith(".last.") and int(metadata["iteration"]) == 10 and not sent:
                sent.append(True)
                real_save(tensors, filename, metadata=metadata)
                os.kill(os.getpid(), signum)  # written, not yet renamed
                return None
            return real_save(tensors, filename, metadata=metadata)

        monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingStopped) as info:
        train_new(tiny_config(tiny_dataset, **EVERY_5, max_iters=20), run)
    monkeypatch.undo()
    assert sent
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert info.value.exit_code == code
    assert f"{signal.Signals(signum).name} received" in info.value.message and "at iteration 10" in info.value.message
    assert load_checkpoint(run / "last.safetensors").iteration == 10
    assert RunDir(run).read_status()["status"] == "stopped"
    assert not tmp_leftovers(run)
    assert resume(run).iteration == 20
    assert load_checkpoint(run / "last.safetensors").iteration == 20


@pytest.mark.parametrize("point,kept", [("before-write", 5), ("after-write", 5), ("after-rename", 10)])
def test_a_second_sigint_during_a_save_aborts_at_once_without_a_partial_file(tiny_dataset, tmp_path, monkeypatch, point, kept):
    run = tmp_path / "run"
    real_save, real_fsync_dir = checkpoint_module.save_file, fsutil_module._fsync_dir
    armed, sent = [], []

    def twice():
        sent.append(True)
        stop = signal.getsignal(signal.SIGINT).__self__  # the training's StopSignals
        os.kill(os.getpid(), signal.SIGINT)  # the first: save and stop...
        while stop.signum is None:  # (two signals before the handler runs would count as one)
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)  # ...the second: abort here and now
        for _ in range(1000):
            time.sleep(0.001)
        pytest.fail("the second SIGINT did not raise KeyboardInterrupt")

    def save_file(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".last.") and int(metadata["iteration"]) == 10 and not sent:
            if point == "before-write":
                twice()
            real_save(tensors, filename, metadata=metadata)
            if point == "after-write":
                twice()
            armed.append(point == "after-rename")
            return None
        return real_save(tensors, filename, metadata=metadata)

    def fsync_dir(folder):
        if armed and armed.pop():
            twice()
        real_fsync_dir(folder)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    monkeypatch.setattr(fsutil_module, "_fsync_dir", fsync_dir)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt):
        train_new(tiny_config(tiny_dataset, **EVERY_5, max_iters=20), run)
    monkeypatch.undo()
    assert sent
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert load_checkpoint(run / "last.safetensors").iteration == kept  # the old file or the new one
    assert not tmp_leftovers(run)  # no partial file anywhere, under any name
    assert resume(run).iteration == 20
    assert load_checkpoint(run / "last.safetensors").iteration == 20


# --- 4. readers and a second writer while training writes checkpoints ----------------------------

def test_checkpoints_always_load_while_training_writes_them_and_a_second_train_is_refused(tinygpt, tiny_dataset, tmp_path):
    run, log = tmp_path / "run", tmp_path / "log.txt"
    settings = dict(eval_interval=1, eval_iters=1, batch_size=4, max_iters=LONG)  # a save at every step
    proc = popen_cli(["train", *tiny_cli_flags(tiny_dataset, **settings), "--out", run], tmp_path, log)
    try:
        wait_for(lambda: (run / "best.safetensors").exists() and (run / "last.safetensors").exists(), proc, log)

        second = subprocess.run([sys.executable, "-m", "tinygpt_cli", "train",
                                 *tiny_cli_flags(tiny_dataset, **{**settings, "n_layer": 1}), "--out", str(run)],
                                cwd=str(tmp_path), env=cli_env(ONE_THREAD_ENV), capture_output=True, text=True, timeout=120)
        assert_one_error(second.returncode, second.stderr, 1, "is in use by another training", f"pid {proc.pid}")
        assert json.loads((run / "config.json").read_text(encoding="utf-8"))["model"]["n_layer"] == TINY_MODEL["n_layer"]

        seen: list[int] = []
        loads, deadline = 0, time.monotonic() + 120
        while loads < 30 or len(set(seen)) < 3:
            last = load_checkpoint(run / "last.safetensors")  # never a partial file: no CheckpointError
            best = load_checkpoint(run / "best.safetensors")
            assert last.optimizer is not None and best.optimizer is None
            seen.append(last.iteration)
            loads += 1
            if loads in (1, 15):  # `tinygpt generate` reads the run while it trains
                code, out, err = tinygpt("generate", "--run", run, "--prompt", "The ", "--max-new-tokens", "5", "--seed", "1")
                assert code == 0, err
                assert out.startswith("The ") and len(out) == len("The ") + 5 + 1
            assert proc.poll() is None, "training ended: the loads were not concurrent with it"
            assert time.monotonic() < deadline, f"training made no progress: {seen}"
        assert seen == sorted(seen), "the last checkpoint went back in time"
    finally:
        kill_hard(proc)  # a kill while a save happens at every step
    assert_recoverable(run, tiny_dataset, **settings)


def test_a_model_too_big_for_memory_is_one_error_line_before_any_allocation():
    import torch

    from tinygpt_cli.config import resolve_config
    from tinygpt_cli.train import build_model

    huge = resolve_config("baby", None, {"n_layer": 1000, "n_embd": 16384, "n_head": 128})
    with pytest.raises(TinyGPTError) as info:
        build_model(huge, torch.device("cpu"))
    assert "parameters needs about" in info.value.message and "--n-embd" in hint(info.value)


def test_sizes_beyond_any_sane_model_are_usage_errors():
    from tinygpt_cli.config import resolve_config

    for field, value in (("n_layer", 10**12), ("block_size", 2**40), ("batch_size", 10**9), ("eval_iters", 10**9)):
        with pytest.raises(ConfigError) as info:
            resolve_config("cpu", None, {field: value})
        assert "--" + field.replace("_", "-") in info.value.message


def test_a_full_disk_while_logging_metrics_is_one_error_line(tiny_dataset, tmp_path, monkeypatch):
    import builtins
    import errno

    from tinygpt_cli.lifecycle import train_new

    real_open = builtins.open

    def failing_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(TinyGPTError) as info:
        train_new(tiny_config(tiny_dataset), tmp_path / "run")
    assert "No space left on device" in info.value.message
    assert hint(info.value).endswith(f"tinygpt resume --run {tmp_path / 'run'}")


def test_a_stop_during_a_long_evaluation_is_acknowledged_at_once_and_cuts_it_short(tiny_dataset, tmp_path, monkeypatch):
    from tinygpt_cli.data.batches import Batches

    run, calls = tmp_path / "run", {"eval_batches_after_signal": 0, "acknowledged": 0}
    real_sample = Batches.sample

    def sample(self, n, generator):
        if generator.initial_seed() == TINY_TRAIN["seed"] + 1:  # an evaluation's own generator
            if calls["acknowledged"]:
                calls["eval_batches_after_signal"] += 1
            elif calls.setdefault("eval_batches", 0) == 50:
                os.kill(os.getpid(), signal.SIGINT)
            calls["eval_batches"] = calls.get("eval_batches", 0) + 1
        return real_sample(self, n, generator)

    class Acknowledging(TrainingReporter):
        def on_stop_requested(self, signum, evaluating):
            calls["acknowledged"] += 1
            calls["during_evaluation"] = evaluating

    monkeypatch.setattr(Batches, "sample", sample)
    with pytest.raises(TrainingStopped):
        train_new(tiny_config(tiny_dataset, eval_iters=100_000, max_iters=20, eval_interval=5), run, Acknowledging())
    assert calls["acknowledged"] == 1 and calls["during_evaluation"]  # the message can say an evaluation is cut short
    assert calls["eval_batches_after_signal"] <= 1  # not the 100,000 batches asked for
    assert load_checkpoint(run / "last.safetensors").iteration == 0
    assert RunDir(run).read_status()["status"] == "stopped"


@pytest.mark.parametrize("evaluating, says", [(False, "finishing this step"), (True, "cutting this evaluation short")])
def test_the_stop_message_says_what_is_cut_short(capfd, evaluating, says):
    from tinygpt_cli.cli.reporting import make_reporter

    make_reporter(False).on_stop_requested(signal.SIGINT, evaluating)
    said = capfd.readouterr().err
    assert says in said and ("evaluation" in said) == evaluating
