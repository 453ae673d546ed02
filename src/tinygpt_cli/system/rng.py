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
        self.device = device
        self.data = torch.Generator().manual_seed(seed)  # the order of the batches
        # The states torch.manual_seed(seed) would give, from generators of our own: seeding
        # torch's would reach every device of the process (and queue a seed for CUDA's).
        accelerator = [torch.Generator(device).manual_seed(seed).get_state()] if device.type == "cuda" else []
        self._own = {"torch": torch.Generator().manual_seed(seed).get_state(), "device": accelerator}

    def _fork(self):
        """torch's default generators of the CPU and of this GPU, put back as they were on exit.
        (On Apple's MPS the device's own generator is not kept apart: tinygpt cannot test it.)"""
        return torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else [])

    def _device_state(self) -> list[torch.Tensor]:
        return [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []

    def _set_device_state(self, states: list[torch.Tensor]) -> None:
        for state in states:
            torch.cuda.set_rng_state(state, self.device)

    @contextmanager
    def drawing(self) -> Iterator[None]:
        """torch's default generators hold the training's state inside, the caller's again after."""
        with self._fork():
            torch.set_rng_state(self._own["torch"])
            self._set_device_state(self._own["device"])
            try:
                yield
            finally:
                self._own = {"torch": torch.get_rng_state(), "device": self._device_state()}

    def capture(self) -> dict[str, Any]:
        """The states, as a checkpoint stores them (uint8 tensors); "cuda": the GPU's, a CUDA run's only."""
        return {"torch": self._own["torch"].clone(), "data": self.data.get_state(),
                "cuda": list(self._own["device"]) if self.device.type == "cuda" else []}

    def restore(self, rng: dict[str, Any]) -> None:
        """Take the states of `rng` (from capture, checked by rng_problems). On a GPU, the first
        state saved: this training's own (checkpoints before format 4 held every visible GPU's,
        of which each rank had moved only its own: the first, where rank 0 saves)."""
        self.data.set_state(rng["data"])
        saved = rng.get("cuda") or []
        device = [saved[0]] if saved and self.device.type == "cuda" else self._own["device"]
        self._own = {"torch": rng["torch"].clone(), "device": device}


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
