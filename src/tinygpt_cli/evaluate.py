"""Deterministic evaluation of a checkpoint: loss, perplexity and bits per character."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .model import GPT

TRAIN_SAMPLE_WINDOWS = 128  # evenly spaced train windows: a cheap, repeatable look at the train split


@dataclass(frozen=True)
class SplitScore:
    loss: float  # mean cross-entropy per character, in nats
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_char(self) -> float:
        return self.loss / math.log(2)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_char": self.bits_per_char, "tokens": self.tokens}


Progress = Callable[[int], None]  # called with the number of windows just scored


@torch.no_grad()
def score_windows(model: GPT, tokens: np.ndarray, starts: np.ndarray, length: int, batch_size: int = 32,
                  progress: Progress | None = None) -> SplitScore:
    """Mean loss over windows tokens[s : s+length] predicting tokens[s+1 : s+length+1]."""
    model.eval()
    device = next(model.parameters()).device
    data = torch.from_numpy(tokens.astype(np.int64))
    offsets = torch.arange(length)
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        idx = torch.from_numpy(starts[i : i + batch_size].astype(np.int64))[:, None] + offsets  # (b, T)
        x, y = data[idx].to(device), data[idx + 1].to(device)
        _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
        if progress is not None:
            progress(len(idx))
    return SplitScore(total / count, count)


def split_windows(model: GPT, tokens: np.ndarray) -> int:
    """How many windows score_split scores (for a progress bar)."""
    n_pred, T = len(tokens) - 1, model.config.block_size
    return n_pred // T + (1 if n_pred % T else 0)


def score_split(model: GPT, tokens: np.ndarray, progress: Progress | None = None) -> SplitScore:
    """Every prediction of a split exactly once: non-overlapping windows, then the remainder."""
    T = model.config.block_size
    n_pred = len(tokens) - 1
    full = n_pred // T
    main = score_windows(model, tokens, np.arange(full) * T, T, progress=progress) if full else SplitScore(0.0, 0)
    rest = n_pred - full * T
    if not rest:
        return main
    tail = score_windows(model, tokens, np.array([full * T]), rest, progress=progress)
    count = main.tokens + tail.tokens
    return SplitScore((main.loss * main.tokens + tail.loss * tail.tokens) / count, count)


def score_train_sample(model: GPT, tokens: np.ndarray, windows: int = TRAIN_SAMPLE_WINDOWS) -> SplitScore:
    T = model.config.block_size
    if len(tokens) <= T:  # not one full window fits (another dataset given to eval): score it all
        return score_split(model, tokens)
    starts = np.linspace(0, len(tokens) - T - 1, num=min(windows, len(tokens) - T)).astype(np.int64)
    return score_windows(model, tokens, starts, T)
