"""Deterministic evaluation of a checkpoint: loss, perplexity, bits per token and bits per byte.

A chat split (one with a loss mask, data/chat.py) is scored on its trained tokens only, the
assistant's replies, each conversation from its own start.

Bits per byte is the loss that compares across tokenizers: the total information the model
needs for a text, in bits, over the text's UTF-8 bytes (a BPE token covers several bytes, a
character one to four). For a character model on ASCII text it equals bits per character.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import Checkpoint
from .data.chat import TRAINED, conversation_bounds
from .data.dataset import Dataset, load_dataset
from .errors import TinyGPTError
from .model import GPT, eval_mode

SAMPLE_WINDOWS = 128  # evenly spaced windows: a cheap, repeatable look at a split (eval's train sample)


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    """A loss in nats per token as bits per byte of text: the unit that compares tokenizers."""
    return loss / math.log(2) / bytes_per_token


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
        return bits_per_byte(self.loss, self.bytes / self.tokens)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_token": self.bits_per_token,
                "bits_per_byte": self.bits_per_byte, "tokens": self.tokens, "bytes": self.bytes}


WindowsScored = Callable[[int], None]  # called with the number of windows just scored


@torch.no_grad()
def window_losses(model: GPT, tokens: np.ndarray, starts: np.ndarray, length: int, batch_size: int = 32,
                  progress: WindowsScored | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each batch of windows tokens[s : s+length], the targets tokens[s+1 : s+length+1] and
    the loss of predicting each of them, in nats: (b, length) arrays."""
    device = next(model.parameters()).device
    offsets = np.arange(length + 1)
    for i in range(0, len(starts), batch_size):
        windows = tokens[starts[i : i + batch_size].astype(np.int64)[:, None] + offsets].astype(np.int64)  # (b, T+1), from a memmap too
        x, y = torch.from_numpy(windows[:, :-1]).to(device), torch.from_numpy(windows[:, 1:]).to(device)
        with eval_mode(model):
            logits, _ = model(x, y)
        losses = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape)
        if progress is not None:
            progress(len(windows))
        yield windows[:, 1:], losses.cpu().numpy()


@torch.no_grad()
def score_windows(model: GPT, tokens: np.ndarray, token_bytes: np.ndarray, starts: np.ndarray, length: int,
                  batch_size: int = 32, progress: WindowsScored | None = None) -> SplitScore:
    """Mean loss over windows tokens[s : s+length] predicting tokens[s+1 : s+length+1];
    `token_bytes` holds each id's length in bytes (tokenizer.byte_lengths)."""
    total, count, n_bytes = 0.0, 0, 0
    for targets, losses in window_losses(model, tokens, starts, length, batch_size, progress):
        total += float(losses.astype(np.float64).sum())
        count += targets.size
        n_bytes += int(token_bytes[targets].sum())
    return SplitScore(total / count, count, n_bytes)


def split_starts(n_tokens: int, block_size: int) -> list[tuple[np.ndarray, int]]:
    """The windows that score a split: every prediction exactly once, in non-overlapping windows
    of block_size, then the remainder; (starts, length) groups."""
    n_pred = n_tokens - 1
    full = n_pred // block_size
    groups = [(np.arange(full) * block_size, block_size)] if full else []
    if n_pred - full * block_size:
        groups.append((np.array([full * block_size]), n_pred - full * block_size))
    return groups


@torch.no_grad()
def token_losses(model: GPT, tokens: np.ndarray) -> np.ndarray:
    """The loss of predicting each token after the first, in the windows score_split uses: their
    mean is score_split's loss."""
    parts = [losses.reshape(-1) for starts, length in split_starts(len(tokens), model.config.block_size)
             for _, losses in window_losses(model, tokens, starts, length)]
    return np.concatenate(parts) if parts else np.zeros(0)


def split_windows(model: GPT, tokens: np.ndarray) -> int:
    """How many windows score_split scores (for a progress bar)."""
    return sum(len(starts) for starts, _ in split_starts(len(tokens), model.config.block_size))


def score_split(model: GPT, tokens: np.ndarray, token_bytes: np.ndarray, progress: WindowsScored | None = None,
                batch_size: int = 32) -> SplitScore:
    """Every prediction of a split exactly once: non-overlapping windows, then the remainder."""
    scores = [score_windows(model, tokens, token_bytes, starts, length, batch_size, progress)
              for starts, length in split_starts(len(tokens), model.config.block_size)]
    count = sum(s.tokens for s in scores)
    return SplitScore(sum(s.loss * s.tokens for s in scores) / count, count, sum(s.bytes for s in scores))


