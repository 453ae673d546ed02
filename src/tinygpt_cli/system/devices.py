"""Where and in which precision to compute, and what the machine has there (memory, cache)."""

from __future__ import annotations

import ctypes
import os
from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import UsageError


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


def device_memory_bytes(device: torch.device) -> int | None:
    """All the memory of `device` (a GPU's, or the machine's for the CPU); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    if device.type == "cpu":
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


# Where the OS does not tell the CPU's last-level cache: a typical size for a recent desktop or
# server core complex.
DEFAULT_CACHE_BYTES = 32 * 2**20


def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache that Linux reports for CPU 0 (sysfs), else None."""
    sizes = []
    for folder in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (folder / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else None


DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}: choose from {', '.join(DTYPES)}")
    if name == "auto":
        if device.type == "cuda":
            return cuda_auto_dtype(device)
        return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bfloat16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def cuda_auto_dtype(device: torch.device) -> torch.dtype:
    """What `--dtype auto` trains in on a GPU: bfloat16 where the card multiplies it in hardware
    (compute capability 8.0 on: an A100, an RTX 30xx, an H100); float16 with loss scaling
    (train.py's GradScaler) on the tensor-core cards before them (7.x: a T4, a V100), which
    only emulate bfloat16, slowly; float32 on older cards, which have no tensor cores. torch's
    is_bf16_supported() counts emulation as support unless told not to."""
    with torch.cuda.device(device):
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        major, _ = torch.cuda.get_device_capability()
    return torch.float16 if major >= 7 else torch.float32


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), where
    they run about twice as fast as float32; elsewhere bfloat16 is emulated and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own, private, checks
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def autocast_for(device: torch.device, dtype: torch.dtype):
    """Mixed precision: weights stay fp32, matmuls run in `dtype`."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit systems
FREED_BYTES_KEPT = 2**30
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_cpu_memory() -> bool:
    """Let glibc's malloc keep freed memory in the process instead of handing it back to the OS.

    Eager training frees and allocates the same activation buffers at every step. By default
    glibc gives large freed blocks back to the OS (munmap, heap trimming), so the next step takes
    them again page by page (benchmarks/README.md, "Memory the loop keeps", measures the cost).
    With large blocks served from the heap and up to 1 GiB of freed memory kept, a step reuses
    the last one's pages. Memory use stays at its peak, as with PyTorch's caching allocator on a
    GPU. The setting holds for the whole process, from then on.

    Returns whether both settings applied: a C library without mallopt (macOS, Windows) is left
    alone, and one whose mallopt ignores them (musl) says no.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_set = mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX) == 1
    trim_set = mallopt(M_TRIM_THRESHOLD, FREED_BYTES_KEPT) == 1
    return mmap_set and trim_set
