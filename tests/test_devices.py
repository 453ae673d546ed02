"""Where and in which precision to compute: device and dtype names, and what auto picks."""

from __future__ import annotations

import pytest
import torch

from tinygpt_cli import devices
from tinygpt_cli.devices import autocast_for, pick_device, pick_dtype
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
