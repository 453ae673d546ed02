"""A decoder-only GPT over token ids (characters or BPE tokens), readable top to bottom.

    token ids (B, T)
      -> token embedding + position embedding          (B, T, C)
      -> n_layer x [ x + attn(ln(x));  x + mlp(ln(x)) ]  (B, T, C)
      -> final LayerNorm -> LM head (tied to the token embedding)  (B, T, vocab)

B is the batch size, T the number of positions, C = n_embd the width of the residual stream,
nh the number of heads and hs = C / nh the size of one head.

Where the ideas come from:
- the Transformer and its attention: Vaswani et al. 2017, "Attention Is All You Need";
- the GPT recipe (pre-LayerNorm blocks, learned positions, GELU, tied embeddings, the scaled
  init of residual projections): Radford et al. 2019, "Language Models are Unsupervised
  Multitask Learners" (GPT-2), as written down by Karpathy's nanoGPT `model.py`;
- rotary positions (`--pos-embedding rope`): Su et al. 2021, "RoFormer: Enhanced Transformer
  with Rotary Position Embedding";
- RMSNorm (`--norm rmsnorm`): Zhang and Sennrich 2019, "Root Mean Square Layer Normalization";
- QK-norm (`--qk-norm`): Henry et al. 2020, "Query-Key Normalization for Transformers", and
  Dehghani et al. 2023 (ViT-22B), where it steadies training at high learning rates;
- GELU: Hendrycks and Gimpel 2016, "Gaussian Error Linear Units"; `--activation gelu_tanh` is
  its tanh approximation, the function OpenAI's GPT-2 weights were trained with;
- squared ReLU (`--activation relu2`): So et al. 2021, "Primer: Searching for Efficient
  Transformers for Language Modeling";
- dropout: Srivastava et al. 2014, "Dropout: A Simple Way to Prevent Neural Networks from
  Overfitting"; on the attention weights as in GPT-2 and nanoGPT.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .data.batches import IGNORE  # a target the loss skips


class KVCache:
    """Keys and values of the positions seen so far, one pair of buffers per block.

    During sampling each new token then costs one position's forward pass: its query attends
    to the cached keys/values instead of recomputing them for the whole context.
    """

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype, length: int | None = None):
        # Room for `length` positions (at most a window): a short sample needs no full window.
        length = config.block_size if length is None else min(length, config.block_size)
        shape = (batch_size, config.n_head, length, config.head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions filled, shared by all layers

    def reset(self) -> None:
        self.length = 0

    def row(self, i: int) -> KVCache:
        """A cache of row `i` alone, a view of this one's buffers (empty): a row filled through it
        is filled exactly as in a batch of one, and is then part of this batch."""
        view = object.__new__(KVCache)
        view.k, view.v = [k[i : i + 1] for k in self.k], [v[i : i + 1] for v in self.v]
        view.length = 0
        return view

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (a 1-D tensor of indices), in this order."""
        self.k, self.v = [k[rows] for k in self.k], [v[rows] for v in self.v]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, nh, T, hs) for `layer`; return all keys/values so far."""
        start, end = self.length, self.length + k.size(2)
        self.k[layer].narrow(2, start, end - start).copy_(k)
        self.v[layer].narrow(2, start, end - start).copy_(v)
        return self.k[layer].narrow(2, 0, end), self.v[layer].narrow(2, 0, end)

    def advance(self, n: int) -> None:
        self.length += n


DROPOUT_BITS = 16  # random bits per value that a CPU's dropout compares to its threshold


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each value of `x` with probability p and scale the others by 1/(1-p) (in training only).

    On a GPU this is F.dropout, one fused pass. On a CPU, F.dropout draws one number per value
    from torch's serial generator into a float mask, then scales it and multiplies in separate
    passes (bernoulli_ alone was 42% of the baby preset's step on a 2-core CPU). Here
    one 64-bit draw from the same generator serves four values, 16 random bits each, and a value
    is kept when its bits fall below a threshold: the keep rate is k/2^16 with k = round((1-p)
    2^16), within 2^-17 of 1-p, and the kept values are scaled by 2^16/k, so that the expected
    output is x (in a 16-bit type the scale is rounded to it, as F.dropout's is). Same seed, same
    masks, and a resume restores the generator.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    levels = 1 << DROPOUT_BITS
    kept = max(1, round((1 - p) * levels))
    if kept == levels:  # p under 2^-17: every value kept
        return x
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)  # 64 uniform bits each
    bits = words.view(torch.int16)[: x.numel()].view(x.shape)  # uniform in [-2^15, 2^15)
    mask = (bits < kept - levels // 2).to(x.dtype).mul_(levels / kept)  # 2^16/k or 0, in x's type
    return x * mask


def rope_tables(head_size: int, length: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (length, head_size / 2): pair i turns at rate base^(-2i/hs)."""
    rates = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (hs/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), rates)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of channels of q or k (B, nh, T, hs) by its position's angle, so that
    q·k depends on the distance between two positions, not on where they are."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qk_norm = config.qk_norm
        # q, k and v for all heads in one matmul, split afterwards.
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        # A list while GPT.attention_maps() records: each forward appends its weights (B, nh, T, S).
        self.recorded: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        # q, k and v of every head, as views of the one product: 3 x (B, nh, T, hs)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # Without a cache, or when filling an empty one, position t may look at positions <= t only.
        # A single new token with a cache looks at everything cached: all of it lies in its past.
        causal = True
        if cache is not None:
            causal = cache.length == 0
            if not causal and T != 1:
                raise ValueError("a non-empty KV cache takes one new position at a time")
            k, v = cache.append(layer, k, v)  # (B, nh, T_past + T, hs)
        # The fused kernel, or by hand under CPU mixed precision (see _attention); dropout only in training.
        y = self._attention(q, k, v, causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        # Dropout as a function, not a module: sampling calls this once per layer and token.
        return dropout(self.proj(y), self.dropout, self.training)

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        if self.recorded is not None:  # asked for the weights: the same softmax, kept (no cost otherwise)
            y, weights = self._attention_by_hand(q, k, v, causal, p, keep_weights=True)
            self.recorded.append(weights.view(q.size(0), q.size(1), q.size(2), k.size(2)))
            return y
        # On a CPU, by hand under mixed precision, and with dropout (the fused kernel's dropout is
        # F.dropout's slow mask); elsewhere the fused kernel.
        if q.device.type == "cpu" and (p > 0 or torch.is_autocast_enabled("cpu")):
            return self._attention_by_hand(q, k, v, causal, p)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)

    @staticmethod
    def _attention_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, p: float,
                           keep_weights: bool = False):
        """softmax(q k^T / sqrt(hs) + mask) v as three batched ops, for CPU mixed precision: the
        CPU's fused kernel is several times slower in bfloat16 than in float32 (its backward
        above all), while these ops run in the 16-bit type under autocast, with no casts to
        float32. The price: the (B*nh, T, S) scores are materialised and kept for the backward
        pass, which the fused kernel avoids (about 0.75 GB for the baby preset's 6 layers at batch 64)."""
        B, nh, T, hs = q.shape
        S = k.size(2)
        # Added to the scores: -inf above the diagonal hides the future when causal.
        mask = torch.full((T, S), float("-inf") if causal else 0.0, dtype=q.dtype, device=q.device).triu(1)
        scores = torch.baddbmm(mask.expand(B * nh, T, S), q.reshape(B * nh, T, hs),
                               k.reshape(B * nh, S, hs).transpose(1, 2), alpha=hs**-0.5)  # (B*nh, T, S)
        weights = dropout(scores.softmax(dim=-1), p, True)
        y = torch.bmm(weights, v.reshape(B * nh, S, hs)).view(B, nh, T, hs)
        return (y, weights) if keep_weights else y


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.activation = config.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)  # (B, T, 4C)
        if self.activation == "relu2":
            h = F.relu(h).square()
        else:  # GPT-2's released weights were trained with the tanh approximation of GELU
            h = F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return dropout(self.down(h), self.dropout, self.training)  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm: normalise the input of each branch, add the branch to the residual stream."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rope)  # tokens exchange information
        x = x + self.mlp(self.ln_2(x))  # each token thinks on its own
        return x


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every weight that a GPT of `config` stores (the tied head once, as
    tok_emb), without building it: checkpoint loading checks a file's tensors against this before
    reading them. test_model checks it against a built model for every option."""
    C, V, T = config.n_embd, config.vocab_size, config.block_size
    norm_bias = config.bias and config.norm == "layernorm"  # RMSNorm has a gain only

    def norm(name: str) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (C,), **({f"{name}.bias": (C,)} if norm_bias else {})}

    def linear(name: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (n_out, n_in), **({f"{name}.bias": (n_out,)} if config.bias else {})}

    shapes = {"tok_emb.weight": (V, C), **({"pos_emb.weight": (T, C)} if config.pos_embedding == "learned" else {})}
    for i in range(config.n_layer):
        b = f"blocks.{i}"
        shapes |= norm(f"{b}.ln_1") | linear(f"{b}.attn.qkv", C, 3 * C) | linear(f"{b}.attn.proj", C, C)
        shapes |= norm(f"{b}.ln_2") | linear(f"{b}.mlp.up", C, 4 * C) | linear(f"{b}.mlp.down", 4 * C, C)
    return shapes | norm("ln_f")


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, init: bool = True):
        """init=False: the weights are about to be loaded, so GPT-2's initial values are not drawn
        (a twentieth of a second of `generate`'s start for the baby GPT, half a second for GPT-2's
        size; torch's layers still draw their own defaults)."""
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)  # what each token is
        if config.pos_embedding == "learned":
            self.pos_emb = nn.Embedding(config.block_size, config.n_embd)  # where it stands in the window
        else:
            # Rotary positions: fixed tables, not parameters and not saved in checkpoints.
            cos, sin = rope_tables(config.head_size, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token in and writing one out share one matrix.
        self.lm_head.weight = self.tok_emb.weight
        if not init:
            return
        self.apply(self._init_weights)
        # GPT-2: each block adds two residual branches; shrinking their output projections by
        # 1/sqrt(2 n_layer) keeps the residual stream's variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @contextmanager
    def attention_maps(self) -> Iterator[list[torch.Tensor]]:
        """Record the attention weights of every layer while the body runs forward passes:
        yields a list that fills with one (B, n_head, T, S) tensor per layer and pass."""
        maps: list[torch.Tensor] = []
        for block in self.blocks:
            block.attn.recorded = maps
        try:
            yield maps
        finally:
            for block in self.blocks:
                block.attn.recorded = None

    def num_params(self) -> int:
        # parameters() yields the tied matrix once.
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None, reduction: str = "mean"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and with `targets` the cross-entropy loss: their mean, or with reduction="sum"
        their sum. A target of IGNORE (a token a chat dataset does not train) adds no loss."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} positions is longer than block_size {self.config.block_size}")
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.config.pos_embedding == "learned":
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
            x = x + self.pos_emb(pos)  # (B, T, C) + (T, C) broadcast
        else:
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])  # (T, hs/2) each
        x = dropout(x, self.config.dropout, self.training)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, rope)
        if cache is not None:
            cache.advance(T)
        x = self.ln_f(x)  # (B, T, C)
        if targets is None:
            # Sampling needs only the last position's prediction: skip the other T-1 rows.
            return self.lm_head(x[:, -1:, :]), None  # (B, 1, vocab)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction=reduction)
        return logits, loss


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode (no dropout) inside, and back in the mode it was in after: sampling
    or looking inside a model in the middle of its training leaves it training."""
    if not model.training:  # the usual case, once per sampled token: nothing to switch
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        model.train()
