"""The CUDA path, proven on a real card: `pytest -m gpu` (benchmarks/gpu_check.py runs it).

Every test runs on the device TINYGPT_TEST_DEVICE names (cuda unless set) and skips, with a
reason, where there is no such device. The GPU check's dry run sets it to cpu, so that the same
tests run in CI and cannot rot while no GPU is around.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ONE_THREAD_ENV, cli_env, signal_at_step, tiny_cli_flags, tiny_config
from tinygpt_cli.checkpoint import load_model
from tinygpt_cli.data.dataset import load_dataset
from tinygpt_cli.errors import TrainingStopped
from tinygpt_cli.lifecycle import resume, train_new
from tinygpt_cli.rundir import RunDir
from tinygpt_cli.sampling import generate
from tinygpt_cli.train import Trainer

DEVICE = os.environ.get("TINYGPT_TEST_DEVICE", "cuda")
# Kernels differ between devices and, on a GPU, between runs (atomics, TF32 matmuls): results
# that are bit-exact on a CPU agree to this relative tolerance there.
GPU_RTOL = 1e-3 if DEVICE == "cuda" else 0.0

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="no CUDA GPU here (TINYGPT_TEST_DEVICE=cpu runs these tests on the CPU)"),
    pytest.mark.usefixtures("torch_one_thread"),
]


def val_losses(run) -> list[tuple[int, float]]:
    return [(r["iter"], r["val_loss"]) for r in RunDir(run).read_metrics() if "val_loss" in r]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])  # float16: what auto picks on a T4
def test_a_reduced_precision_step_is_finite_and_close_to_float32(tiny_dataset, dtype):
    losses = {}
    for name in ("float32", dtype):
        trainer = Trainer(tiny_config(tiny_dataset, device=DEVICE, dtype=name), load_dataset(tiny_dataset))
        losses[name] = [trainer.train_step().item() for _ in range(5)]
    assert all(math.isfinite(loss) for loss in losses[dtype])
    assert losses[dtype] == pytest.approx(losses["float32"], rel=0.02)


def test_compile_trains(tiny_dataset, tmp_path):
    result = train_new(tiny_config(tiny_dataset, device=DEVICE, compile=True, max_iters=20), tmp_path / "run")
    evals = val_losses(tmp_path / "run")
    assert result.iteration == 20 and all(math.isfinite(v) for _, v in evals)
    assert evals[-1][1] < evals[0][1]


def test_the_kv_cache_equals_recomputation_greedy(tiny_run):
    model, ckpt = load_model(tiny_run / "best.safetensors", DEVICE)
    prompt = ckpt.tokenizer.encode("The ")
    cached = list(generate(model, prompt, 40, temperature=0, kv_cache=True))
    recomputed = list(generate(model, prompt, 40, temperature=0, kv_cache=False))
    assert cached == recomputed


def test_a_checkpoint_saved_on_the_device_loads_and_samples_on_a_cpu(tiny_dataset, tmp_path):
    train_new(tiny_config(tiny_dataset, device=DEVICE, max_iters=10), tmp_path / "run")
    on_device, ckpt = load_model(tmp_path / "run" / "best.safetensors", DEVICE)
    on_cpu, _ = load_model(tmp_path / "run" / "best.safetensors", "cpu")
    assert next(on_cpu.parameters()).device.type == "cpu"
    idx = torch.tensor([ckpt.tokenizer.encode("The king")])
    with torch.no_grad():
        expected, _ = on_device(idx.to(DEVICE))
        logits, _ = on_cpu(idx)
    torch.testing.assert_close(logits, expected.cpu(), rtol=1e-2, atol=1e-2)
    text = ckpt.tokenizer.decode(list(generate(on_cpu, ckpt.tokenizer.encode("The "), 30, seed=1)))
    assert len(text) == 30


@pytest.mark.parametrize("dtype", ["auto", "float16"])  # float16: its loss scale comes back too
def test_a_stopped_run_resumes_on_the_device_from_the_same_step(tiny_dataset, tmp_path, dtype):
    config = tiny_config(tiny_dataset, device=DEVICE, max_iters=40, eval_interval=10, dtype=dtype)
    train_new(config, tmp_path / "whole")
    with pytest.raises(TrainingStopped):
        train_new(config, tmp_path / "part", signal_at_step(20, signal.SIGINT))
    assert RunDir(tmp_path / "part").read_status()["iteration"] == 20
    assert resume(tmp_path / "part").iteration == 40
    whole, part = val_losses(tmp_path / "whole"), val_losses(tmp_path / "part")
    assert [i for i, _ in part] == [i for i, _ in whole] == [0, 10, 20, 30, 40]
    assert [v for _, v in part] == pytest.approx([v for _, v in whole], rel=GPU_RTOL)


def test_torchrun_with_one_process_trains_through_a_process_group(tiny_dataset, tmp_path):
    backend = "nccl" if DEVICE == "cuda" else "gloo"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "--", "tinygpt_cli",
               "train", *tiny_cli_flags(tiny_dataset, device=DEVICE, max_iters=20), "--out", str(tmp_path / "run")]
    proc = subprocess.run(command, env=cli_env(ONE_THREAD_ENV), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"data parallel ({backend}): 1 process," in proc.stdout
    assert RunDir(tmp_path / "run").read_status()["status"] == "finished"
