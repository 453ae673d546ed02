"""Token ids in, training batches out: random windows of one split, on the training device.

A chat split (with its loss mask, data/chat.py) gives windows that start where a conversation
starts, so that every trained token is predicted from its whole conversation, and targets that
are not trained are IGNORE (the loss skips them)."""

from __future__ import annotations

import numpy as np
import torch

from .chat import CONVERSATION_START, TRAINED

# A target the loss skips (model.py): in a chat dataset, every token but the assistant's.
IGNORE = -1

# A split is copied into one int64 tensor up to this size (8 bytes a token); a larger one stays in
# its own 2- or 4-byte ids and each batch gathers its windows from there, at the same speed.
GATHER_TENSOR_BYTES = 2**28


class Batches:
    """Random windows of one split. Each step draws one global batch from one seeded generator,
    so the data order depends only on the seed and the global batch size, never on how the batch
    is divided between processes or micro-steps."""

    def __init__(self, tokens: np.ndarray, block_size: int, device: torch.device, mask: np.ndarray | None = None):
        self.block_size, self.device, self.length = block_size, device, len(tokens)
        self.offsets = torch.arange(block_size + 1, device=device)  # (T+1,)
        self.starts = self.trained = None
        if mask is not None:  # conversations: a window from each start, the split padded past its end (never trained)
            self.starts = torch.from_numpy(np.flatnonzero(mask & CONVERSATION_START))
            pad = np.zeros(block_size + 1, dtype=np.int64)
            tokens = np.concatenate([tokens.astype(np.int64), pad])
            self.trained = torch.from_numpy(np.concatenate([(mask & TRAINED) > 0, pad > 0])).to(device)
        if isinstance(tokens, np.memmap) or len(tokens) * 8 > GATHER_TENSOR_BYTES:
            self.mapped, self.data = tokens, None  # windows gathered from the ids as stored (a file, for a memmap)
        else:  # one int64 tensor for the whole split; a batch is a gather of windows, no per-batch copies
            self.mapped, self.data = None, torch.from_numpy(tokens.astype(np.int64)).to(device)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.starts is not None:
            starts = self.starts[torch.randint(len(self.starts), (n,), generator=generator)]
        else:
            starts = torch.randint(self.length - self.block_size, (n,), generator=generator)
        if self.data is not None:
            windows = self.data[starts.to(self.device)[:, None] + self.offsets]  # (n, T+1)
        else:  # the same windows, gathered from the mapped file
            rows = self.mapped[starts.numpy()[:, None] + np.arange(self.block_size + 1)]
            windows = torch.from_numpy(rows.astype(np.int64)).to(self.device)
        x, y = windows[:, :-1], windows[:, 1:]  # inputs and next-token targets, (n, T) each
        if self.trained is not None:
            y = torch.where(self.trained[starts.to(self.device)[:, None] + self.offsets[1:]], y, IGNORE)
        return x, y
