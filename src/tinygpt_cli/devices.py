"""Where and in which precision to compute."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .errors import UsageError


DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; an unavailable device is a usage error."""
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}: choose from {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here", "pass --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple's MPS backend is not available here", "pass --device cpu")
    return torch.device(name)


DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}: choose from {', '.join(DTYPES)}")
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast_for(device: torch.device, dtype: torch.dtype):
    """Mixed precision: weights stay fp32, matmuls run in `dtype`."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
