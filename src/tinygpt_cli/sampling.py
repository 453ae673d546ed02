"""The generation engine: token ids in, token ids out, one at a time. It knows no characters.

The model sees a window of at most block_size positions. When the context outgrows it, the
window jumps forward to keep the last half of the context (`window_start`). Both paths below
see exactly the same windows, so they produce the same tokens:
- with the KV cache, each new token costs one position's forward pass, and a jump of the
  window costs one batched pass over the kept half;
- without it (`kv_cache=False`) every token recomputes its whole window, for comparison.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .model import GPT, KVCache


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row; the rest become -inf."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose mass reaches p."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # the top token always stays, even for p = 0
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token of each row of `logits` (B, vocab); temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def window_start(length: int, start: int, block_size: int) -> int:
    """Where the model's window begins for a context of `length` tokens (see module docstring)."""
    if length - start > block_size:
        return length - max(1, block_size // 2)
    return start


@torch.no_grad()
def generate(model: GPT, prompt: list[int], max_new_tokens: int, *, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             kv_cache: bool = True) -> Iterator[int]:
    """Yield `max_new_tokens` token ids continuing `prompt` (a non-empty list of ids)."""
    if not prompt:
        raise ValueError("generate needs at least one prompt token")
    model.eval()
    device = next(model.parameters()).device
    block = model.config.block_size
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    context = torch.tensor(prompt, dtype=torch.long, device=device)[None, :]  # (1, T)
    start = max(0, context.size(1) - block)
    cache = KVCache(model.config, 1, device, next(model.parameters()).dtype) if kv_cache else None
    cached_from = None  # window start the cache was filled from
    for _ in range(max_new_tokens):
        start = window_start(context.size(1), start, block)
        if cache is None:
            logits, _ = model(context[:, start:])
        elif cached_from != start:
            cache.reset()
            logits, _ = model(context[:, start:], cache=cache)  # prefill the whole window at once
            cached_from = start
        else:
            logits, _ = model(context[:, -1:], cache=cache)  # only the newest position
        token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (1,)
        context = torch.cat([context, token[:, None]], dim=1)
        yield int(token)
