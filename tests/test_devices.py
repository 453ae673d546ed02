"""Where and in which precision to compute: device and dtype names, and what auto picks."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys

import pytest
import torch

from tinygpt_cli.system import devices
from tinygpt_cli.system.devices import autocast_for, pick_device, pick_dtype
from tinygpt_cli.errors import UsageError


@pytest.mark.parametrize("fast", [True, False])
def test_auto_dtype_on_a_cpu_is_bfloat16_only_where_the_cpu_multiplies_it_in_hardware(monkeypatch, fast):
    monkeypatch.setattr(devices, "cpu_has_fast_bfloat16", lambda: fast)
    expected = torch.bfloat16 if fast else torch.float32
    assert pick_dtype("auto", torch.device("cpu")) == expected
    assert pick_dtype("float32", torch.device("cpu")) == torch.float32  # a name is always obeyed


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_cpu_probe_asks_torch_for_hardware_bfloat16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert devices.cpu_has_fast_bfloat16() is expected


def test_cpu_probe_without_torchs_private_checks_says_no(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert devices.cpu_has_fast_bfloat16() is False


@pytest.mark.parametrize("capability, expected", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float16),
                                                   ((7, 0), torch.float16), ((6, 1), torch.float32)])
def test_auto_dtype_on_a_gpu_follows_what_the_card_multiplies_in_hardware(monkeypatch, capability, expected):
    """A T4 (7.5, Colab's free GPU) emulates bfloat16, and torch.cuda.is_bf16_supported() says yes
    to it unless asked not to: auto trains there in float16, with loss scaling. A Pascal card (6.x)
    has no tensor cores: float32."""
    def is_bf16_supported(including_emulation=True):
        return capability >= (8, 0) or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    assert pick_dtype("auto", torch.device("cuda")) == expected
    assert pick_dtype("float16", torch.device("cuda")) == torch.float16  # a name is always obeyed


def test_unknown_names_are_usage_errors():
    with pytest.raises(UsageError, match="float64"):
        pick_dtype("float64", torch.device("cpu"))
    with pytest.raises(UsageError, match="tpu"):
        pick_device("tpu")


def test_autocast_only_for_lower_precision():
    with autocast_for(torch.device("cpu"), torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_for(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


CHURN_PAGE_FAULTS = """
import resource, torch
from tinygpt_cli.system.devices import keep_freed_cpu_memory

def faults_per_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # a training step's pattern: the same large buffers, taken and freed
        held = [torch.ones(n) for n in (250_000, 2_000_000, 750_000, 1_500_000)]  # 1 to 8 MB, 18 in all
        del held
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

default = faults_per_step()
applied = keep_freed_cpu_memory()
print(default, applied, faults_per_step())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's settings are glibc's")
def test_freed_cpu_memory_is_reused_instead_of_faulted_in_again():
    """Measured in a fresh process, whose malloc has glibc's defaults: no other allocator
    preloaded, no malloc settings from the environment."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", CHURN_PAGE_FAULTS], capture_output=True, text=True, check=True, env=env).stdout
    default, applied, kept = out.split()
    assert applied == "True"
    assert float(default) > 100  # the 18 MB taken again page by page
    assert float(kept) < float(default) / 10


def test_init_process_keeps_freed_memory_and_a_trainer_alone_does_not(monkeypatch, tmp_path):
    """malloc's setting holds for the whole process: the entry points ask for it (init_process),
    a library's Trainer leaves it alone."""
    from tinygpt_cli.system import process
    from tinygpt_cli.runs.bench import synthetic_dataset
    from tinygpt_cli.config import resolve_config
    from tinygpt_cli.train import Trainer

    calls = []
    monkeypatch.setattr(process, "keep_freed_cpu_memory", lambda: calls.append(True))
    config = resolve_config(None, None, {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8, "vocab_size": 8, "device": "cpu"})
    Trainer(config, synthetic_dataset(8))
    assert calls == []
    process.init_process()
    assert calls == [True]