"""Training: exact resume after a signal (in process and in a real process), checkpoints that
hold no pickle and detect damage, non-finite losses, the run lock and the folder rules."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD_ENV, SWITCHES, TINY_MODEL, TINY_TRAIN, as_format_1, assert_same_tensors, cli_env, hint, rewrite_checkpoint, signal_at_step, switch_id, tiny_cli_flags, tiny_config, wait_for
from safetensors import safe_open
from safetensors.torch import load_file

from tinygpt_cli.checkpoint import load_checkpoint, load_model, read_metadata, tensor_digest
from tinygpt_cli.config import RunConfig
from tinygpt_cli.data.prepare import prepare_text
from tinygpt_cli.errors import CheckpointError, TinyGPTError, TrainingStopped, UsageError
from tinygpt_cli.rundir import RunDir
from tinygpt_cli.lifecycle import TrainingReporter, prepare_training, resume, train_new
from tinygpt_cli.train import Trainer

pytestmark = pytest.mark.usefixtures("torch_one_thread")

METRIC_KEYS = ("iter", "loss", "train_loss", "val_loss", "lr", "final_val_loss")


def metrics_view(run: Path) -> list[dict]:
    """The metric records without wall-clock fields (elapsed, throughput)."""
    return [{k: r[k] for k in METRIC_KEYS if k in r} for r in RunDir(run).read_metrics()]


# --- exact resume ----------------------------------------------------------------------

# tiny_config starts from the cpu preset, which steps the blocks' matrices with Muon.
@pytest.mark.parametrize("where, dtype, optimizer", [("at-eval-20", "float32", "muon"), ("mid-interval-15", "float32", "muon"),
                                                     ("mid-interval-15", "bfloat16", "muon"),  # bfloat16: auto on some CPUs
                                                     ("mid-interval-15", "float32", "adamw")])
def test_stopped_then_resumed_run_is_bit_identical(tiny_dataset, tmp_path, monkeypatch, where, dtype, optimizer):
    config = tiny_config(tiny_dataset, max_iters=40, eval_interval=10, dropout=0.1, dtype=dtype, optimizer=optimizer)
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_new(config, whole)

    if where == "at-eval-20":  # SIGINT from the reporter, right after step 20 (an eval step)
        at, signum, code, reporter = 20, signal.SIGINT, 130, signal_at_step(20, signal.SIGINT)
    else:  # SIGTERM while step 15 runs: no eval there, so the stop itself must save
        at, signum, code, reporter = 15, signal.SIGTERM, 143, None
        original = Trainer.train_step

        def signalling_step(self):
            if self.step == at - 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self)

        monkeypatch.setattr(Trainer, "train_step", signalling_step)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingStopped) as info:
        train_new(config, part, reporter)
    monkeypatch.undo()
    # The signal handlers are put back after training.
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert info.value.exit_code == code
    assert f"{signal.Signals(signum).name} received" in info.value.message
    assert f"at iteration {at}" in info.value.message
    assert hint(info.value) == f"tinygpt resume --run {part}"
    status = RunDir(part).read_status()
    assert status["status"] == "stopped" and status["iteration"] == at
    assert read_metadata(part / "last.safetensors")["iteration"] == at
    assert max(r["iter"] for r in RunDir(part).read_metrics()) <= at

    result = resume(part)
    assert result.iteration == 40
    assert RunDir(part).read_status()["status"] == "finished"
    assert_same_tensors(whole / "last.safetensors", part / "last.safetensors")
    assert_same_tensors(whole / "best.safetensors", part / "best.safetensors")
    assert metrics_view(whole) == metrics_view(part)
    assert len(metrics_view(whole)) == 4 + 5 + 1  # step records at 10..40, evals at 0..40, the final evaluation


def _start_training(data_dir: Path, run: Path, cwd: Path, **overrides) -> subprocess.Popen:
    args = tiny_cli_flags(data_dir, **overrides)
    return subprocess.Popen([sys.executable, "-m", "tinygpt_cli", "train", *args, "--out", str(run)], cwd=str(cwd),
                            env=cli_env(ONE_THREAD_ENV), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8")


def _interrupt(proc: subprocess.Popen, signum: int) -> tuple[str, str]:
    try:
        proc.send_signal(signum)
        return proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _has_step_record(run: Path) -> bool:
    return (run / "last.safetensors").exists() and any("loss" in r for r in RunDir(run).read_metrics())


@pytest.mark.slow
def test_sigint_to_a_real_training_process_then_resume_matches_uninterrupted(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    settings = dict(max_iters=300, eval_interval=50, dropout=0.1)
    proc = _start_training(tiny_dataset, run, tmp_path, **settings)
    wait_for(lambda: _has_step_record(run), proc)  # at least 10 steps done, `last` saved
    _, err = _interrupt(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "Stopped:" in err and "SIGINT received" in err
    assert f"Try: tinygpt resume --run {run}" in err
    stopped_at = read_metadata(run / "last.safetensors")["iteration"]
    assert 10 <= stopped_at < 300, stopped_at
    assert RunDir(run).read_status()["status"] == "stopped"

    assert resume(run).iteration == 300
    # The same settings, uninterrupted, in another folder.
    config = RunConfig(**json.loads((run / "config.json").read_text(encoding="utf-8")))
    assert config == prepare_training(tiny_config(tiny_dataset, **settings))[0]
    train_new(config, tmp_path / "whole")
    assert_same_tensors(tmp_path / "whole" / "last.safetensors", run / "last.safetensors")
    assert metrics_view(tmp_path / "whole") == metrics_view(run)


@pytest.mark.slow
def test_sigterm_to_a_real_training_process_exits_143(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    proc = _start_training(tiny_dataset, run, tmp_path, max_iters=300, eval_interval=50)
    wait_for(lambda: (run / "last.safetensors").exists(), proc)
    _, err = _interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "Stopped:" in err and "SIGTERM received" in err and "Try: tinygpt resume" in err
    status = RunDir(run).read_status()
    assert status["status"] == "stopped"
    assert read_metadata(run / "last.safetensors")["iteration"] == status["iteration"]
    load_checkpoint(run / "last.safetensors")  # intact


# --- checkpoint files --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["last", "best"])
def test_checkpoint_is_plain_safetensors_without_pickle(tiny_run, kind):
    path = tiny_run / f"{kind}.safetensors"
    raw = path.read_bytes()
    # pickle's PROTO opcode (0x80, then protocol 2 to 5); safetensors starts with the header's
    # length, whose low byte may happen to be 0x80
    assert not (raw[0] == 0x80 and raw[1] in (2, 3, 4, 5)), "pickle protocol opcode at the start"
    assert b"\x80\x04\x95" not in raw[:16]
    assert not zipfile.is_zipfile(path), "torch.save's zip container"
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert 8 + header_len <= len(raw)
    header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    meta = header.pop("__metadata__")
    for key in ("format", "model_config_json", "vocab", "iteration", "digest"):
        assert key in meta
    assert all(isinstance(v, str) for v in meta.values())  # safetensors metadata: str -> str
    assert json.loads(meta["format"]) == "tinygpt-checkpoint"
    assert json.loads(meta["iteration"]) == 30
    assert json.loads(meta["model_config_json"])["n_embd"] == 32
    # The tensor entries cover the data area exactly.
    ends = [entry["data_offsets"][1] for entry in header.values()]
    assert 8 + header_len + max(ends) == len(raw)

    # safetensors alone reads it.
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        assert f.metadata() == meta
    assert json.loads(meta["digest"]) == tensor_digest(tensors)
    assert "model.tok_emb.weight" in tensors and "model.lm_head.weight" not in tensors  # tied: stored once
    has_state = any(k.startswith("optim.") for k in tensors) and "rng.torch" in tensors
    assert has_state == (kind == "last")


def test_checkpoint_alone_builds_the_model(tiny_run, tmp_path):
    lone = tmp_path / "elsewhere" / "model.safetensors"
    lone.parent.mkdir()
    shutil.copy(tiny_run / "best.safetensors", lone)
    model, ckpt = load_model(lone)
    assert not model.training
    saved = json.loads((tiny_run / "config.json").read_text(encoding="utf-8"))
    assert model.config.model_dump() == saved["model"]
    assert ckpt.tokenizer.size == model.config.vocab_size
    raw = load_file(str(lone))
    for name, value in model.state_dict().items():
        stored = raw["model." + ("tok_emb.weight" if name == "lm_head.weight" else name)]
        assert torch.equal(value, stored), name
    with torch.no_grad():
        logits, _ = model(torch.tensor([ckpt.tokenizer.encode("The king")]))
    assert logits.shape == (1, 1, ckpt.tokenizer.size) and torch.isfinite(logits).all()


def _damaged_variants(raw: bytes) -> dict[str, bytes]:
    (header_len,) = struct.unpack("<Q", raw[:8])
    data_start = 8 + header_len
    mid = len(raw) // 2
    assert data_start < mid, "the middle of the file lies in the tensor data"
    flipped = bytearray(raw)
    for i in range(mid, mid + 16):
        flipped[i] ^= 0xFF
    one_bit = bytearray(raw)
    one_bit[len(raw) - 3] ^= 0x01
    header = raw[8:data_start].decode("utf-8")
    digest = json.loads(json.loads(header)["__metadata__"]["digest"])
    other = digest[:10] + ("0" if digest[10] != "0" else "1") + digest[11:]
    forged = raw[:8] + header.replace(digest, other).encode("utf-8") + raw[data_start:]
    return {
        "empty": b"",
        "truncated-4": raw[:4],
        "truncated-8": raw[:8],
        "truncated-in-header": raw[: data_start // 2],
        "truncated-half": raw[:mid],
        "truncated-last-byte": raw[:-1],
        "bytes-flipped-mid": bytes(flipped),
        "one-bit-near-end": bytes(one_bit),
        "zero-filled": bytes(len(raw)),
        "data-zero-filled": raw[:data_start] + bytes(len(raw) - data_start),
        "digest-changed": forged,
        "appended-garbage": raw + b"\x00" * 64,
    }


def test_damaged_checkpoints_are_refused(tiny_run, tmp_path):
    raw = (tiny_run / "last.safetensors").read_bytes()
    for name, data in _damaged_variants(raw).items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(path) in info.value.message, name
        with pytest.raises(CheckpointError):
            load_model(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


class _Payload:
    """Creates a marker file when unpickled: proof that a loader executed pickle data."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("maker", ["pickle-v4", "pickle-v2", "torch.save"])
