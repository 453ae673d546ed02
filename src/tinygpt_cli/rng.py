"""Every random number generator a run draws from, captured and restored as one: the exact
resume of a run depends on all of them (torch's for dropout, the data order's own generator,
CUDA's, Python's and numpy's)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed torch's, Python's and numpy's generators (the data order has its own, seeded apart)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def capture_rng(data_gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """The states, as a checkpoint stores them: tensors for torch's, JSON for Python's and numpy's."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "data": data_gen.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def _generator_state_problem(state: torch.Tensor) -> str | None:
    """Why a saved CPU generator state cannot be set (size, or content torch refuses), tried on a
    throwaway generator; None if it can."""
    try:
        torch.Generator().set_state(state)
    except (RuntimeError, TypeError) as e:
        return str(e).splitlines()[0] if str(e) else "refused by torch"
    return None


def rng_problems(rng: dict[str, Any]) -> list[str]:
    """What keeps the saved CPU states from being set (checked before anything is changed)."""
    return [f"rng.{k}: {why}" for k in ("torch", "data") if (why := _generator_state_problem(rng[k]))]


def restore_rng(rng: dict[str, Any], data_gen: torch.Generator, device: torch.device) -> None:
    """Set every generator to `rng` (from capture_rng, checked by rng_problems). A machine with
    fewer GPUs than the one that saved restores those it has."""
    torch.set_rng_state(rng["torch"])
    data_gen.set_state(rng["data"])
    if device.type == "cuda":
        for i, state in enumerate(rng["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, i)
    version, words, gauss = rng["python"]
    random.setstate((version, tuple(words), gauss))
    np.random.set_state(tuple(rng["numpy"]))
