"""Token ids in, training batches out: random windows of one split, on the training device."""

from __future__ import annotations

import numpy as np
import torch


class Batches:
    """Random windows of one split. Each step draws one global batch from one seeded generator,
    so the data order depends only on the seed and the global batch size, never on how the batch
    is divided between processes or micro-steps."""

    def __init__(self, tokens: np.ndarray, block_size: int, device: torch.device):
        self.block_size, self.device, self.length = block_size, device, len(tokens)
        self.offsets = torch.arange(block_size + 1, device=device)  # (T+1,)
        if isinstance(tokens, np.memmap):  # a split larger than memory: windows read from the file
            self.mapped, self.data = tokens, None
        else:  # one int64 tensor for the whole split; a batch is a gather of windows, no per-batch copies
            self.mapped, self.data = None, torch.from_numpy(tokens.astype(np.int64)).to(device)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(self.length - self.block_size, (n,), generator=generator)
        if self.data is not None:
            windows = self.data[starts.to(self.device)[:, None] + self.offsets]  # (n, T+1)
        else:  # the same windows, gathered from the mapped file
            rows = self.mapped[starts.numpy()[:, None] + np.arange(self.block_size + 1)]
            windows = torch.from_numpy(rows.astype(np.int64)).to(self.device)
        return windows[:, :-1], windows[:, 1:]  # inputs and next-token targets, (n, T) each
