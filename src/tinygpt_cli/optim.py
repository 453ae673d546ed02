"""Muon for the hidden weight matrices, AdamW for everything else, in one torch optimizer.

Muon (MomentUm Orthogonalized by Newton-Schulz) replaces each matrix's momentum by the nearest
semi-orthogonal matrix before stepping: every direction of the update gets a similar size, so
rare but useful directions are not drowned by dominant ones. Speed-run records report 1.3-2x
fewer steps than AdamW for the same loss. Embeddings, the tied head, norms and biases keep AdamW.
Muon: Keller Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks" (and
the modded-nanogpt speed runs); AdamW: Loshchilov and Hutter 2019, "Decoupled Weight Decay
Regularization"; Adam: Kingma and Ba 2015.

Being one `torch.optim.Optimizer`, its state_dict saves and loads like AdamW's, so checkpoints
and exact resume work unchanged.
"""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U·Vᵀ of each matrix g = U·S·Vᵀ of a stack (n, rows, cols), by a quintic
    Newton-Schulz iteration (coefficients tuned to converge fast on singular values in (0, 1],
    as in the Muon speed-run code). Matrices of one shape go as one stack: the same products
    for every layer in one batched call, which on a CPU is far cheaper than one call each.

    The products run in `dtype`. The iteration only needs the singular values near 1, not
    exact, so the Muon reference runs it in bfloat16; MuonAdamW does when the model's own
    products do (the cpu preset's step on a 2-core Zen 4: 14.5 ms of these products in
    float32, a quarter of the step, and 10.1 in bfloat16; benchmarks/README.md, "Muon's products")."""
    if g.dim() != 3:
        raise ValueError(f"orthogonalize takes a stack of matrices (n, rows, cols), not a tensor of shape {tuple(g.shape)}")
    a, b, c = 3.4445, -4.7750, 2.0315
    g = g.float()
    x = (g / (torch.linalg.matrix_norm(g).view(-1, 1, 1) + 1e-7)).to(dtype)  # singular values into (0, 1]
    tall = x.size(1) > x.size(2)
    if tall:
        x = x.mT  # iterate on the smaller Gram matrix
    for _ in range(steps):
        gram = x @ x.mT  # (n, r, r)
        # x <- a·x + (b·gram + c·gram²)·x, in two fused multiply-adds
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with `muon=True` take Muon steps; the others take AdamW steps.

    Group keys: lr, weight_decay, muon; Muon groups: momentum, ns_steps; AdamW groups: betas, eps.
    `ns_dtype`: the precision of the Newton-Schulz products (see orthogonalize).
    """

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, momentum: float = 0.95, ns_steps: int = 5, ns_dtype: torch.dtype = torch.float32):
        defaults = dict(lr=lr, weight_decay=0.0, muon=False, betas=betas, eps=eps, momentum=momentum, ns_steps=ns_steps)
        super().__init__(groups, defaults)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["weight_decay"]:
                for p in params:
                    p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled, as in AdamW
            if group["muon"]:
                self._muon(params, group)
            else:
                for p in params:
                    self._adamw(p, group)

    def _muon(self, params: list[torch.Tensor], group: dict) -> None:
        by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - group["momentum"])
            nesterov = p.grad.lerp(buf, group["momentum"])
            by_shape.setdefault(p.shape, []).append((p, nesterov))
        for (rows, cols), pairs in by_shape.items():
            updates = orthogonalize(torch.stack([nesterov for _, nesterov in pairs]), group["ns_steps"], self.ns_dtype)
            # Orthogonal updates have unit singular values; scale so tall matrices move alike.
            scale = -group["lr"] * math.sqrt(max(1.0, rows / cols))
            for (p, _), update in zip(pairs, updates):
                p.add_(update.to(p.dtype), alpha=scale)

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - beta1)  # first moment: momentum
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)  # second moment: per-weight scale
        denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**t))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                   compute_dtype: torch.dtype = torch.float32) -> torch.optim.Optimizer:
    """AdamW (or Muon for the blocks' matrices); weight decay on matrices only, never on biases
    or norm gains. Each group's `lr_scale` ties its rate to the one schedule. `compute_dtype`:
    the training's precision; Muon's Newton-Schulz products run in bfloat16 when it is bfloat16."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [p for _, p in named if p.dim() >= 2]
    vectors = [p for _, p in named if p.dim() < 2]
    if cfg.optimizer == "muon":
        hidden = [p for n, p in named if p.dim() == 2 and n.startswith("blocks.")]
        embeddings = [p for n, p in named if p.dim() >= 2 and not n.startswith("blocks.")]
        groups = [
            {"params": hidden, "weight_decay": cfg.weight_decay, "muon": True, "lr_scale": cfg.muon_lr / cfg.learning_rate},
            {"params": embeddings, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
            {"params": vectors, "weight_decay": 0.0, "lr_scale": 1.0},
        ]
        ns_dtype = torch.bfloat16 if compute_dtype == torch.bfloat16 else torch.float32
        return MuonAdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), ns_dtype=ns_dtype)
    groups = [
        {"params": matrices, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": vectors, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    fused = device.type in ("cpu", "cuda")  # one kernel for all parameters instead of a loop
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


# --- checking a saved state before it reaches an optimizer ----------------------------------
# load_state_dict copies what it is given: a moment of the wrong shape would reach the fused
# AdamW kernel unchecked (a crash, not an error). Everything is compared with the optimizer
# built for this model first.

def _expected_state(group: dict, param: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The state keys and shapes that one step creates for `param` in `group`."""
    if group.get("muon"):
        return {"momentum_buffer": tuple(param.shape)}
    return {"step": (), "exp_avg": tuple(param.shape), "exp_avg_sq": tuple(param.shape)}


