"""Sampling: seeds, the KV cache against full recomputation, top-k / top-p, and `tinygpt generate`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import ONE_THREAD_ENV, TINY_MODEL, hint

from tinygpt_cli.config import ModelConfig
from tinygpt_cli.errors import UsageError
from tinygpt_cli.model import GPT, KVCache
import tinygpt_cli.sampling as sampling_module
from tinygpt_cli.sampling import (SamplingLinear, NonFiniteLogits, block_matrix_bytes, generate, in_reduced_precision,
                                  sample_next, set_sampling_precision, top_k_filter, top_p_filter, window_start)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CONFIG = ModelConfig(vocab_size=40, **TINY_MODEL)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(11)
    m = GPT(CONFIG)
    with torch.no_grad():  # larger weights than the init: decisive logits, varied greedy text
        for p in m.parameters():
            p.mul_(8.0)
    return m.eval()


def ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, CONFIG.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_same_seed_same_tokens_different_seed_different_tokens(model):
    prompt = ids(5)
    a = list(generate(model, prompt, 40, temperature=1.0, seed=7))
    b = list(generate(model, prompt, 40, temperature=1.0, seed=7))
    c = list(generate(model, prompt, 40, temperature=1.0, seed=8))
    assert len(a) == 40 and all(0 <= t < CONFIG.vocab_size for t in a)
    assert a == b
    assert a != c
    # The seed is independent of the global RNG state.
    torch.manual_seed(123)
    assert list(generate(model, prompt, 40, temperature=1.0, seed=7)) == a


def test_sampling_does_not_touch_the_global_rng(model):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    list(generate(model, ids(3), 10, temperature=1.0, seed=1))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("prompt_len", [1, 5, 16, 40])
def test_greedy_with_kv_cache_equals_full_recomputation(model, dtype, prompt_len):
    m = GPT(CONFIG)
    m.load_state_dict(model.state_dict())
    m = m.to(dtype).eval()
    prompt = ids(prompt_len, seed=prompt_len)
    with_cache = list(generate(m, prompt, 60, temperature=0, kv_cache=True))
    without = list(generate(m, prompt, 60, temperature=0, kv_cache=False))
    assert len(with_cache) == 60
    assert with_cache == without
    assert len(set(with_cache)) > 3  # a real sequence, not one token repeated


def test_kv_cache_path_matches_recomputation_when_sampling(model):
    m = GPT(CONFIG)
    m.load_state_dict(model.state_dict())
    m = m.double().eval()
    prompt = ids(9, seed=3)
    a = list(generate(m, prompt, 50, temperature=1.0, top_k=10, seed=4, kv_cache=True))
    b = list(generate(m, prompt, 50, temperature=1.0, top_k=10, seed=4, kv_cache=False))
    assert a == b


def test_greedy_follows_the_argmax_of_the_model_window(model):
    """Greedy tokens are the argmax of the model over the window `window_start` describes."""
    m = GPT(CONFIG)
    m.load_state_dict(model.state_dict())
    m = m.double().eval()
    context = ids(7, seed=9)
    tokens = list(generate(m, context, 30, temperature=0, kv_cache=True))
    start = 0
    with torch.no_grad():
        for token in tokens:
            start = window_start(len(context), start, CONFIG.block_size)
            assert len(context) - start <= CONFIG.block_size
            logits, _ = m(torch.tensor([context[start:]]))
            assert token == int(logits[0, -1].argmax())
            context.append(token)


def test_window_start_keeps_the_last_half_when_full():
    assert window_start(10, 0, 16) == 0
    assert window_start(16, 0, 16) == 0
    assert window_start(17, 0, 16) == 9  # the window jumps: keep the last 8 positions
    assert window_start(20, 9, 16) == 9
    assert window_start(26, 9, 16) == 18


def test_top_k_one_equals_greedy(model):
    prompt = ids(4, seed=1)
    greedy = list(generate(model, prompt, 40, temperature=0))
    for seed in (1, 2):
        assert list(generate(model, prompt, 40, temperature=1.3, top_k=1, seed=seed)) == greedy


def test_top_k_filter_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]
    assert torch.isfinite(top_k_filter(logits, 99)).all()


def _kept(probs: list[float], p: float, order: list[int] | None = None) -> set[int]:
    """Indices (in the original order) that survive top-p on logits of the given probabilities."""
    logits = torch.tensor(probs).log()
    if order is not None:
        logits = logits[order]
        kept = torch.isfinite(top_p_filter(logits[None], p))[0]
        return {order[i] for i in range(len(order)) if kept[i]}
    return {i for i, k in enumerate(torch.isfinite(top_p_filter(logits[None], p))[0]) if k}


@pytest.mark.parametrize("p, expected", [(0.3, {0}), (0.5, {0}), (0.51, {0, 1}), (0.8, {0, 1}),
                                         (0.81, {0, 1, 2}), (0.96, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    probs = [0.5, 0.3, 0.15, 0.05]
    assert _kept(probs, p) == expected
    # The order of the logits does not matter.
    assert _kept(probs, p, order=[3, 1, 0, 2]) == expected


def test_top_p_zero_keeps_the_top_token(model):
    """Regression: p = 0 (allowed by --top-p) dropped every token, and sampling crashed on NaNs."""
    assert _kept([0.5, 0.3, 0.15, 0.05], 0.0) == {0}
    assert _kept([0.5, 0.3, 0.15, 0.05], 0.0, order=[2, 3, 0, 1]) == {0}
    prompt = ids(4, seed=2)
    greedy = list(generate(model, prompt, 30, temperature=0))
    assert list(generate(model, prompt, 30, temperature=1.0, top_p=0.0, seed=1)) == greedy


def test_top_p_per_row_and_logit_values_unchanged():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
    filtered = top_p_filter(probs.log(), 0.6)
    assert torch.isfinite(filtered).tolist() == [[True, True, False, False], [False, False, True, True]]
    kept = torch.isfinite(filtered)
    assert torch.equal(filtered[kept], probs.log()[kept])


def test_sample_next_never_draws_filtered_tokens():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().repeat(500, 1)
    gen = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, 1.0, None, 0.8, gen)
    assert set(drawn.tolist()) == {0, 1}
    drawn = sample_next(logits, 1.0, 3, None, gen)
    assert set(drawn.tolist()) == {0, 1, 2}
    assert sample_next(logits[:2], 0, None, None, gen).tolist() == [0, 0]  # greedy


def copy_of(model: GPT) -> GPT:
    m = GPT(model.config)
    m.load_state_dict(model.state_dict())
    return m.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_half_weight_linear_computes_with_the_rounded_weights(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 48, bias=bias)
    half = SamplingLinear(linear, torch.float16)
    rounded_w = linear.weight.detach().half().float()
    rounded_b = None if not bias else linear.bias.detach().half().float()
    assert half.weight.dtype == torch.float16 and not half.weight.requires_grad
    many = torch.randn(2, 5, 32)  # several positions: weights upcast, float32 arithmetic
    out = half(many)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.nn.functional.linear(many, rounded_w, rounded_b))
    assert not torch.equal(out, linear(many))  # the weights really were rounded
    one = torch.randn(1, 1, 32)  # one position: the float16 product, back to float32
    out = half(one)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 48)
    expected = torch.nn.functional.linear(one.half().float(), rounded_w, rounded_b)
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)


def test_sampling_precision_auto_on_cpu_keeps_float32_matrices_that_fit_the_cache(model, monkeypatch):
    monkeypatch.setattr(sampling_module, "last_level_cache_bytes", lambda: block_matrix_bytes(model) + 1)
    m = copy_of(model)
    assert set_sampling_precision(m, "auto") == torch.float32
    assert not in_reduced_precision(m)


def test_sampling_precision_auto_on_cpu_stores_block_matrices_in_float16_past_the_cache(model, monkeypatch):
    monkeypatch.setattr(sampling_module, "last_level_cache_bytes", lambda: block_matrix_bytes(model) - 1)
    reference = copy_of(model)
    m = copy_of(model)
    assert set_sampling_precision(m, "auto") == torch.float16
    half = [mod for mod in m.modules() if isinstance(mod, SamplingLinear)]
    assert len(half) == 4 * CONFIG.n_layer  # qkv, proj, up, down of every block
    assert not any(isinstance(mod, torch.nn.Linear) for mod in m.blocks.modules())
    assert m.tok_emb.weight.dtype == torch.float32 and m.lm_head.weight is m.tok_emb.weight
    prompt = torch.tensor([ids(12, seed=4)])
    with torch.no_grad():
        expected, _ = reference(prompt)
        got, _ = m(prompt)
    torch.testing.assert_close(got, expected, rtol=0, atol=0.02 * float(expected.abs().max()))
    assert not torch.equal(got, expected)
    tokens = list(generate(m, ids(5), 30, temperature=1.0, seed=2))
    assert len(tokens) == 30 and all(0 <= t < CONFIG.vocab_size for t in tokens)


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_sampling_precision_by_name(model, name, dtype):
    m = copy_of(model)
    assert set_sampling_precision(m, name) == dtype
    linears = [mod for mod in m.blocks.modules() if isinstance(mod, (torch.nn.Linear, SamplingLinear))]
    assert {mod.weight.dtype for mod in linears} == {dtype}
    if name == "float32":  # untouched: exactly the checkpoint's text
        prompt = ids(5)
        assert list(generate(m, prompt, 30, temperature=1.0, seed=3)) == list(generate(model, prompt, 30, temperature=1.0, seed=3))


def test_sampling_precision_one_position_path_stays_close_to_float32(model):
    """The cached path (one position, float16 products) scores like the float32 model."""
    reference, m = copy_of(model), copy_of(model)
    set_sampling_precision(m, "float16")
    prompt = ids(8, seed=6)
    caches = [KVCache(CONFIG, 1, "cpu", torch.float32) for _ in range(2)]
    with torch.no_grad():
        for net, cache in zip((reference, m), caches):
            net(torch.tensor([prompt[:-1]]), cache=cache)  # prefill
        expected, _ = reference(torch.tensor([prompt[-1:]]), cache=caches[0])
        got, _ = m(torch.tensor([prompt[-1:]]), cache=caches[1])
    torch.testing.assert_close(got, expected, rtol=0, atol=0.02 * float(expected.abs().max()))
    assert not torch.equal(got, expected)


def test_sampling_precision_is_set_once(model):
    m = copy_of(model)
    set_sampling_precision(m, "float16")
    with pytest.raises(ValueError, match="load it again"):
        set_sampling_precision(m, "float32")


def test_sampling_precision_unknown_name(model):
    with pytest.raises(UsageError, match="float64"):
        set_sampling_precision(copy_of(model), "float64")


def test_overflow_in_float16_weights_is_an_error_with_a_way_out(model):
    m = copy_of(model)
    with torch.no_grad():
        m.blocks[0].mlp.up.weight[0, 0] = 1e6  # finite in float32, inf in float16
    assert len(list(generate(copy_of(m), ids(3), 5, temperature=0))) == 5  # float32: fine
    set_sampling_precision(m, "float16")
    with pytest.raises(NonFiniteLogits) as error:
        list(generate(m, ids(3), 5, temperature=0))
    assert "overflowed in 16-bit" in error.value.message and "--dtype float32" in hint(error.value)


def test_non_finite_scores_in_float32_point_at_the_weights(model):
    m = copy_of(model)
    with torch.no_grad():
        m.blocks[0].mlp.up.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLogits) as error:
        list(generate(m, ids(3), 5, temperature=0))
    assert "weights are broken" in error.value.message
    assert "--dtype" not in hint(error.value) and "--learning-rate" in hint(error.value)


def test_generate_needs_a_prompt(model):
    with pytest.raises(ValueError):
        list(generate(model, [], 5))
    assert list(generate(model, ids(3), 0)) == []


# --- tinygpt generate -------------------------------------------------------------------

def test_cli_generate_prints_prompt_then_new_characters_reproducibly(run_cli, tiny_run, trained):
    model, ckpt = trained
    auto_model = copy_of(model)
    set_sampling_precision(auto_model, "auto")
    args = ("generate", "--run", tiny_run, "--prompt", "The king", "--max-new-tokens", "25", "--seed", "3",
            "--num-samples", "2")
    first = run_cli(*args, env=ONE_THREAD_ENV)
    second = run_cli(*args, env=ONE_THREAD_ENV)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # same seed, same text
    samples = first.stdout.split("\n---------- sample 2 ----------\n")
    assert len(samples) == 2
    for i, sample in enumerate(samples):
        assert sample.endswith("\n")
        text = sample[:-1]
        assert text.startswith("The king")
        assert len(text) == len("The king") + 25
        assert set(text) <= set(ckpt.tokenizer.chars)
        # The CLI's text is the engine's output decoded, in the default precision: sample i uses seed + i.
        expected = ckpt.tokenizer.decode(generate(auto_model, ckpt.tokenizer.encode("The king"), 25, temperature=0.8, seed=3 + i))
        assert text == "The king" + expected


def test_cli_generate_float32_is_exactly_the_checkpoints_model(run_cli, tiny_run, trained):
    model, ckpt = trained
    result = run_cli("generate", "--run", tiny_run, "--prompt", "The", "--max-new-tokens", "40", "--seed", "5",
                     "--dtype", "float32", env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The" + ckpt.tokenizer.decode(generate(model, ckpt.tokenizer.encode("The"), 40, temperature=0.8, seed=5)) + "\n"


def test_cli_generate_empty_prompt_starts_from_a_newline(run_cli, tiny_run):
    result = run_cli("generate", "--run", tiny_run, "--prompt", "", "--max-new-tokens", "12", "--seed", "1",
                     "--temperature", "0", env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("\n")
    assert len(result.stdout) == 1 + 12 + 1


def test_cli_generate_unknown_prompt_character(run_cli, tiny_run):
    result = run_cli("generate", "--run", tiny_run, "--prompt", "king€ Ω", "--max-new-tokens", "5", env=ONE_THREAD_ENV)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error:")
    assert "2 character(s) not in the vocabulary" in result.stderr
    assert "'€'" in result.stderr and "'Ω'" in result.stderr
    assert "Try:" in result.stderr


def test_trained_run_beats_a_uniform_guess(trained):
    """A sanity check of the fixture the CLI tests sample from: it learned something."""
    model, ckpt = trained
    assert ckpt.iteration == 30
    assert ckpt.best_val_loss is not None and ckpt.best_val_loss < math.log(ckpt.tokenizer.size)


def test_cli_generate_json_holds_the_same_samples_as_the_stream(run_cli, tiny_run):
    args = ("generate", "--run", tiny_run, "--prompt", "The", "--max-new-tokens", "20", "--seed", "4", "--num-samples", "2")
    streamed = run_cli(*args, env=ONE_THREAD_ENV)
    as_json = run_cli(*args, "--json", env=ONE_THREAD_ENV)
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["prompt"] == "The" and result["settings"]["seed"] == 4 and result["settings"]["max_new_tokens"] == 20
    assert streamed.stdout == "The" + result["samples"][0] + "\n\n---------- sample 2 ----------\nThe" + result["samples"][1] + "\n"


@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_a_batch_of_rows_steps_each_row_exactly_as_it_would_step_alone(model, pos_embedding, precision):
    """What a server batching requests relies on: every bit of each row's scores equals that row's
    scores alone, through prompts, single steps and the window's jumps (40 steps past a 16-window)."""
    from tinygpt_cli.sampling import Decoder, set_batch_exact

    config = CONFIG.model_copy(update={"pos_embedding": pos_embedding})
    torch.manual_seed(3)
    m = GPT(config).eval()
    set_sampling_precision(m, precision)
    set_batch_exact(m)
    prompts = [ids(6, seed) for seed in range(5)]
    batch = Decoder(m, prompts, 40)
    alone = [Decoder(m, [p], 40) for p in prompts]
    with torch.inference_mode():
        for step in range(40):
            scores = batch.scores()
            for row, decoder in enumerate(alone):
                assert torch.equal(scores[row], decoder.scores()[0]), f"row {row}, step {step}"
            tokens = scores.argmax(dim=-1)
            batch.append(tokens)
            for row, decoder in enumerate(alone):
                decoder.append(tokens[row : row + 1])
            if step == 20:  # a row finishes: the others go on unchanged
                batch.keep([0, 2, 3, 4])
                alone.pop(1)
