"""attention, predict, surprise and embeddings: the numbers are the model's own, and the
pictures are valid files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from conftest import ONE_THREAD_ENV, SWITCHES, TINY_MODEL, assert_error_output, switch_id, tiny_config

from tinygpt_cli.config import ModelConfig
from tinygpt_cli.data.dataset import load_dataset
from tinygpt_cli.evaluate import score_split
from tinygpt_cli.inside.measure import attention, pca, predict, surprise
from tinygpt_cli.lifecycle import train_new
from tinygpt_cli.model import GPT
from tinygpt_cli.sampling import generate
from tinygpt_cli.data.tokenizer import byte_lengths

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("switches", SWITCHES, ids=switch_id)
def test_attention_rows_sum_to_one_see_only_the_past_and_leave_the_output_unchanged(switches):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**TINY_MODEL, "vocab_size": 30, **switches})).eval()
    ids = torch.randint(0, 30, (1, 12))
    with torch.no_grad():
        plain, _ = model(ids, ids)
        with model.attention_maps() as maps:
            recorded, _ = model(ids, ids)
    weights = attention(model, ids[0].tolist())
    assert weights.shape == (TINY_MODEL["n_layer"], TINY_MODEL["n_head"], 12, 12) and len(maps) == TINY_MODEL["n_layer"]
    assert np.allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
    assert (weights[..., np.triu_indices(12, 1)[0], np.triu_indices(12, 1)[1]] == 0).all()
    torch.testing.assert_close(recorded, plain, rtol=1e-5, atol=1e-5)  # the same attention, by hand
    assert all(block.attn.recorded is None for block in model.blocks)  # nothing recorded any more


@pytest.mark.parametrize("settings", [dict(temperature=1.0, top_k=None, top_p=None), dict(temperature=0.7, top_k=5, top_p=None),
                                      dict(temperature=1.3, top_k=None, top_p=0.8)])
def test_predict_is_the_distribution_generate_draws_from(trained, settings):
    model, ckpt = trained
    prompt = ckpt.tokenizer.encode("The ")
    shaped, raw = predict(model, prompt, **settings)
    assert shaped.sum() == pytest.approx(1.0, abs=1e-5) and raw.sum() == pytest.approx(1.0, abs=1e-5)
    draws = 3000
    counts = np.bincount([next(generate(model, prompt, 1, seed=seed, **settings)) for seed in range(draws)], minlength=len(shaped))
    assert np.abs(counts / draws - shaped).max() < 0.03  # 3000 seeded draws: within sampling noise
    assert (counts[shaped == 0] == 0).all()  # what top-k or top-p removed is never drawn


def test_surprise_averages_to_evals_loss_on_the_same_text(trained, tiny_dataset):
    model, ckpt = trained
    val = load_dataset(tiny_dataset).val
    text = ckpt.tokenizer.decode(val.tolist())
    result = surprise(model, ckpt.tokenizer, text)
    score = score_split(model, val, byte_lengths(ckpt.tokenizer))
    assert len(result.losses) == score.tokens and result.bytes == score.bytes
    assert result.loss == pytest.approx(score.loss, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(score.bits_per_byte, rel=1e-5)


def test_the_pca_of_a_known_embedding_gives_its_axes():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    a, b = 5 * np.cos(t), np.sin(t)  # centred, uncorrelated, variance 25 against 1
    axes = np.linalg.qr(rng.normal(size=(16, 16)))[0][:, :2]  # orthonormal, in 16 dimensions
    coords, explained = pca(np.outer(a, axes[:, 0]) + np.outer(b, axes[:, 1]) + 3.0)
    for found, true in ((coords[:, 0], a), (coords[:, 1], b)):
        assert np.allclose(np.abs(found), np.abs(true), atol=1e-9)  # the known axes, up to their sign
    assert explained == pytest.approx([25 / 26, 1 / 26])


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cli_attention_png_terminal_and_json(run_cli, tiny_run, tmp_path):
    proc = run_cli("attention", "--run", tiny_run, "--prompt", "The king", "--png", "att.png", "--json", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["tokens"]) == 8 and np.array(result["weights"]).shape == (2, 2, 8, 8)
    width, height = png_size(tmp_path / "att.png")
    assert (width, height) == (round((2.0 * 2 + 1) * 110), round((2.0 * 2 + 0.5) * 110))  # figure inches x 110 dpi
    terminal = run_cli("attention", "--run", tiny_run, "--prompt", "The king", "--layer", "1", "--head", "1", env=ONE_THREAD_ENV)
    assert terminal.returncode == 0 and "layer 1, head 1" in terminal.stdout


def test_the_terminal_heatmap_shows_the_last_tokens_that_fit_and_cuts_no_cell(run_cli, tiny_run):
    proc = run_cli("attention", "--run", tiny_run, "--prompt", "The king is dead", env={**ONE_THREAD_ENV, "COLUMNS": "30"})
    assert proc.returncode == 0, proc.stderr
    assert "the last 8 of 16 tokens" in proc.stdout and "…" not in proc.stdout
    assert " 8 ␣ " in proc.stdout and "15 d " in proc.stdout and " 7 g " not in proc.stdout  # rows 8 to 15, not row 7


def test_cli_predict_surprise_and_embeddings(run_cli, tiny_run, tmp_path):
    proc = run_cli("predict", "--run", tiny_run, "--prompt", "The", "--top-k", "3", "--json", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    candidates = json.loads(proc.stdout)["candidates"]
    assert sum(c["probability"] for c in candidates) == pytest.approx(1.0, abs=1e-5)  # top-k 3: all in the 10 listed
    proc = run_cli("surprise", "--run", tiny_run, "The king is dead.", "--html", "s.html", "--json", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["losses"][0] is None and len(result["losses"]) == len("The king is dead.")
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.count("<span") == len("The king is dead.")
    proc = run_cli("embeddings", "--run", tiny_run, "--png", "emb.png", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    assert png_size(tmp_path / "emb.png") == (8 * 110, 7 * 110)  # rotary positions (the cpu preset): the map alone


@pytest.mark.parametrize("args, code, words", [
    (["attention", "--prompt", ""], 2, "the prompt is empty"),
    (["predict", "--prompt", "The \u2603"], 2, "not in the vocabulary"),
    (["attention", "--prompt", "The", "--layer", "7"], 2, "has 2 layers"),
])
def test_bad_prompts_and_layers_are_one_error_line(run_cli, tiny_run, args, code, words):
    proc = run_cli(*args, "--run", tiny_run, env=ONE_THREAD_ENV)
    assert proc.returncode == code
    assert_error_output(proc.stderr, words)


@pytest.mark.parametrize("args", [["surprise", "The king.", "--html", "afile/s.html"], ["embeddings", "--png", "afile/e.png"]])
def test_an_output_path_that_cannot_be_written_is_one_error_line(run_cli, tiny_run, tmp_path, args):
    (tmp_path / "afile").write_text("in the way\n")
    proc = run_cli(*args, "--run", tiny_run, env=ONE_THREAD_ENV)
    assert proc.returncode == 1
    assert_error_output(proc.stderr, "cannot write afile/", hint="a folder you can write to")
    assert (tmp_path / "afile").read_text() == "in the way\n"


def test_a_prompt_longer_than_the_context_keeps_its_end(run_cli, tiny_run):
    proc = run_cli("predict", "--run", tiny_run, "--prompt", "The king " * 10, env=ONE_THREAD_ENV)
    assert proc.returncode == 0 and "its first 74 tokens are left out" in proc.stderr


def test_without_matplotlib_a_png_is_one_error_line_and_the_terminal_still_works(run_cli, tiny_run, tmp_path):
    (tmp_path / "blocked" / "matplotlib").mkdir(parents=True)
    (tmp_path / "blocked" / "matplotlib" / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = {**ONE_THREAD_ENV, "PYTHONPATH": str(tmp_path / "blocked")}
    proc = run_cli("embeddings", "--run", tiny_run, "--png", "emb.png", env=env)
    assert proc.returncode == 1
    assert_error_output(proc.stderr, "matplotlib is not installed", hint="pip install 'tinygpt[plot]'")
    assert run_cli("embeddings", "--run", tiny_run, env=env).returncode == 0


def test_the_commands_read_a_bpe_run(run_cli, tmp_path):
    from conftest import make_text

    from tinygpt_cli.data.prepare import prepare_text
    from tinygpt_cli.interop.pretrained import tokenizer_choice

    source = tmp_path / "corpus.txt"
    source.write_text(make_text(20_000, seed=4), encoding="utf-8")
    prepare_text(source, tmp_path / "data", "c", 0.1, tokenizer_choice("bpe", 300))
    train_new(tiny_config(tmp_path / "data", max_iters=10), tmp_path / "run")
    shown = {}
    for args in (["attention", "--prompt", "The king", "--json"], ["predict", "--prompt", "The king", "--json"],
                 ["surprise", "The king is dead.", "--json"], ["embeddings", "--json"]):
        proc = run_cli(*args, "--run", tmp_path / "run", env=ONE_THREAD_ENV)
        assert proc.returncode == 0, (args, proc.stderr)
        shown[args[0]] = json.loads(proc.stdout)
    assert "".join(shown["attention"]["tokens"]).replace("␣", " ") == "The king"  # BPE tokens, not characters
    assert len(shown["attention"]["tokens"]) < len("The king")
    candidates = shown["predict"]["candidates"]
    model_p = [c["model_probability"] for c in candidates]
    assert len({c["id"] for c in candidates}) == 10 and model_p == sorted(model_p, reverse=True) and 0 < sum(model_p) <= 1
    assert "".join(shown["surprise"]["tokens"]) == "The king is dead." and shown["surprise"]["bits_per_byte"] > 0
    assert len(shown["embeddings"]["tokens"]) == len(shown["embeddings"]["coordinates"]) == 300


def test_a_map_of_thousands_of_tokens_labels_the_most_frequent_and_tells_the_untrained_apart():
    """A 4,096-token BPE labelled token by token is one black blot; its byte tokens that the text
    never holds form a cluster that nothing explained."""
    pytest.importorskip("matplotlib")
    import tinygpt_cli.inside.pictures as pictures

    rng = np.random.default_rng(0)
    n = 4096
    counts = rng.integers(1, 1000, n)
    counts[:200] = 0  # never in the text
    counts[300] = 10**6  # the most frequent of all
    labels = [f"t{i}" for i in range(n)]
    ax = pictures.embedding_map(rng.normal(size=(n, 2)), np.array([0.3, 0.2]), labels, None, counts).figure.axes[0]
    annotated = [t.get_text() for t in ax.texts]
    assert len(annotated) == pictures.MAP_LABELS and "t300" in annotated
    assert not {f"t{i}" for i in range(200)} & set(annotated)  # an untrained token is never among the most frequent
    assert "the 150 most frequent of 4,096 labelled" in ax.get_title()
    assert any("never in the training text (200 tokens" in t.get_text() for t in ax.get_legend().get_texts())