def _group_problem(index: int, built: dict, saved: object) -> str | None:
    """Why a saved param group does not belong to the built optimizer (None if it does). Only its
    parameters matter: its settings are replaced by the built ones after loading (restore_groups)."""
    if not isinstance(saved, dict) or saved.get("params") != built["params"]:
        return f"parameter group {index} does not belong to this model"
    return None


def restore_groups(optimizer: torch.optim.Optimizer, built: list[dict]) -> None:
    """Put back the settings of the groups as built from this run's config (all but the rate,
    which the schedule sets every step): load_state_dict takes the saved ones, which may lack a
    key a newer torch needs, or predate a setting changed on resume (--weight-decay, --beta2...)."""
    for group, settings in zip(optimizer.param_groups, built):
        group.update({k: v for k, v in settings.items() if k not in ("params", "lr")})


def state_problems(optimizer: torch.optim.Optimizer, saved: dict, max_step: int) -> list[str]:
    """What is wrong with `saved` (a state_dict) as the state of `optimizer`: nothing, or reasons."""
    built = optimizer.state_dict()["param_groups"]
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(built):
        return [f"{len(groups) if isinstance(groups, list) else 'no'} parameter groups, this model's optimizer has {len(built)}"]
    problems = [p for i, (b, s) in enumerate(zip(built, groups)) if (p := _group_problem(i, b, s))]
    expected: dict[int, dict[str, tuple[int, ...]]] = {}
    for b, group in zip(built, optimizer.param_groups):
        for index, param in zip(b["params"], group["params"]):
            expected[index] = _expected_state(group, param)
    for index, state in saved.get("state", {}).items():
        if index not in expected:
            problems.append(f"state for parameter {index}, which this model does not have")
            continue
        if set(state) != set(expected[index]):
            problems.append(f"parameter {index} has state {sorted(state)}, expected {sorted(expected[index])}")
            continue
        for key, tensor in state.items():
            if tensor.dtype != torch.float32 or tuple(tensor.shape) != expected[index][key]:
                problems.append(f"optim.{index}.{key} is {tensor.dtype} {tuple(tensor.shape)}, expected float32 {expected[index][key]}")
            elif key == "step" and not 0 <= tensor.item() <= max_step:
                problems.append(f"optim.{index}.step is {tensor.item():g}, past the {max_step} iterations done")
    return problems