def test_pickle_renamed_to_safetensors_is_refused_and_never_run(tmp_path, maker):
    def write(path: Path, marker: Path) -> None:
        payload = {"model.tok_emb.weight": _Payload(marker)}
        if maker == "torch.save":
            torch.save(payload, path)
        else:
            path.write_bytes(pickle.dumps(payload, protocol=4 if maker == "pickle-v4" else 2))

    # Control: the payload really runs when something unpickles it.
    control_marker = tmp_path / "control-marker"
    write(tmp_path / "control.bin", control_marker)
    if maker == "torch.save":
        torch.load(tmp_path / "control.bin", weights_only=False)
    else:
        pickle.loads((tmp_path / "control.bin").read_bytes())
    assert control_marker.exists()

    marker = tmp_path / "executed-marker"
    path = tmp_path / "model.safetensors"
    write(path, marker)
    for loader in (load_checkpoint, load_model, read_metadata):
        with pytest.raises(CheckpointError):
            loader(path)
    assert not marker.exists(), "pickle data was executed"


# --- failures during training ------------------------------------------------------------

def test_stop_at_val_loss_ends_the_run_at_the_first_evaluation_that_reaches_it(tiny_run, tiny_dataset, tmp_path):
    evals = [r for r in RunDir(tiny_run).read_metrics() if "val_loss" in r]  # iterations 0, 10, 20, 30
    target = evals[2]["val_loss"]
    assert min(r["val_loss"] for r in evals[:2]) > target  # not reached before iteration 20
    result = train_new(tiny_config(tiny_dataset, stop_at_val_loss=target), tmp_path / "run")
    assert (result.iteration, result.best_val_loss) == (20, target)
    status = RunDir(tmp_path / "run").read_status()
    assert (status["status"], status["iteration"]) == ("finished", 20)
    assert load_checkpoint(tmp_path / "run" / "best.safetensors").iteration == 20


