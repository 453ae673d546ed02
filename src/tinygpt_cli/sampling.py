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


class SamplingLinear(nn.Module):
    """An nn.Linear for sampling whose weight (and bias) may be stored in 16 bits on a CPU, and
    whose rows of a batch each come out exactly as they would alone.

    One position of one row is a matrix-vector product, bound by memory: it runs in the stored
    type. Many positions of a row (a prompt) are bound by arithmetic: float32. One position of
    each of several rows (a batch of requests being served) runs each row's product as that
    row's own matrix-vector product, so the batch changes no bit of any row: a float32 batched
    product whose every matrix has one row (torch.bmm), or in 16 bits one product per row.
    Sampling only: it has no gradient, and its 16-bit weights are not the checkpoint's.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        weight, bias = linear.weight, linear.bias
        if weight.dtype != dtype:
            weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
            bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.weight, self.bias = weight, bias  # float32: the linear's own (a tied matrix stays tied)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        if x.size(-2) != 1:  # many positions: bound by arithmetic
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.weight.to(x.dtype), bias)
        if x.size(0) == 1:  # one position: a matrix-vector product, bound by memory
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)
        if self.weight.dtype != torch.float32:
            return torch.cat([self(row) for row in x.split(1)])
        B, _, C = x.shape
        weight = self.weight.t().expand(B, C, -1)  # (B, C, out), no copy
        if self.bias is None:
            return torch.bmm(x, weight)
        return torch.baddbmm(self.bias.expand(B, 1, -1), x, weight)  # (B, 1, out)


def in_reduced_precision(model: GPT) -> bool:
    """Whether any of the model's weights are no longer the checkpoint's float32."""
    return any(p.dtype != torch.float32 for p in model.parameters())


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
    _swap_linears(model.blocks, dtype)  # the LM head (the token embedding) stays float32
    return dtype


def _swap_linears(within: nn.Module, dtype: torch.dtype) -> None:
    """Every nn.Linear inside `within` becomes a SamplingLinear storing its weight in `dtype`."""
    for parent in list(within.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, SamplingLinear(child, dtype))


def set_batch_exact(model: GPT) -> None:
    """Let `model` step many rows at once, each exactly as it would be alone (see SamplingLinear):
    what a server needs to batch requests and still give each its own answer. Call it after
    set_sampling_precision; like it, for sampling only."""
    _swap_linears(model, model.tok_emb.weight.dtype)  # the ones still plain, the LM head among them


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


class Decoder:
    """Contexts of one length that grow together, one token per row per step: the rows of a batch
    of requests being served, or generate's single row. Each row's scores are exactly those it
    would get alone (a model made set_batch_exact steps many rows; each prefill runs row by row).

    The window never holds more than a prompt and its `room` new tokens: the cache is that long.
    """

    def __init__(self, model: GPT, prompts: list[list[int]], room: int, kv_cache: bool = True):
        if not prompts or not prompts[0] or any(len(p) != len(prompts[0]) for p in prompts):
            raise ValueError("a Decoder steps non-empty contexts of one length")
        self.model = model
        device = next(model.parameters()).device
        self.context = torch.tensor(prompts, dtype=torch.long, device=device)  # (B, T)
        self.block = model.config.block_size
        self.start = max(0, self.context.size(1) - self.block)
        activations = model.tok_emb.weight.dtype  # float32 unless the whole model moved to another type
        self.cache = KVCache(model.config, len(prompts), device, activations, len(prompts[0]) + room) if kv_cache else None
        self.cached_from: int | None = None  # window start the cache was filled from
        self.reduced_precision = in_reduced_precision(model)

    @property
    def length(self) -> int:
        return self.context.size(1)

    def scores(self) -> torch.Tensor:
        """The next token's logits for every row: (B, vocab); NonFiniteLogits when any is not finite."""
        logits = self.unchecked_scores()
        if not torch.isfinite(logits).all():
            raise self.non_finite()
        return logits

    def unchecked_scores(self) -> torch.Tensor:
        """As `scores`, with inf or NaN left in the rows that hold them."""
        self.start = window_start(self.length, self.start, self.block)
        with eval_mode(self.model):  # each forward: between two tokens the caller may train the model
            if self.cache is not None and self.cached_from == self.start:
                logits, _ = self.model(self.context[:, -1:], cache=self.cache)  # only the newest position
            else:
                logits = torch.cat([self._prefill(i) for i in range(self.context.size(0))])
        return logits[:, -1, :]

    def non_finite(self) -> NonFiniteLogits:
        """The error of a row whose scores are not finite."""
        return NonFiniteLogits(self.length, self.reduced_precision)

    def _prefill(self, row: int) -> torch.Tensor:
        """Row `row`'s whole window in one pass, alone, filling its part of the cache."""
        window = self.context[row : row + 1, self.start :]
        if self.cache is None:
            return self.model(window)[0]
        if row == 0:
            self.cache.reset()
        view = self.cache.row(row)
        logits, _ = self.model(window, cache=view)
        self.cache.length, self.cached_from = view.length, self.start
        return logits

    def append(self, tokens: torch.Tensor) -> None:
        """The rows' next tokens, (B,)."""
        self.context = torch.cat([self.context, tokens[:, None].to(self.context.device)], dim=1)

    def keep(self, rows: list[int]) -> None:
        """Go on with these rows only (the others finished)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.context.device)
        self.context = self.context[index]
        if self.cache is not None:
            self.cache.keep(index)


@torch.inference_mode()  # lighter than no_grad for the many small ops of one token
def generate(model: GPT, prompt: list[int], max_new_tokens: int, *, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             kv_cache: bool = True) -> Iterator[int]:
    """Yield `max_new_tokens` token ids continuing `prompt` (a non-empty list of ids)."""
    if not prompt:
        raise ValueError("generate needs at least one prompt token")
    generator = sampling_generator(model, seed)
    decoder = Decoder(model, [prompt], max_new_tokens, kv_cache)
    for _ in range(max_new_tokens):
        token = sample_next(decoder.scores(), temperature, top_k, top_p, generator)  # (1,)
        decoder.append(token)
        yield int(token)


def sampling_generator(model: GPT, seed: int | None) -> torch.Generator:
    """A sample's own generator on the model's device, seeded with `seed` (None: a random seed):
    torch's global one (a training's dropout, say) is neither read nor moved."""
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator
