"""The GPT module: initial loss, learning, weight tying, init scales, shapes and the KV cache."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SWITCHES, TINY_MODEL, switch_id

from tinygpt_cli.config import ModelConfig
from tinygpt_cli.model import GPT, CausalSelfAttention, KVCache, dropout, weight_shapes

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = ModelConfig(vocab_size=65, **TINY_MODEL)


def make_model(config: ModelConfig = TINY, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def test_initial_loss_is_uniform_guess():
    model = make_model().eval()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, TINY.vocab_size, (8, TINY.block_size), generator=g)
    targets = torch.randint(0, TINY.vocab_size, (8, TINY.block_size), generator=g)
    with torch.no_grad():
        logits, loss = model(idx, targets)
    assert logits.shape == (8, TINY.block_size, TINY.vocab_size)
    assert loss.ndim == 0
    assert abs(loss.item() - math.log(TINY.vocab_size)) < 0.3


def test_loss_falls_when_overfitting_one_batch():
    model = make_model().train()
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, TINY.vocab_size, (4, TINY.block_size), generator=g)
    targets = torch.roll(idx, -1, dims=1)  # a learnable mapping: the next token of a fixed batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 1.0, (losses[0], losses[-1])
    assert losses[-1] < 0.7 * losses[0]


def test_weight_tying_shares_one_tensor():
    model = make_model()
    assert model.lm_head.weight is model.tok_emb.weight
    # Counted once: the shared matrix appears a single time in parameters().
    names = [n for n, _ in model.named_parameters()]
    assert "tok_emb.weight" in names and "lm_head.weight" not in names
    # A change through one is seen through the other.
    with torch.no_grad():
        model.tok_emb.weight[3, 5] = 7.0
    assert model.lm_head.weight[3, 5].item() == 7.0


def test_residual_projections_have_scaled_init():
    config = ModelConfig(vocab_size=65, block_size=32, n_layer=4, n_head=4, n_embd=256, dropout=0.0)
    model = make_model(config)
    expected = 0.02 / math.sqrt(2 * config.n_layer)
    for block in model.blocks:
        for weight in (block.attn.proj.weight, block.mlp.down.weight):
            assert weight.std().item() == pytest.approx(expected, rel=0.05)
            assert abs(weight.mean().item()) < expected / 10
        # The other matrices keep the plain 0.02.
        for weight in (block.attn.qkv.weight, block.mlp.up.weight):
            assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_biases_start_at_zero_when_enabled():
    model = make_model(TINY.model_copy(update={"bias": True}))
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias") and "ln_" not in n]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)


def test_forward_without_targets_returns_last_position_only():
    model = make_model().eval()
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    with torch.no_grad():
        logits, loss = model(idx)
        full, _ = model(idx, torch.zeros_like(idx))
    assert loss is None
    assert logits.shape == (3, 1, TINY.vocab_size)
    torch.testing.assert_close(logits[:, 0], full[:, -1])


def test_forward_longer_than_block_size_is_refused():
    model = make_model().eval()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros((1, TINY.block_size + 1), dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kv_cache_one_token_at_a_time_matches_full_forward(dtype):
    model = make_model(seed=3).to(dtype).eval()
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, TINY.vocab_size, (2, TINY.block_size), generator=g)
    cache = KVCache(TINY, batch_size=2, device="cpu", dtype=dtype)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        for t in range(TINY.block_size):
            cached, _ = model(idx[:, t : t + 1], cache=cache)
            full, _ = model(idx[:, : t + 1])
            assert cached.shape == (2, 1, TINY.vocab_size)
            assert torch.allclose(cached, full, atol=atol, rtol=0), f"position {t}"
    assert cache.length == TINY.block_size
    # The cache is full: one more position would go past block_size.
    with pytest.raises(ValueError, match="block_size"):
        model(idx[:, :1], cache=cache)


def test_kv_cache_prefill_then_single_steps_matches_full_forward():
    model = make_model(seed=5).double().eval()
    idx = torch.randint(0, TINY.vocab_size, (1, TINY.block_size), generator=torch.Generator().manual_seed(6))
    cache = KVCache(TINY, batch_size=1, device="cpu", dtype=torch.float64)
    with torch.no_grad():
        prefill, _ = model(idx[:, :7], cache=cache)
        assert torch.allclose(prefill, model(idx[:, :7])[0], atol=1e-12, rtol=0)
        for t in range(7, TINY.block_size):
            step, _ = model(idx[:, t : t + 1], cache=cache)
            assert torch.allclose(step, model(idx[:, : t + 1])[0], atol=1e-12, rtol=0)
        # A non-empty cache takes one position at a time.
        cache.reset()
        model(idx[:, :2], cache=cache)
        with pytest.raises(ValueError, match="one new position"):
            model(idx[:, 2:4], cache=cache)


@pytest.mark.parametrize("causal, new_positions", [(True, 16), (False, 16), (False, 1)])  # 1: a query against a cache
def test_attention_by_hand_equals_the_fused_kernel(causal, new_positions):
    k, v = torch.randn(2, 2, 4, 16, 8).unbind(0)  # (B, nh, S, hs) each
    q = torch.randn(2, 4, new_positions, 8)  # (B, nh, T, hs)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert torch.allclose(CausalSelfAttention._attention_by_hand(q, k, v, causal, 0.0), fused, atol=1e-6)


def test_cpu_autocast_runs_attention_by_hand_in_bfloat16(monkeypatch):
    """bfloat16 mixed precision on a CPU: the products and attention run in bfloat16, without the
    fused kernel (slow in bfloat16 on CPUs), and the gradients stay close to float32's."""
    calls = {"fused": 0, "by_hand": []}
    sdpa, baddbmm = torch.nn.functional.scaled_dot_product_attention, torch.baddbmm

    def fused_spy(*args, **kwargs):
        calls["fused"] += 1
        return sdpa(*args, **kwargs)

    def scores_spy(mask, q, k, **kwargs):
        calls["by_hand"].append((q.dtype, k.dtype))
        return baddbmm(mask, q, k, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", fused_spy)
    monkeypatch.setattr(torch, "baddbmm", scores_spy)
    idx, targets = torch.randint(0, TINY.vocab_size, (2, 2, TINY.block_size))
    reference = make_model(seed=5)
    _, loss = reference(idx, targets)
    loss.backward()
    assert calls == {"fused": TINY.n_layer, "by_hand": []}  # float32: the fused kernel
    calls["fused"] = 0
    model = make_model(seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, mixed_loss = model(idx, targets)
    mixed_loss.backward()
    assert logits.dtype == torch.bfloat16  # the LM head ran in bfloat16
    assert calls == {"fused": 0, "by_hand": [(torch.bfloat16, torch.bfloat16)] * TINY.n_layer}
    assert abs(mixed_loss.item() - loss.item()) < 0.05
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.grad.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cosine > 0.95, name


@pytest.mark.parametrize("switches", SWITCHES, ids=switch_id)
def test_every_switch_counts_caches_and_stores_as_it_should(switches):
    from tinygpt_cli.params import param_report

    config = ModelConfig(vocab_size=11, **{**TINY_MODEL, **switches})
    torch.manual_seed(5)
    model = GPT(config).double().eval()
    assert param_report(config).total == model.num_params()
    assert weight_shapes(config) == {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    idx = torch.randint(0, 11, (1, config.block_size))
    cache = KVCache(config, batch_size=1, device="cpu", dtype=torch.float64)
    with torch.no_grad():
        for t in range(config.block_size):
            cached, _ = model(idx[:, t : t + 1], cache=cache)
            full, _ = model(idx[:, : t + 1])
            assert torch.allclose(cached, full, atol=1e-12, rtol=0), f"position {t}"


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_keeps_1_minus_p_of_the_values_scaled_to_keep_the_mean(p, dtype):
    n = 2_000_003  # not a multiple of 4: one 64-bit draw serves four values, the last draw part used
    x = torch.ones(n, dtype=dtype)
    torch.manual_seed(0)
    y = dropout(x, p, training=True)
    kept = y != 0
    # The keep rate, over all values and for each of a draw's four 16-bit parts: 5 standard errors.
    for part in [kept, *(kept[i::4] for i in range(4))]:
        rate = part.double().mean().item()
        assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / part.numel()), rate
    # The kept values are scaled by 1/(1-p), as x's type holds it (F.dropout's own rounding in 16 bits).
    scale = torch.tensor(1 / (1 - p), dtype=dtype).item()
    assert torch.allclose(y[kept].double(), torch.tensor(scale, dtype=torch.float64), rtol=1e-4)
    assert abs(y.double().mean().item() - (1 - p) * scale) < 5 * math.sqrt(p / (1 - p) / n)  # the expected output: x
    # Neighbouring values are independent: kept together as often as chance says.
    both = (kept[:-1] & kept[1:]).double().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / n)


def test_cpu_dropout_draws_from_torchs_generator_and_is_off_outside_training():
    x = torch.randn(64, 33)
    torch.manual_seed(3)
    a = dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3, training=True), a)  # same seed, same mask: resume depends on it
    assert not torch.equal(dropout(x, 0.3, training=True), a)  # the generator moved on
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0, training=True) is x
    assert dropout(x, 1e-6, training=True) is x  # p under 2^-17: all kept (the threshold past int16's range)
    x.requires_grad_(True)
    torch.manual_seed(3)
    dropout(x, 0.3, training=True).sum().backward()
    # The gradient goes through the same mask and scale.
    assert torch.equal(x.grad != 0, a != 0) and torch.allclose(x.grad[a != 0], torch.tensor(1 / 0.7), rtol=1e-4)


