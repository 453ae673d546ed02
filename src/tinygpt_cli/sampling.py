"""The generation engine: token ids in, token ids out, one at a time. It knows no characters.

The model sees a window of at most block_size positions. When the context outgrows it, the
window jumps forward to keep the last half of the context (`window_start`). Both paths below
see exactly the same windows, so in float32 they produce the same tokens:
- with the KV cache, each new token costs one position's forward pass, and a jump of the
  window costs one batched pass over the kept half;
- without it (`kv_cache=False`) every token recomputes its whole window, for comparison.

Precision (`set_sampling_precision`): one new token multiplies a vector by every weight matrix,
two FLOPs per weight read, so on a CPU sampling is bound by memory traffic, not arithmetic.
Storing the blocks' matrices in 16 bits halves that traffic: one position's products then run
in 16 bits (the vector entering each is rounded too), while norms, attention and the residual
stream stay float32. A CPU's float16 matrix-matrix products are slow, so a pass over many
positions (a prompt, a window jump) upcasts the weights and computes in float32: the two paths
round differently. On a GPU a 16-bit type, when asked for, moves the whole model.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .system.devices import DEFAULT_CACHE_BYTES, last_level_cache_bytes, pick_dtype
from .errors import Command, TinyGPTError
from .model import GPT, KVCache, eval_mode


class HalfWeightLinear(nn.Module):
    """An nn.Linear for sampling on a CPU whose weight (and bias) are stored in 16 bits.

    Sampling only: it has no gradient, and its rounded weights are not the checkpoint's.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() == 1:  # one position: a matrix-vector product, bound by memory
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)  # many positions: bound by arithmetic


def in_reduced_precision(model: GPT) -> bool:
    """Whether any of the model's weights are no longer the checkpoint's float32."""
    return model.tok_emb.weight.dtype != torch.float32 or any(isinstance(m, HalfWeightLinear) for m in model.modules())


def block_matrix_bytes(model: GPT) -> int:
    """Bytes of the blocks' weight matrices in float32: what one new token reads."""
    return 4 * sum(p.numel() for name, p in model.blocks.named_parameters() if p.dim() == 2)


def auto_sampling_name(model: GPT, device: torch.device) -> str:
    """What `--dtype auto` samples in. On a CPU: float16 matrices when the float32 ones outgrow
    the last-level cache, float32 when they fit. One token reads every matrix once, so where
    float32 weights come from memory, halving them wins; where they fit, converting float16 costs
    more than it saves (benchmarks/README.md, "Sampling on a CPU", has the figures). Off a CPU:
    float32."""
    if device.type != "cpu":
        return "float32"
    cache = last_level_cache_bytes() or DEFAULT_CACHE_BYTES
    return "float16" if block_matrix_bytes(model) > cache else "float32"


def set_sampling_precision(model: GPT, name: str) -> torch.dtype:
    """Put `model` in the precision named by `--dtype` for sampling; return the dtype chosen.

    auto: see auto_sampling_name; float32 reproduces the checkpoint exactly.
    The model changes in place, once: load it again for another precision, and never save it.
    """
    if in_reduced_precision(model):
        raise ValueError("the model's precision was already set for sampling: load it again to change it")
    device = next(model.parameters()).device
    if name == "auto":
        name = auto_sampling_name(model, device)
    dtype = pick_dtype(name, device)
    if dtype == torch.float32:
        return dtype
    if device.type != "cpu":
        model.to(dtype)
        return dtype
    for block in model.blocks:
        for parent in (block.attn, block.mlp):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, child_name, HalfWeightLinear(child, dtype))
    return dtype


class NonFiniteLogits(TinyGPTError):
    """The model produced inf or NaN scores: an overflow in 16-bit arithmetic, or weights that
    are themselves not finite (a diverged training)."""

    def __init__(self, position: int, reduced_precision: bool):
        if reduced_precision:
            super().__init__(f"the model's scores for position {position} overflowed in 16-bit arithmetic",
                             "sample again with --dtype float32")
        else:
            super().__init__(f"the model's scores for position {position} are not finite numbers: its weights are broken",
                             Command("runs", why="a run whose loss diverged: train it again with a lower --learning-rate"))


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


def next_token_probs(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The distribution the next token of each row of `logits` (B, vocab) is drawn from:
    temperature, then top-k, then top-p; temperature 0 puts everything on the top token."""
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()  # (B, vocab)
    # Shift the top score to 0 before dividing: a tiny temperature (1e-45) then sends the others
    # to -inf and keeps the top at 0, where dividing first would overflow to inf - inf = NaN.
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token of each row of `logits` (B, vocab); temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def window_start(length: int, start: int, block_size: int) -> int:
    """Where the model's window begins for a context of `length` tokens (see module docstring)."""
    if length - start > block_size:
        return length - max(1, block_size // 2)
    return start


@torch.inference_mode()  # lighter than no_grad for the many small ops of one token
def generate(model: GPT, prompt: list[int], max_new_tokens: int, *, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             kv_cache: bool = True) -> Iterator[int]:
    """Yield `max_new_tokens` token ids continuing `prompt` (a non-empty list of ids)."""
    if not prompt:
        raise ValueError("generate needs at least one prompt token")
    device = next(model.parameters()).device
    block = model.config.block_size
    # Its own generator: torch's global one (a training's dropout, say) is neither read nor moved.
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    context = torch.tensor(prompt, dtype=torch.long, device=device)[None, :]  # (1, T)
    start = max(0, context.size(1) - block)
    activations = model.tok_emb.weight.dtype  # float32 unless the whole model moved to another type
    reduced_precision = in_reduced_precision(model)
    # The window never holds more than the prompt and the new tokens: no room beyond that.
    cache = KVCache(model.config, 1, device, activations, len(prompt) + max_new_tokens) if kv_cache else None
    cached_from = None  # window start the cache was filled from
    for _ in range(max_new_tokens):
        start = window_start(context.size(1), start, block)
        with eval_mode(model):  # each forward: between two tokens the caller may train the model
            if cache is None:
                logits, _ = model(context[:, start:])
            elif cached_from != start:
                cache.reset()
                logits, _ = model(context[:, start:], cache=cache)  # prefill the whole window at once
                cached_from = start
            else:
                logits, _ = model(context[:, -1:], cache=cache)  # only the newest position
        if not torch.isfinite(logits).all():
            raise NonFiniteLogits(context.size(1), reduced_precision)
        token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (1,)
        context = torch.cat([context, token[:, None]], dim=1)
        yield int(token)
