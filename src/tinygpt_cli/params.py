"""Where the parameters live, computed from the model config alone (no torch needed).

The counts mirror model.py layer by layer; the test suite checks that the total equals the
sum of `numel()` over a built model for many shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig


@dataclass(frozen=True)
class ParamRow:
    name: str
    shape: str
    count: int
    note: str = ""


@dataclass(frozen=True)
class ParamReport:
    config: ModelConfig
    embedding: list[ParamRow]
    block: list[ParamRow]  # one block; the stack has n_layer of them
    head: list[ParamRow]

    @property
    def block_total(self) -> int:
        return sum(r.count for r in self.block)

    @property
    def total(self) -> int:
        return sum(r.count for r in self.embedding + self.head) + self.block_total * self.config.n_layer

    @property
    def position_embedding(self) -> int:
        return self.config.block_size * self.config.n_embd if self.config.pos_embedding == "learned" else 0

    @property
    def non_embedding(self) -> int:
        """Parameters outside both embedding tables (the blocks and the final norm)."""
        return self.total - self.position_embedding - self.config.vocab_size * self.config.n_embd

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in matrix multiplies: all but the position table (a lookup).
        The token table counts because the tied LM head multiplies by it."""
        return self.total - self.position_embedding

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N (forward + backward matmuls) + 12·n_layer·n_embd·block_size
        (attention scores and weighted sums)."""
        c = self.config
        return 6 * self.matmul_params + 12 * c.n_layer * c.n_embd * c.block_size

    @property
    def block_matrices(self) -> int:
        """Parameters in the blocks' weight matrices (q/k/v, projection, MLP): 12·n_embd² each."""
        return 12 * self.config.n_embd**2 * self.config.n_layer

    def optimizer_state_bytes(self, optimizer: str) -> int:
        """fp32 bytes of optimiser state: AdamW keeps two moments per parameter; Muon one
        momentum per weight of the blocks' matrices, and AdamW's two for everything else."""
        if optimizer == "muon":
            return 4 * self.block_matrices + 8 * (self.total - self.block_matrices)
        return 8 * self.total

    def to_dict(self) -> dict:
        rows = lambda rs: [r.__dict__ for r in rs]  # noqa: E731
        return {
            "config": self.config.model_dump(),
            "embedding": rows(self.embedding),
            "block": rows(self.block),
            "block_total": self.block_total,
            "blocks_total": self.block_total * self.config.n_layer,
            "head": rows(self.head),
            "total": self.total,
            "without_position_embedding": self.total - self.position_embedding,
            "non_embedding": self.non_embedding,
            "weights_bytes_fp32": 4 * self.total,
            "training_flops_per_token": self.flops_per_token(),
        }


def _linear(name: str, n_in: int, n_out: int, bias: bool) -> list[ParamRow]:
    rows = [ParamRow(name, f"{n_in} x {n_out}", n_in * n_out)]
    if bias:
        rows.append(ParamRow(f"{name} bias", f"{n_out}", n_out))
    return rows


def _norm(name: str, config: ModelConfig) -> list[ParamRow]:
    width = config.n_embd
    bias = config.bias and config.norm == "layernorm"  # RMSNorm has a gain, never a bias
    kind = "RMSNorm" if config.norm == "rmsnorm" else "LayerNorm"
    return [ParamRow(name, f"{width}" + (" + bias" if bias else ""), width * (2 if bias else 1), kind)]


def param_report(config: ModelConfig) -> ParamReport:
    C, V, T, bias = config.n_embd, config.vocab_size, config.block_size, config.bias
    embedding = [ParamRow("token embedding", f"{V} x {C}", V * C, "shared with the LM head")]
    if config.pos_embedding == "learned":
        embedding.append(ParamRow("position embedding", f"{T} x {C}", T * C))
    else:
        embedding.append(ParamRow("position embedding", "rotary", 0, "RoPE: computed, no parameters"))
    block = (
        _norm("ln_1", config)
        + _linear("attention q, k, v", C, 3 * C, bias)
        + _linear("attention output projection", C, C, bias)
        + _norm("ln_2", config)
        + _linear("MLP up", C, 4 * C, bias)
        + _linear("MLP down", 4 * C, C, bias)
    )
    head = _norm("final norm", config) + [ParamRow("LM head", f"{C} x {V}", 0, "tied: the token embedding, not counted twice")]
    return ParamReport(config, embedding, block, head)


def activation_bytes(config: ModelConfig, batch_size: int) -> int:
    """About what one micro-batch's forward pass keeps for the backward pass, in float32 (mixed
    precision keeps less). Per token and block: about 16 values of width n_embd (norm inputs,
    q/k/v, the attention output, residuals, the MLP's 4·n_embd twice) and two maps of block_size
    scores per head (the scores and their softmax); then the logits and their gradient, about
    three values per vocabulary entry. The per-layer count follows Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models" (sbh(34 + 5as/h) bytes in 16 bits)."""
    c = config
    per_token = c.n_layer * (16 * c.n_embd + 2 * c.n_head * c.block_size) + 3 * c.vocab_size + 2 * c.n_embd
    return 4 * batch_size * c.block_size * per_token


@dataclass(frozen=True)
class Product:
    """One matrix product of a training step: `batch` products of (m, k) by (k, n), `count`
    times per micro-batch; a_t / b_t: that operand is a transposed view, as autograd passes it."""
    name: str
    batch: int
    m: int
    k: int
    n: int
    count: int
    a_t: bool = False
    b_t: bool = False

    @property
    def flops(self) -> int:  # of one product
        return 2 * self.batch * self.m * self.k * self.n


def step_products(config: ModelConfig, batch_size: int) -> list[Product]:
    """The matrix products of one micro-batch's forward and backward pass, at their shapes: each
    linear layer's y = x W^T, dx = dy W and dW = dy^T x over the B*T tokens, and attention's
    scores and weighted sums with their gradients (the by-hand path of model.py: the full T x T).
    Their FLOPs add up to flops_per_token() per token, but for the norms' and biases' few."""
    C, T, L, nh = config.n_embd, config.block_size, config.n_layer, config.n_head
    hs, M, BH = config.head_size, batch_size * config.block_size, batch_size * config.n_head
    linears = [("attn.qkv", C, 3 * C, L), ("attn.proj", C, C, L), ("mlp.up", C, 4 * C, L), ("mlp.down", 4 * C, C, L),
               ("lm_head", C, config.vocab_size, 1)]
    products = []
    for name, n_in, n_out, count in linears:
        products += [Product(f"{name} forward", 1, M, n_in, n_out, count, b_t=True),
                     Product(f"{name} input gradient", 1, M, n_out, n_in, count),
                     Product(f"{name} weight gradient", 1, n_out, M, n_in, count, a_t=True)]
    # Forward: q k^T (T, hs)(hs, T) and weights v (T, T)(T, hs); backward: d(weights) = dy v^T
    # (T, hs)(hs, T), dv = weights^T dy, dq = d(scores) k and dk = d(scores)^T q, each (T, T)(T, hs).
    products += [Product("attention scores", BH, T, hs, T, 2 * L, b_t=True),
                 Product("attention sums", BH, T, T, hs, 4 * L)]
    return products
