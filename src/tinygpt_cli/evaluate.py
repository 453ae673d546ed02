"""Deterministic evaluation of a checkpoint: loss, perplexity, bits per token and bits per byte.

Bits per byte is the loss that compares across tokenizers: the total information the model
needs for a text, in bits, over the text's UTF-8 bytes (a BPE token covers several bytes, a
character one to four). For a character model on ASCII text it equals bits per character.
"""

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
    loss: float  # mean cross-entropy per predicted token, in nats
    tokens: int
    bytes: int  # UTF-8 bytes of the predicted tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def bits_per_byte(self) -> float:
        return self.loss * self.tokens / self.bytes / math.log(2)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_token": self.bits_per_token,
                "bits_per_byte": self.bits_per_byte, "tokens": self.tokens, "bytes": self.bytes}


Progress = Callable[[int], None]  # called with the number of windows just scored


@torch.no_grad()
def score_windows(model: GPT, tokens: np.ndarray, token_bytes: np.ndarray, starts: np.ndarray, length: int,
                  batch_size: int = 32, progress: Progress | None = None) -> SplitScore:
    """Mean loss over windows tokens[s : s+length] predicting tokens[s+1 : s+length+1];
    `token_bytes` holds each id's length in bytes (tokenizer.byte_lengths)."""
    model.eval()
    device = next(model.parameters()).device
    offsets = np.arange(length + 1)
    total, count, n_bytes = 0.0, 0, 0
    for i in range(0, len(starts), batch_size):
        windows = tokens[starts[i : i + batch_size].astype(np.int64)[:, None] + offsets].astype(np.int64)  # (b, T+1), from a memmap too
        x, y = torch.from_numpy(windows[:, :-1]).to(device), torch.from_numpy(windows[:, 1:]).to(device)
        _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
        n_bytes += int(token_bytes[windows[:, 1:]].sum())
        if progress is not None:
            progress(len(windows))
    return SplitScore(total / count, count, n_bytes)


def split_windows(model: GPT, tokens: np.ndarray) -> int:
    """How many windows score_split scores (for a progress bar)."""
    n_pred, T = len(tokens) - 1, model.config.block_size
    return n_pred // T + (1 if n_pred % T else 0)


def score_split(model: GPT, tokens: np.ndarray, token_bytes: np.ndarray, progress: Progress | None = None) -> SplitScore:
    """Every prediction of a split exactly once: non-overlapping windows, then the remainder."""
    T = model.config.block_size
    n_pred = len(tokens) - 1
    full = n_pred // T
    main = score_windows(model, tokens, token_bytes, np.arange(full) * T, T, progress=progress) if full else SplitScore(0.0, 0, 0)
    rest = n_pred - full * T
    if not rest:
        return main
    tail = score_windows(model, tokens, token_bytes, np.array([full * T]), rest, progress=progress)
    count = main.tokens + tail.tokens
    return SplitScore((main.loss * main.tokens + tail.loss * tail.tokens) / count, count, main.bytes + tail.bytes)


def score_train_sample(model: GPT, tokens: np.ndarray, token_bytes: np.ndarray, windows: int = TRAIN_SAMPLE_WINDOWS) -> SplitScore:
    T = model.config.block_size
    if len(tokens) <= T:  # not one full window fits (another dataset given to eval): score it all
        return score_split(model, tokens, token_bytes)
    starts = np.linspace(0, len(tokens) - T - 1, num=min(windows, len(tokens) - T)).astype(np.int64)
    return score_windows(model, tokens, token_bytes, starts, T)