def test_non_finite_loss_fails_without_saving(tiny_dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    saved_at_10: dict[str, bytes] = {}

    class KeepLast(TrainingReporter):
        def on_eval(self, record):
            if record["iter"] == 10:
                saved_at_10["last"] = (run / "last.safetensors").read_bytes()

    original = Trainer.train_step

    def nan_at_15(self):
        loss = original(self)
        return torch.tensor(float("nan")) if self.step == 14 else loss

    monkeypatch.setattr(Trainer, "train_step", nan_at_15)
    with pytest.raises(TinyGPTError) as info:
        train_new(tiny_config(tiny_dataset, max_iters=40, eval_interval=10), run, KeepLast())
    assert not isinstance(info.value, (UsageError, TrainingStopped))
    assert info.value.exit_code == 1
    assert "nan" in info.value.message and "iteration 15" in info.value.message
    assert "(iteration 10)" in info.value.message  # names the last good checkpoint
    assert hint(info.value).startswith(f"tinygpt resume --run {run}")
    status = RunDir(run).read_status()
    assert status["status"] == "failed" and status["iteration"] == 15
    assert "nan" in status["reason"]
    assert (run / "last.safetensors").read_bytes() == saved_at_10["last"]
    assert read_metadata(run / "last.safetensors")["iteration"] == 10
    assert max(r["iter"] for r in RunDir(run).read_metrics()) == 10


def test_a_locked_run_folder_is_refused(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tiny_dataset, max_iters=5)
    with RunDir(run).locked():
        with pytest.raises(TinyGPTError, match="in use") as info:
            train_new(config, run)
        assert f"pid {os.getpid()}" in info.value.message
        with pytest.raises(TinyGPTError, match="in use"):
            resume(run)
    assert not (run / "config.json").exists() and not RunDir(run).has_checkpoint()
    # Released: the same folder trains now.
    assert train_new(config, run).iteration == 5


def test_a_finished_run_needs_overwrite(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tiny_dataset, max_iters=10, eval_interval=5)
    train_new(config, run)
    before = (run / "last.safetensors").read_bytes()
    with pytest.raises(UsageError, match="already holds a run") as info:
        train_new(config, run)
    assert hint(info.value).startswith(f"tinygpt resume --run {run}") and "--overwrite" in hint(info.value)
    assert (run / "last.safetensors").read_bytes() == before
    (run / "loss.png").write_bytes(b"the old run's plot")
    train_new(tiny_config(tiny_dataset, max_iters=5, eval_interval=5), run, overwrite=True)
    assert not (run / "loss.png").exists()
    records = RunDir(run).read_metrics()
    assert [r["iter"] for r in records if "val_loss" in r] == [0, 5]  # a fresh log
    assert read_metadata(run / "last.safetensors")["iteration"] == 5


@pytest.mark.parametrize("folder", ["nowhere", "shakespeare"])
def test_missing_dataset_names_the_prepare_command(tmp_path, folder):
    with pytest.raises(TinyGPTError, match="no prepared dataset") as info:
        train_new(tiny_config(tmp_path / folder), tmp_path / "run")
    assert "tinygpt prepare" in hint(info.value)
    if folder == "shakespeare":
        assert hint(info.value) == "tinygpt prepare shakespeare"
    assert not (tmp_path / "run" / "config.json").exists()


def test_block_size_too_large_for_the_data(tiny_dataset, tmp_path):
    with pytest.raises(UsageError, match="--block-size"):
        train_new(tiny_config(tiny_dataset, block_size=4096), tmp_path / "run")


class StartRecorder(TrainingReporter):
    def on_start(self, info):
        self.info = info


def test_resume_in_another_precision_says_so(tiny_run, tmp_path, run_cli):
    """tiny_run trained in float32; resumed in bfloat16 (what --dtype auto does on a machine
    with hardware bfloat16) it goes on, and the start says the result is no longer bit-exact."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    same = StartRecorder()
    resume(run, {"max_iters": 32}, same)
    assert same.info.previous_dtype is None  # the same precision: nothing to say
    changed = StartRecorder()
    resume(run, {"max_iters": 34, "dtype": "bfloat16"}, changed)
    assert (changed.info.dtype, changed.info.previous_dtype) == ("bfloat16", "float32")
    proc = run_cli("resume", "--run", run, "--max-iters", "36", "--dtype", "float32", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "note: iterations up to 34 ran in bfloat16, the rest run in float32" in proc.stdout


def test_best_saved_after_last_stays_the_best_recorded(tiny_dataset, tmp_path, monkeypatch, run_cli):
    """A hard stop between an evaluation's two saves leaves `best` ahead of `last`. The resumed
    run repeats that evaluation, but with other settings not always to the same loss: however it
    goes, `best` stays the checkpoint of the best loss the run records, and the start says so."""
    run = tmp_path / "run"
    train_new(tiny_config(tiny_dataset, eval_interval=1, eval_iters=1, max_iters=4), run)
    stale_last = (run / "last.safetensors").read_bytes()
    resume(run, {"max_iters": 8})
    ahead = load_checkpoint(run / "best.safetensors")
    assert ahead.iteration > 4, "no improvement after iteration 4: the setup needs another seed"
    (run / "last.safetensors").write_bytes(stale_last)  # as if killed before `last` followed `best`
    recorded_best = load_checkpoint(run / "last.safetensors").best_val_loss
    assert recorded_best > ahead.val_loss
    crashed, damaged = tmp_path / "crashed", tmp_path / "damaged"
    shutil.copytree(run, crashed)
    shutil.copytree(run, damaged)

    # The repeated evaluations come out worse (as a changed schedule can make them).
    best_in_status = []

    def worse_evaluation(trainer):
        best_in_status.append(RunDir(run).read_status().get("best_val_loss"))
        return {"train": 9.0, "val": 9.0}

    monkeypatch.setattr(Trainer, "evaluate", worse_evaluation)
    start = StartRecorder()
    resume(run, {"max_iters": 12}, start)
    assert start.info.best_saved_after_last == ahead.iteration
    assert best_in_status[0] == ahead.val_loss  # from the start on (`tinygpt runs` reads it)
    final = load_checkpoint(run / "last.safetensors")
    assert final.iteration == 12 and final.best_val_loss == ahead.val_loss
    assert_same_tensors(run / "best.safetensors", crashed / "best.safetensors")
    assert load_checkpoint(run / "best.safetensors").iteration == ahead.iteration
    assert RunDir(run).read_status()["best_val_loss"] == ahead.val_loss

    # A damaged `best` (its header intact) is not kept: the loss `last` records stays the best.
    with open(damaged / "best.safetensors", "r+b") as f:
        f.truncate(f.seek(0, os.SEEK_END) - 100)
    start = StartRecorder()
    resume(damaged, {"max_iters": 6}, start)
    assert start.info.best_saved_after_last is None
    assert load_checkpoint(damaged / "last.safetensors").best_val_loss == recorded_best
    monkeypatch.undo()

    proc = run_cli("resume", "--run", crashed, "--max-iters", "10", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    assert f"note: best.safetensors (iteration {ahead.iteration}) was saved after last.safetensors" in proc.stdout
    assert load_checkpoint(crashed / "last.safetensors").best_val_loss == load_checkpoint(crashed / "best.safetensors").val_loss


@pytest.mark.parametrize("shape", [{"n_layer": 3}, {"n_embd": 64}, {"block_size": 8}, {"bias": True}])
def test_resume_refuses_shape_changes(tiny_run, tmp_path, shape):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(UsageError, match="cannot change the model's shape") as info:
        resume(run, shape)
    assert "--" + next(iter(shape)).replace("_", "-") in info.value.message
    assert (run / "last.safetensors").read_bytes() == (tiny_run / "last.safetensors").read_bytes()


def test_resume_refusals(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(UsageError, match="below the 30 iterations"):
        resume(run, {"max_iters": 20})
    with pytest.raises(UsageError, match="no run folder"):
        resume(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinyGPTError, match="not a run folder"):
        resume(tmp_path / "empty")
    (run / "last.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        resume(run)


def test_the_end_of_training_suggests_a_prompt_from_the_runs_own_text(tmp_path, run_cli):
    """Its first line, white space made single spaces (a tab typed in a shell is no tab), and the
    best checkpoint's loss over the whole validation split, told apart from the estimates."""
    code = tmp_path / "code.py"
    code.write_text("\n\n\timport  os\t\n\n" + "".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(400)))
    data = tmp_path / "code"
    prepare_text(code, data, "code", 0.1)
    proc = run_cli("train", *tiny_cli_flags(data, max_iters=10, eval_interval=10), "--out", tmp_path / "run", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    assert f"next: tinygpt generate --run {tmp_path / 'run'} --prompt 'import os'" in proc.stdout
    assert "ROMEO" not in proc.stdout
    tokens = TINY_TRAIN["eval_iters"] * TINY_TRAIN["batch_size"] * TINY_MODEL["block_size"]
    final = load_checkpoint(tmp_path / "run" / "best.safetensors").progress["final_eval"]
    assert (f"best.safetensors (iteration 10): val loss {final['val_loss']:.4f} ({final['val_bits_per_byte']:.3f} bits/byte) over the "
            f"whole validation split, {final['tokens']:,} tokens (the estimates above drew {tokens:,})") in " ".join(proc.stdout.split())


def test_a_finished_run_ends_with_the_loss_eval_gives_and_runs_plot_and_the_card_show_it(tiny_run, tmp_path, tinygpt):
    """Training's own evaluations are estimates from sampled windows; the figure a finished run
    keeps (run.json, `runs`, the plot's star, the model card) is `tinygpt eval`'s, of `best`."""
    from tinygpt_cli.runs.plots import final_point

    final = json.loads((tiny_run / "run.json").read_text())["final_eval"]
    code, stdout, _ = tinygpt("eval", "--run", tiny_run, "--json")
    scored = json.loads(stdout)["val"]
    assert code == 0 and final["whole_split"] and final["tokens"] == scored["tokens"]
    assert final["val_loss"] == pytest.approx(scored["loss"], rel=1e-6) and final["iteration"] == load_checkpoint(tiny_run / "best.safetensors").iteration
    assert final["val_loss"] != load_checkpoint(tiny_run / "best.safetensors").val_loss  # not the estimate again
    code, stdout, _ = tinygpt("runs", "--runs-dir", tiny_run.parent, "--json")
    (listed,) = json.loads(stdout)
    assert (listed["final_val_loss"], listed["final_val_bits_per_byte"]) == (final["val_loss"], final["val_bits_per_byte"])
    code, stdout, _ = tinygpt("runs", "--runs-dir", tiny_run.parent)
    assert f"{final['val_loss']:.4f}" in stdout and "~" not in stdout
    assert final_point(RunDir(tiny_run).read_metrics()) == (final["iteration"], final["val_loss"])
    code, _, stderr = tinygpt("export", tmp_path / "hf", "--run", tiny_run, "--to", "hf")
    assert code == 0, stderr
    assert f"val loss {final['val_loss']:.4f}, {final['val_bits_per_byte']:.4f} bits per byte (over every token" in (tmp_path / "hf" / "README.md").read_text()


def test_a_resumed_run_drops_the_final_evaluation_it_no_longer_has(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(TrainingStopped):
        resume(run, {"max_iters": 50}, reporter=signal_at_step(40, signal.SIGINT))
    assert "final_eval" not in json.loads((run / "run.json").read_text())
    assert not any("final_val_loss" in r for r in RunDir(run).read_metrics())


def test_train_and_resume_json_print_one_summary_on_stdout(tiny_dataset, tmp_path, run_cli):
    run = tmp_path / "run"
    first = run_cli("train", *tiny_cli_flags(tiny_dataset, max_iters=10, eval_interval=5), "--out", run, "--json", env=ONE_THREAD_ENV)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)  # nothing else on stdout
    assert summary["status"] == "finished" and summary["iterations"] == 10 and summary["run"] == str(run)
    assert summary["best_val_loss"] == load_checkpoint(run / "best.safetensors").val_loss
    again = run_cli("resume", "--run", run, "--max-iters", "15", "--json", env=ONE_THREAD_ENV)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["iterations"] == 15


@pytest.mark.parametrize("switches", [*SWITCHES, "format-1"], ids=lambda s: s if isinstance(s, str) else switch_id(s))
def test_every_switch_resumes_bit_for_bit(tiny_dataset, tmp_path, switches):
    """A constant rate after warmup: a run trained to 10, then resumed to 20, is the run trained to
    20; also from a checkpoint written in format 1, before the metadata digest."""
    settings = dict(eval_interval=5, dropout=0.1, lr_decay="constant", dtype="float32", **(switches if isinstance(switches, dict) else {}))
    train_new(tiny_config(tiny_dataset, max_iters=20, **settings), tmp_path / "whole")
    train_new(tiny_config(tiny_dataset, max_iters=10, **settings), tmp_path / "part")
    if switches == "format-1":
        rewrite_checkpoint(tmp_path / "part" / "last.safetensors", change_meta=as_format_1, recompute=False)
    assert resume(tmp_path / "part", {"max_iters": 20}).iteration == 20
    whole, part = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("whole", "part"))
    assert sorted(whole) == sorted(part) and all(torch.equal(whole[k], part[k]) for k in whole)
