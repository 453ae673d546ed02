"""Token ids in, training batches out: random windows of one split, on the training device.

A chat split (with its loss mask, data/chat.py) gives one conversation per window: it starts
where a conversation starts, so that every trained token is predicted from its whole
conversation, and every target that is not trained, or lies past the conversation's end, is
IGNORE (the loss skips it)."""

from __future__ import annotations

import numpy as np
import torch

from .chat import TRAINED, conversation_bounds

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
        self.offsets = torch.arange(block_size + 1)  # (T+1,), where the windows are picked (on the CPU)
        self.starts = self.ends = self.trained = None
        if mask is not None:  # conversations: each window from a start, trained up to that conversation's end
            bounds = torch.from_numpy(conversation_bounds(mask))
            self.starts, self.ends = bounds[:-1], bounds[1:]
            self.trained = torch.from_numpy((mask & TRAINED) > 0).to(device)
        if isinstance(tokens, np.memmap) or len(tokens) * 8 > GATHER_TENSOR_BYTES:
            self.mapped, self.data = tokens, None  # windows gathered from the ids as stored (a file, for a memmap)
        else:  # one int64 tensor for the whole split; a batch is a gather of windows, no per-batch copies
            self.mapped, self.data = None, torch.from_numpy(tokens.astype(np.int64)).to(device)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.starts is None:
            starts = torch.randint(self.length - self.block_size, (n,), generator=generator)
            return self._windows(starts[:, None] + self.offsets)
        pick = torch.randint(len(self.starts), (n,), generator=generator)
        where = self.starts[pick][:, None] + self.offsets  # (n, T+1); past the split's end for its last conversations
        inside = (where < self.ends[pick][:, None]).to(self.device)
        where = where.clamp(max=self.length - 1)
        x, y = self._windows(where)
        trained = inside[:, 1:] & self.trained[where[:, 1:].to(self.device)]
        return x, torch.where(trained, y, IGNORE)

    def _windows(self, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens at `where` (n, T+1), as inputs and next-token targets, (n, T) each."""
        if self.data is not None:
            windows = self.data[where.to(self.device)]
        else:  # the same windows, gathered from the mapped file
            windows = torch.from_numpy(self.mapped[where.numpy()].astype(np.int64)).to(self.device)
        return windows[:, :-1], windows[:, 1:]
