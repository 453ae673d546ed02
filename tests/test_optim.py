"""Muon for the blocks' matrices and AdamW for the rest, in one optimizer (optim.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tinygpt_cli.model import GPT
from tinygpt_cli.optim import MuonAdamW, orthogonalize

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Five quintic Newton-Schulz steps leave every singular value roughly in this band, not at exactly 1.
NS_BAND = (0.6, 1.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(48, 16), (16, 16), (16, 48)])  # tall, square, wide
def test_orthogonalize_gives_singular_values_near_one(shape, dtype):
    g = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0)) * torch.tensor([1e-3, 1.0, 1e3]).view(3, 1, 1)
    out = orthogonalize(g, dtype=dtype)
    assert out.shape == g.shape and out.dtype == dtype
    singular = torch.linalg.svdvals(out.float())
    assert singular.min() > NS_BAND[0] and singular.max() < NS_BAND[1]  # whatever the input's scale
    # The same directions as the input: U·Vᵀ of g aligns with g (trace(g^T·out) = sum of |singular values|).
    assert torch.all(torch.einsum("nij,nij->n", g, out.float()) > 0)


def test_orthogonalize_refuses_a_single_matrix():
    with pytest.raises(ValueError, match="stack of matrices"):
        orthogonalize(torch.randn(4, 4))


def test_a_stack_is_orthogonalized_as_each_matrix_alone():
    g = torch.randn(4, 24, 8, generator=torch.Generator().manual_seed(1))
    together = orthogonalize(g)
    for i in range(len(g)):
        assert torch.allclose(together[i], orthogonalize(g[i : i + 1])[0], atol=1e-6)


def test_muon_groups_step_by_an_orthogonalized_update_and_adamw_groups_as_torchs_adamw():
    """Each matrix steps by its own Nesterov momentum, orthogonalised alone, even though the
    optimizer stacks the matrices of one shape; the other groups step exactly as AdamW."""
    gen = torch.Generator().manual_seed(2)
    hidden = [torch.nn.Parameter(torch.randn(32, 8, generator=gen)) for _ in range(3)]  # one shape: one stack
    other = [torch.nn.Parameter(torch.randn(8, 8, generator=gen)), torch.nn.Parameter(torch.randn(8, generator=gen))]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in other]
    lr, betas = 0.02, (0.9, 0.95)
    muon = MuonAdamW([{"params": hidden, "muon": True}, {"params": other, "weight_decay": 0.1}], lr=lr, betas=betas)
    adamw = torch.optim.AdamW(reference, lr=lr, betas=betas, weight_decay=0.1, eps=1e-8)
    momentum = [torch.zeros_like(p) for p in hidden]
    for step in range(3):
        before = [p.detach().clone() for p in hidden]
        for p in hidden + other:
            p.grad = torch.randn(p.shape, generator=gen)
        for p, q in zip(reference, other):
            p.grad = q.grad.clone()
        muon.step()
        adamw.step()
        for p, q in zip(other, reference):
            assert torch.allclose(p, q, atol=1e-6), step
        for p, b, buf in zip(hidden, before, momentum):
            buf.lerp_(p.grad, 1 - 0.95)
            expected = orthogonalize(p.grad.lerp(buf, 0.95)[None])[0] * lr * math.sqrt(32 / 8)  # tall: larger steps
            assert torch.allclose(b - p.detach(), expected, atol=1e-5), step
            singular = torch.linalg.svdvals(expected / (lr * math.sqrt(32 / 8)))
            assert singular.min() > NS_BAND[0] and singular.max() < NS_BAND[1], step


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_params_reports_the_state_the_configured_optimizer_keeps(optimizer):
    from tinygpt_cli.config import resolve_config
    from tinygpt_cli.params import param_report
    from tinygpt_cli.optim import make_optimizer

    config = resolve_config("cpu", None, {"n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 16, "optimizer": optimizer})
    model = GPT(config.model)
    opt = make_optimizer(model, config.train, torch.device("cpu"))
    x = torch.randint(0, config.model.vocab_size, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    kept = sum(t.numel() * t.element_size() for state in opt.state.values() for k, t in state.items() if k != "step")
    assert param_report(config.model).optimizer_state_bytes(optimizer) == kept


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16, torch.float16])
def test_muons_products_run_in_bfloat16_only_when_the_training_does(compute):
    """A bfloat16 training (a CPU or GPU that multiplies bfloat16 fast) orthogonalises in bfloat16,
    as the Muon reference does; float32 and float16 trainings in float32."""
    from tinygpt_cli.config import resolve_config
    from tinygpt_cli.optim import make_optimizer

    config = resolve_config("cpu", None, {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 8})
    model = GPT(config.model)
    opt = make_optimizer(model, config.train, torch.device("cpu"), compute)
    assert opt.ns_dtype == (torch.bfloat16 if compute == torch.bfloat16 else torch.float32)
    x = torch.randint(0, config.model.vocab_size, (2, 8))
    model(x, x)[1].backward()
    opt.step()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())  # the weights stay float32
