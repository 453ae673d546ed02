"""Token ids in, training batches out: random windows of one split, on the training device."""

from __future__ import annotations

import numpy as np
import torch

# A split is copied into one int64 tensor up to this size (8 bytes a token); a larger one stays in
# its own 2- or 4-byte ids and each batch gathers its windows from there, at the same speed.
GATHER_TENSOR_BYTES = 2**28


class Batches:
    """Random windows of one split. Each step draws one global batch from one seeded generator,
    so the data order depends only on the seed and the global batch size, never on how the batch
    is divided between processes or micro-steps."""

    def __init__(self, tokens: np.ndarray, block_size: int, device: torch.device):
        self.block_size, self.device, self.length = block_size, device, len(tokens)
        self.offsets = torch.arange(block_size + 1, device=device)  # (T+1,)
        if isinstance(tokens, np.memmap) or len(tokens) * 8 > GATHER_TENSOR_BYTES:
            self.mapped, self.data = tokens, None  # windows gathered from the ids as stored (a file, for a memmap)
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
