"""Token ids in, training batches out: random windows of one split, on the training device."""

from __future__ import annotations

import numpy as np
import torch


class Batches:
    """Random windows of one split. Each step draws one global batch from one seeded generator,
    so the data order depends only on the seed and the global batch size, never on how the batch
    is divided between processes or micro-steps."""

    def __init__(self, tokens: np.ndarray, block_size: int, device: torch.device):
        # One int64 tensor for the whole split; a batch is a gather of windows, no per-batch copies.
        self.data = torch.from_numpy(tokens.astype(np.int64)).to(device)
        self.offsets = torch.arange(block_size + 1, device=device)  # (T+1,)
        self.block_size = block_size
        self.device = device

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.data) - self.block_size, (n,), generator=generator)
        windows = self.data[starts.to(self.device)[:, None] + self.offsets]  # (n, T+1)
        return windows[:, :-1], windows[:, 1:]  # inputs and next-character targets, (n, T) each