@torch.no_grad()
def score_conversations(model: GPT, tokens: np.ndarray, mask: np.ndarray, token_bytes: np.ndarray, limit: int | None = None,
                        batch_size: int = 32, progress: WindowsScored | None = None) -> SplitScore:
    """The loss over the trained tokens of a chat split, each conversation predicted from its own
    start (its first block_size tokens), every trained token once; `limit`: that many
    conversations, evenly spaced, instead of all."""
    bounds = conversation_bounds(mask)
    starts, ends = bounds[:-1], bounds[1:]
    if limit is not None and limit < len(starts):
        pick = np.linspace(0, len(starts) - 1, num=limit).astype(np.int64)
        starts, ends = starts[pick], ends[pick]
    device = next(model.parameters()).device
    total, count, n_bytes = 0.0, 0, 0
    for i in range(0, len(starts), batch_size):
        s, e = starts[i : i + batch_size], ends[i : i + batch_size]
        span = min(model.config.block_size + 1, int((e - s).max()))
        where = s[:, None] + np.arange(span)  # (b, span): each conversation, padded past its end
        inside = where < e[:, None]
        where = np.minimum(where, len(tokens) - 1)
        windows = np.where(inside, tokens[where], 0).astype(np.int64)
        trained = inside[:, 1:] & ((mask[where[:, 1:]] & TRAINED) > 0)  # (b, span-1): the targets scored
        x, y = torch.from_numpy(windows[:, :-1]).to(device), torch.from_numpy(windows[:, 1:]).to(device)
        with eval_mode(model):
            logits, _ = model(x, y)
        losses = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape).cpu().numpy()
        total += float(losses[trained].astype(np.float64).sum())
        count += int(trained.sum())
        n_bytes += int(token_bytes[windows[:, 1:][trained]].sum())
        if progress is not None:
            progress(len(s))
    if not count:
        raise TinyGPTError("the split holds no trained token to score")
    return SplitScore(total / count, count, n_bytes)


def predictions(tokens: np.ndarray, mask: np.ndarray | None) -> int:
    """How many tokens scoring a whole split predicts: every one after the first, or a chat
    split's trained ones."""
    return len(tokens) - 1 if mask is None else int(((mask & TRAINED) > 0).sum())


def score_sample(model: GPT, tokens: np.ndarray, token_bytes: np.ndarray, windows: int = SAMPLE_WINDOWS,
                 progress: WindowsScored | None = None, mask: np.ndarray | None = None, batch_size: int = 32) -> SplitScore:
    """The loss over `windows` windows spread evenly through `tokens` (a chat split: that many
    conversations): a repeatable look at a split too large to score whole."""
    if mask is not None:
        return score_conversations(model, tokens, mask, token_bytes, windows, batch_size, progress)
    T = model.config.block_size
    if len(tokens) <= T:  # not one full window fits (another dataset given to eval): score it all
        return score_split(model, tokens, token_bytes)
    starts = np.linspace(0, len(tokens) - T - 1, num=min(windows, len(tokens) - T)).astype(np.int64)
    return score_windows(model, tokens, token_bytes, starts, T, batch_size, progress)


def score_val(model: GPT, tokens: np.ndarray, token_bytes: np.ndarray, max_tokens: int | None = None,
              progress: WindowsScored | None = None, mask: np.ndarray | None = None, batch_size: int = 32) -> SplitScore:
    """A validation split scored whole (score_split; a chat split's conversations), or past
    `max_tokens` over about that many tokens in windows spread evenly through it (score_sample):
    what `tinygpt eval` reports, and the final evaluation of a run."""
    windows = _sample_windows(model, tokens, max_tokens, mask)
    if windows is not None:
        return score_sample(model, tokens, token_bytes, windows, progress, mask, batch_size)
    if mask is not None:
        return score_conversations(model, tokens, mask, token_bytes, None, batch_size, progress)
    return score_split(model, tokens, token_bytes, progress, batch_size)


def _sample_windows(model: GPT, tokens: np.ndarray, max_tokens: int | None, mask: np.ndarray | None) -> int | None:
    """The windows (a chat split's conversations) that score about `max_tokens` predictions; None:
    the whole split holds no more than that."""
    total = predictions(tokens, mask)
    if max_tokens is None or max_tokens >= total:
        return None
    if mask is None:
        return min(max(1, max_tokens // model.config.block_size), max(1, len(tokens) - model.config.block_size))
    conversations = len(conversation_bounds(mask)) - 1
    return max(1, round(conversations * max_tokens / total))  # at the split's mean of trained tokens per conversation


def val_windows(model: GPT, tokens: np.ndarray, max_tokens: int | None = None, mask: np.ndarray | None = None) -> int:
    """How many windows score_val scores (for a progress bar)."""
    windows = _sample_windows(model, tokens, max_tokens, mask)
    if windows is not None:
        return windows
    return split_windows(model, tokens) if mask is None else len(conversation_bounds(mask)) - 1


def eval_dataset(ckpt: Checkpoint, path: Path, data_dir: str | Path | None = None) -> Dataset:
    """The dataset `tinygpt eval` scores the checkpoint `ckpt` (read from `path`) on: `data_dir`,
    else the one it trained on. Refused when its tokenizer is not the checkpoint's (the scores
    would be meaningless) or when its validation split is empty."""
    folder = Path(data_dir) if data_dir is not None else ckpt.data_dir or Path("data/shakespeare")
    dataset = load_dataset(folder)
    if dataset.tokenizer != ckpt.tokenizer:
        raise TinyGPTError(f"the vocabulary of {folder} differs from the one {path} was trained on: scores would be meaningless",
                           "pass the dataset the model was trained on with --data-dir")
    if len(dataset.val) <= 1:
        raise TinyGPTError(f"the validation split of {folder} is empty")
    return dataset
