"""Data-parallel training under torchrun: two gloo processes on 127.0.0.1, on the CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_env, make_text, tiny_cli_flags
from tinygpt_cli.checkpoint import load_checkpoint
from tinygpt_cli.data.prepare import prepare_text
from tinygpt_cli.rundir import RunDir

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp") / "data"
    src = folder.parent / "corpus.txt"
    src.write_text(make_text(30_000), encoding="utf-8")
    prepare_text(src, folder, "corpus", 0.1)
    return folder


def torchrun(nproc: int, *args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "--", "tinygpt_cli", *args]  # after "--", torchrun reads none of them (--log is ambiguous to it)
    return subprocess.Popen(cmd, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def losses(run: Path) -> list[tuple]:
    return [(r["iter"], r.get("loss"), r.get("train_loss"), r.get("val_loss")) for r in RunDir(run).read_metrics()]


def test_two_processes_match_one_with_double_batch_and_grad_accum(run_cli, dataset, tmp_path):
    common = tiny_cli_flags(dataset, batch_size=None)  # float32: the equalities below are float32's
    proc = torchrun(2, "train", *common, "--batch-size", "4", "--log", "tensorboard", cwd=tmp_path)  # no --out: ranks agree on one name
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "global batch 8 sequences" in stdout
    [run] = list((tmp_path / "runs").iterdir())
    run.rename(tmp_path / "ddp2")
    one = run_cli("train", *common, "--batch-size", "8", "--out", "one", timeout=300)
    acc = run_cli("train", *common, "--batch-size", "4", "--grad-accum", "2", "--out", "accum", timeout=300)
    assert one.returncode == 0 and acc.returncode == 0, one.stderr + acc.stderr

    ref = load_checkpoint(tmp_path / "one" / "last.safetensors")
    for other in ("ddp2", "accum"):
        ckpt = load_checkpoint(tmp_path / other / "last.safetensors")
        assert ckpt.iteration == 30
        assert set(ckpt.weights) == set(ref.weights)  # same tensor names: no DDP "module." prefix
        for name, w in ref.weights.items():
            torch.testing.assert_close(ckpt.weights[name], w, rtol=1e-5, atol=1e-6)
        for a, b in zip(losses(tmp_path / other), losses(tmp_path / "one"), strict=True):
            assert a[0] == b[0]
            for x, y in zip(a[1:], b[1:]):
                assert (x is None) == (y is None)
                if x is not None:
                    assert x == pytest.approx(y, rel=1e-5)
    # Rank 0 alone writes: a second writer would have doubled every metrics record, or logged twice.
    iters = [r[0] for r in losses(tmp_path / "ddp2") if r[1] is not None]
    assert iters == sorted(set(iters))
    [events] = (tmp_path / "ddp2").glob("events.out.tfevents.*")
    events.unlink()
    assert sorted(p.name for p in (tmp_path / "ddp2").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


def test_sigterm_then_resume_on_another_world_size_then_generate(run_cli, dataset, tmp_path):
    run = tmp_path / "ddp"
    # `--nproc 2` re-executes the command under torchrun (same process id, so the signal reaches torchrun).
    proc = subprocess.Popen([sys.executable, "-m", "tinygpt_cli", "train", "--nproc", "2",
                             *tiny_cli_flags(dataset, max_iters=5000, eval_interval=25, batch_size=4), "--out", str(run)],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "last.safetensors").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    stdout, stderr = proc.communicate(timeout=120)
    assert "launching 2 processes" in stdout
    assert stderr.count("SIGTERM received: saved") == 1  # rank 0 alone reports
    assert f"Try: tinygpt resume --run {run}" in stderr
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "stopped"
    stopped_at = load_checkpoint(run / "last.safetensors").iteration
    assert 0 < stopped_at < 5000

    finish = stopped_at + 20
    resumed = run_cli("resume", "--run", str(run), "--max-iters", str(finish), timeout=300)  # one process now
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "last.safetensors").iteration == finish
    assert json.loads((run / "run.json").read_text())["status"] == "finished"

    sample = run_cli("generate", "--run", str(run), "--prompt", "The", "--max-new-tokens", "40", "--seed", "1", timeout=300)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("The") and len(sample.stdout.rstrip("\n")) == 43
