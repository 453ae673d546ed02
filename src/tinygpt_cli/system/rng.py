"""The random numbers a training draws, kept as the training's own.

Dropout and the weights' first values come from torch's default generators (the CPU's, and the
GPU's on CUDA), which every other piece of code in the process shares. A training therefore
holds its own state of them and sets it only while it draws (`TrainingRNG.drawing`): a caller's
draws in between (a sample, their own code) never shift the training's, nor the training's
theirs. The data order has a generator of its own. A checkpoint captures both and a resume sets
both back, which an exact resume depends on.

Checkpoints written before this kept Python's and numpy's global generators as well; tinygpt
draws from neither, so they are read and left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class TrainingRNG:
    def __init__(self, seed: int, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []  # fork_rng saves and restores these
        self.data = torch.Generator().manual_seed(seed)  # the order of the batches
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self._own = self._default_states()

    def _default_states(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(d) for d in self.devices]}

    @contextmanager
    def drawing(self) -> Iterator[None]:
        """torch's default generators hold the training's state inside, the caller's again after."""
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self._own["torch"])
            for device, state in zip(self.devices, self._own["cuda"]):
                torch.cuda.set_rng_state(state, device)
            try:
                yield
            finally:
                self._own = self._default_states()

    def capture(self) -> dict[str, Any]:
        """The states, as a checkpoint stores them (uint8 tensors)."""
        return {"torch": self._own["torch"].clone(), "data": self.data.get_state(), "cuda": list(self._own["cuda"])}

    def restore(self, rng: dict[str, Any]) -> None:
        """Take the states of `rng` (from capture, checked by rng_problems). On a GPU, the state
        saved for this device's index, or the last one saved (a machine with fewer GPUs)."""
        self.data.set_state(rng["data"])
        saved = rng.get("cuda") or []
        cuda = [saved[min(d.index or 0, len(saved) - 1)] for d in self.devices] if saved else self._own["cuda"]
        self._own = {"torch": rng["torch"].clone(), "cuda": cuda}


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