@pytest.mark.parametrize("switches", SWITCHES[::3], ids=switch_id)
def test_the_step_products_are_the_matrix_products_a_training_step_runs(switches):
    """bench's peak times params.step_products: torch's FLOP counter over a real forward and
    backward (by-hand attention, as under CPU mixed precision or dropout) must find the same."""
    from torch.utils.flop_counter import FlopCounterMode

    from tinygpt_cli.params import param_report, step_products

    config = ModelConfig(vocab_size=11, **{**TINY_MODEL, **switches, "dropout": 0.1})
    batch = 3
    model = make_model(config).train()
    idx = torch.randint(0, 11, (batch, config.block_size))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        loss.backward()
    products = sum(p.count * p.flops for p in step_products(config, batch))
    assert products == counter.get_total_flops()
    tokens = batch * config.block_size
    assert products <= param_report(config).flops_per_token() * tokens < 1.05 * products  # 6N counts norms and biases too


@pytest.mark.parametrize("switches", SWITCHES[::3], ids=switch_id)
def test_a_model_built_to_load_is_the_same_model_once_its_weights_are_in(switches):
    config = ModelConfig(vocab_size=11, **{**TINY_MODEL, **switches})
    source = make_model(config).eval()
    torch.manual_seed(1)
    model = GPT(config, init=False).eval()
    model.load_state_dict(source.state_dict())
    assert model.lm_head.weight is model.tok_emb.weight  # still tied
    idx = torch.randint(0, 11, (2, config.block_size))
    with torch.no_grad():
        assert torch.equal(model(idx, idx)[1], source(idx, idx)[1])  # the rotary tables too
