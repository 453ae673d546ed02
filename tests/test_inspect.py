"""`params` (counted from the config, torch-free) and `eval` (every prediction of the val split)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ONE_THREAD_ENV, TINY_TEXT_CHARS, cli_env, make_text
from typer.testing import CliRunner

from tinygpt_cli.checkpoint import Checkpoint, load_model, model_weights, save_checkpoint
from tinygpt_cli.cli.app import app
from tinygpt_cli.config import PRESETS, ModelConfig, resolve_config
from tinygpt_cli.data.dataset import load_dataset
from tinygpt_cli.data.prepare import prepare_text
from tinygpt_cli.evaluate import score_split, score_sample, score_windows
from tinygpt_cli.model import GPT
from tinygpt_cli.params import param_report
from tinygpt_cli.data.tokenizer import byte_lengths

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BABY_TOTAL = 10_745_088


def numel(config: ModelConfig) -> int:
    return sum(p.numel() for p in GPT(config).parameters())


@pytest.mark.parametrize("shape", [
    dict(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=False),
    dict(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True),
    dict(vocab_size=7, block_size=5, n_layer=1, n_head=1, n_embd=8, bias=False),
    dict(vocab_size=300, block_size=64, n_layer=3, n_head=4, n_embd=48, bias=True),
    dict(vocab_size=1, block_size=1, n_layer=4, n_head=3, n_embd=12, bias=False),
])
def test_param_count_equals_the_built_model(shape):
    config = ModelConfig(**shape)
    report = param_report(config)
    assert report.total == numel(config)
    d = report.to_dict()
    assert d["without_position_embedding"] == report.total - config.block_size * config.n_embd
    assert d["blocks_total"] == report.block_total * config.n_layer
    assert d["weights_bytes_fp32"] == 4 * report.total


def test_baby_preset_has_10_745_088_parameters():
    config = resolve_config("baby", None, {}).model
    assert config.vocab_size == 65
    assert param_report(config).total == BABY_TOTAL
    assert numel(config) == BABY_TOTAL


def test_cli_params_json_is_torch_free():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "tinygpt_cli", "params", "--json"],
                            env=cli_env(), capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"] == BABY_TOTAL
    assert report["config"]["n_layer"] == PRESETS["baby"]["n_layer"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "tinygpt_cli.params" in imported  # the import log is really there
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}, "params imported torch"


def test_cli_params_flags_and_trained_run(tiny_run):
    runner = CliRunner()
    result = runner.invoke(app, ["params", "--json", "--n-layer", "3", "--n-embd", "96", "--n-head", "4"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["total"] == numel(ModelConfig(**d["config"]))
    assert (d["config"]["n_layer"], d["config"]["n_embd"]) == (3, 96)

    result = runner.invoke(app, ["params", "--json", "--run", str(tiny_run)])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    saved = json.loads((tiny_run / "config.json").read_text(encoding="utf-8"))["model"]
    assert d["config"] == saved
    model, _ = load_model(tiny_run / "best.safetensors")
    assert d["total"] == sum(p.numel() for p in model.parameters())

    table = runner.invoke(app, ["params", "--run", str(tiny_run)], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert f"{d['total']:,}" in table.stdout


# --- eval ------------------------------------------------------------------------------

def direct_mean_loss(model: GPT, tokens: np.ndarray) -> tuple[float, int]:
    """Every prediction of `tokens` once, window after window, summed with plain torch."""
    data = torch.from_numpy(tokens.astype(np.int64))
    T = model.config.block_size
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(data) - 1, T):
            x = data[s : min(s + T, len(data) - 1)]
            y = data[s + 1 : s + 1 + len(x)]
            logits, _ = model(x[None], y[None])
            total += F.cross_entropy(logits[0].double(), y, reduction="sum").item()
            count += len(y)
    return total / count, count


@pytest.mark.parametrize("block_size", [16, 24, 7])
def test_score_split_equals_a_direct_computation(tiny_dataset, block_size):
    dataset = load_dataset(tiny_dataset)
    torch.manual_seed(block_size)
    model = GPT(ModelConfig(vocab_size=dataset.tokenizer.size, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                            dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)  # losses far from ln(vocab): a wrong weighting would show
    score = score_split(model, dataset.val, byte_lengths(dataset.tokenizer))
    loss, count = direct_mean_loss(model.eval(), dataset.val)
    assert score.tokens == count == len(dataset.val) - 1
    assert abs(score.loss - loss) < 1e-5
    assert abs(loss - math.log(dataset.tokenizer.size)) > 0.1
    assert score.perplexity == pytest.approx(math.exp(score.loss))
    assert score.bits_per_token == pytest.approx(score.loss / math.log(2))
    # Characters of ASCII text are one byte each: bits per byte is bits per character.
    assert score.bytes == score.tokens and score.bits_per_byte == pytest.approx(score.bits_per_token)


def test_score_split_shorter_than_a_window(tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    model = GPT(ModelConfig(vocab_size=dataset.tokenizer.size, block_size=16, n_layer=1, n_head=1, n_embd=8))
    for n in (2, 9, 17):
        tokens = dataset.val[:n]
        score = score_split(model, tokens, byte_lengths(load_dataset(tiny_dataset).tokenizer))
        loss, count = direct_mean_loss(model.eval(), tokens)
        assert score.tokens == count == n - 1
        assert abs(score.loss - loss) < 1e-5


def test_score_windows_counts_each_window(tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    model = GPT(ModelConfig(vocab_size=dataset.tokenizer.size, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    starts = np.array([0, 3, 100])
    score = score_windows(model, dataset.val, byte_lengths(dataset.tokenizer), starts, 8, batch_size=2)
    data = torch.from_numpy(dataset.val.astype(np.int64))
    with torch.no_grad():
        losses = [model(data[s : s + 8][None], data[s + 1 : s + 9][None])[1].item() for s in starts]
    assert score.tokens == 24
    assert score.loss == pytest.approx(sum(losses) / 3, abs=1e-6)


def test_cli_eval_json_is_consistent(run_cli, tiny_run, tiny_dataset):
    result = run_cli("eval", "--run", tiny_run, "--json", env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr
    d = json.loads(result.stdout)
    val = d["val"]
    assert d["checkpoint"] == str(tiny_run / "best.safetensors")
    assert d["iteration"] == 30
    assert val["tokens"] == len(load_dataset(tiny_dataset).val) - 1
    assert val["perplexity"] == pytest.approx(math.exp(val["loss"]), rel=1e-9)
    assert val["bits_per_token"] == pytest.approx(val["loss"] / math.log(2), rel=1e-9)
    assert val["bits_per_byte"] == pytest.approx(val["loss"] * val["tokens"] / val["bytes"] / math.log(2), rel=1e-9)
    train = d["train_sample"]
    assert train["perplexity"] == pytest.approx(math.exp(train["loss"]), rel=1e-9)
    assert train["tokens"] == 128 * 16
    # The same number as scoring the checkpoint in this process.
    model, _ = load_model(tiny_run / "best.safetensors")
    assert val["loss"] == pytest.approx(score_split(model, load_dataset(tiny_dataset).val, byte_lengths(load_dataset(tiny_dataset).tokenizer)).loss, abs=1e-5)
    assert val["loss"] < math.log(model.config.vocab_size)


def test_cli_eval_max_tokens_scores_windows_spread_through_the_split(run_cli, tiny_run, tiny_dataset):
    proc = run_cli("eval", "--run", tiny_run, "--max-tokens", "160", "--json", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    val = json.loads(proc.stdout)["val"]
    model, ckpt = load_model(tiny_run / "best.safetensors")
    dataset = load_dataset(tiny_dataset)
    expected = score_sample(model, dataset.val, byte_lengths(dataset.tokenizer), 160 // 16)
    assert val["tokens"] == 160 and val["loss"] == pytest.approx(expected.loss, abs=1e-5)


def test_cli_eval_refuses_a_dataset_with_another_vocabulary(run_cli, tiny_run, tiny_dataset, tmp_path):
    text = make_text(TINY_TEXT_CHARS, seed=2024)
    assert "q" in text and "#" not in text
    source = tmp_path / "other.txt"
    source.write_text(text.replace("q", "#"), encoding="utf-8")
    prepare_text(source, tmp_path / "other", "other", 0.1)
    other, mine = load_dataset(tmp_path / "other"), load_dataset(tiny_dataset)
    assert other.tokenizer.size == mine.tokenizer.size and other.tokenizer != mine.tokenizer  # same size, other characters

    result = run_cli("eval", "--run", tiny_run, "--data-dir", tmp_path / "other", "--json", env=ONE_THREAD_ENV)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error:")
    assert "vocabulary" in result.stderr and "differs" in result.stderr
    assert "Try: pass the dataset the model was trained on with --data-dir" in result.stderr


def test_train_sample_of_a_split_no_longer_than_the_block(tiny_dataset):
    """Regression: a train split of at most block_size tokens was a ZeroDivisionError (or a numpy
    ValueError) in `tinygpt eval`; it is now scored whole."""
    dataset = load_dataset(tiny_dataset)
    model = GPT(ModelConfig(vocab_size=dataset.tokenizer.size, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    for n in (16, 10):
        score = score_sample(model, dataset.train[:n], byte_lengths(dataset.tokenizer))
        assert score.tokens == n - 1
        assert score.loss == pytest.approx(score_split(model, dataset.train[:n], byte_lengths(dataset.tokenizer)).loss)
    assert score_sample(model, dataset.train[:17], byte_lengths(dataset.tokenizer)).tokens == 16  # one full window fits


def test_cli_eval_with_splits_shorter_than_the_block(tmp_path):
    source = tmp_path / "short.txt"
    source.write_text(make_text(700, seed=5)[:600], encoding="utf-8")
    prepare_text(source, tmp_path / "short", "short", 0.5)
    dataset = load_dataset(tmp_path / "short")
    config = ModelConfig(vocab_size=dataset.tokenizer.size, block_size=len(dataset.train), n_layer=1, n_head=1, n_embd=8)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, Checkpoint("best", config, dataset.tokenizer, 0, model_weights(GPT(config)),
                                     train_config={"data_dir": str(tmp_path / "short")}))
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(path), "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["val"]["tokens"] == len(dataset.val) - 1
    assert d["train_sample"]["tokens"] == len(dataset.train) - 1


def test_params_of_a_foreign_safetensors_file_is_one_error_line(run_cli, tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": '"other-tool"'})
    result = run_cli("params", "--checkpoint", foreign)
    assert result.returncode == 1
    assert result.stderr.startswith("Error:") and "not a tinygpt checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("columns", ["80", "66"])
def test_params_at_a_narrow_width_keeps_every_count_whole(run_cli, columns):
    proc = run_cli("params", env={"COLUMNS": columns})
    report = json.loads(run_cli("params", "--json").stdout)
    assert proc.returncode == 0, proc.stderr
    assert all(len(line) <= int(columns) for line in proc.stdout.splitlines() if line.startswith(("│", "┃")))
    for row in report["embedding"] + report["block"]:
        assert f"{row['count']:,}" in proc.stdout
    assert f"{report['total']:,}" in proc.stdout and "…" not in proc.stdout
    text = " ".join(proc.stdout.split())
    for row in report["embedding"] + report["block"] + report["head"]:  # the notes, the lesson, are never dropped
        assert not row["note"] or row["note"] in text, row


def test_scoring_a_split_reports_progress_window_by_window(tiny_dataset):
    from tinygpt_cli.evaluate import split_windows

    tokens = load_dataset(tiny_dataset).val
    model = GPT(ModelConfig(vocab_size=load_dataset(tiny_dataset).tokenizer.size, block_size=7, n_layer=1, n_head=2, n_embd=16))
    seen: list[int] = []
    with_progress = score_split(model, tokens, byte_lengths(load_dataset(tiny_dataset).tokenizer), progress=seen.append)
    assert sum(seen) == split_windows(model, tokens) and len(seen) > 1
    assert with_progress == score_split(model, tokens, byte_lengths(load_dataset(tiny_dataset).tokenizer))
