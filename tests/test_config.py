"""Configuration: every validation rule, the precedence of its sources, and readable errors."""

from __future__ import annotations

import pytest
import torch
from conftest import ONE_THREAD_ENV
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tinygpt_cli.config import (
    PRESETS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    build_config,
    check_against_data,
    read_config_file,
    resolve_config,
)
from tinygpt_cli.errors import ConfigError, UsageError
from tinygpt_cli.model import GPT

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def problems_of(values: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(values)
    assert info.value.problems, "a ConfigError lists at least one problem"
    assert info.value.exit_code == 2
    return info.value.problems


# --- single rules ----------------------------------------------------------------------

def test_defaults_are_valid_and_match_the_baby_preset_shape():
    config = build_config({})
    assert config.model == ModelConfig()
    assert config.train == TrainConfig()
    assert (config.model.n_layer, config.model.n_head, config.model.n_embd) == (6, 6, 384)


def test_n_embd_must_divide_by_n_head():
    problems = problems_of({"n_embd": 100, "n_head": 3})
    assert len(problems) == 1
    assert "n_embd (100)" in problems[0] and "n_head (3)" in problems[0]
    build_config({"n_embd": 96, "n_head": 3})  # divisible: fine


@pytest.mark.parametrize("field", ["vocab_size", "block_size", "n_layer", "n_head", "n_embd",
                                   "batch_size", "grad_accum", "max_iters", "eval_iters"])
@pytest.mark.parametrize("value", [0, -3])
def test_sizes_must_be_positive(field, value):
    problems = problems_of({field: value})
    flag = "--" + field.replace("_", "-")
    assert any(p.startswith(flag + ":") and f"got {value}" in p for p in problems), problems


def test_vocab_size_is_capped_at_uint16():
    assert any(p.startswith("--vocab-size:") for p in problems_of({"vocab_size": 2**20 + 1}))
    build_config({"vocab_size": 2**20})  # a BPE's ids past uint16 are stored as uint32


@pytest.mark.parametrize("dropout", [-0.01, 1.0, 1.5])
def test_dropout_out_of_range(dropout):
    problems = problems_of({"dropout": dropout})
    assert any(p.startswith("--dropout:") for p in problems), problems


@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.999])
def test_dropout_in_range(dropout):
    assert build_config({"dropout": dropout}).model.dropout == dropout


def test_min_lr_must_not_exceed_learning_rate():
    problems = problems_of({"learning_rate": 1e-3, "min_lr": 2e-3})
    assert any("min_lr" in p and "learning_rate" in p for p in problems), problems
    assert build_config({"learning_rate": 1e-3, "min_lr": 1e-3}).train.min_lr == 1e-3  # equal is fine


@pytest.mark.parametrize("warmup", [100, 101, 500])
def test_warmup_must_be_shorter_than_training(warmup):
    problems = problems_of({"max_iters": 100, "warmup_iters": warmup})
    assert any("warmup_iters" in p and "max_iters (100)" in p for p in problems), problems


def test_warmup_just_below_max_iters_is_fine():
    assert build_config({"max_iters": 100, "warmup_iters": 99}).train.warmup_iters == 99


def test_eval_interval_at_least_one():
    assert any(p.startswith("--eval-interval:") for p in problems_of({"eval_interval": 0}))
    assert build_config({"eval_interval": 1}).train.eval_interval == 1


def test_both_cross_field_rules_are_reported_together():
    problems = problems_of({"learning_rate": 1e-4, "min_lr": 1e-3, "max_iters": 10, "warmup_iters": 10})
    assert len(problems) == 2


def test_model_and_train_problems_are_reported_together():
    problems = problems_of({"n_layer": 0, "n_embd": 10, "n_head": 4, "batch_size": -1, "lr_decay": "exp"})
    text = "\n".join(problems)
    for flag in ("--n-layer", "--batch-size", "--lr-decay"):
        assert flag in text


def test_choices_are_enforced():
    assert any(p.startswith("--device:") for p in problems_of({"device": "tpu"}))
    assert any(p.startswith("--dtype:") for p in problems_of({"dtype": "float64"}))


def test_extra_fields_are_forbidden():
    with pytest.raises(ValidationError, match="n_layers"):
        ModelConfig(n_layers=3)
    with pytest.raises(ValidationError, match="lr"):
        TrainConfig(lr=0.1)
    good = build_config({}).model_dump()
    with pytest.raises(ValidationError):
        RunConfig(**good, extra={})
    with pytest.raises(ValidationError):
        RunConfig(model={**good["model"], "colour": "red"}, train=good["train"])


def test_configs_are_frozen():
    config = build_config({})
    with pytest.raises(ValidationError):
        config.model.n_layer = 3


def test_block_size_must_fit_each_split():
    config = build_config({"block_size": 100, "vocab_size": 40})
    check_against_data(config, train_tokens=1000, val_tokens=101, vocab_size=40)  # fits
    for val_tokens in (100, 50):
        with pytest.raises(ConfigError) as info:
            check_against_data(config, train_tokens=1000, val_tokens=val_tokens, vocab_size=40)
        assert len(info.value.problems) == 1
        assert info.value.problems[0].startswith("--block-size: 100")
    with pytest.raises(ConfigError, match="--block-size"):
        check_against_data(config, train_tokens=100, val_tokens=1000, vocab_size=40)


def test_vocab_size_must_match_the_data():
    config = build_config({"block_size": 8, "vocab_size": 40})
    with pytest.raises(ConfigError) as info:
        check_against_data(config, 1000, 1000, vocab_size=41)
    assert info.value.problems == ["--vocab-size: 40 does not match the dataset's 41 tokens"]


# --- precedence: flag > config file > preset > default ---------------------------------

def test_precedence_flag_over_file_over_preset_over_default(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('n_layer = 3\nlearning_rate = 5e-4\n[train]\nbatch_size = 7\n', encoding="utf-8")
    config = resolve_config("cpu", path, {"n_layer": 5, "n_head": None, "seed": 9})
    assert config.model.n_layer == 5  # flag beats file and preset
    assert config.train.seed == 9  # flag beats default
    assert config.train.learning_rate == 5e-4  # file beats preset
    assert config.train.batch_size == 7  # file ([train] section) beats preset
    assert config.model.n_embd == PRESETS["cpu"]["n_embd"] == 128  # preset beats default
    assert config.model.n_head == 4  # a flag of None was not given: the preset's value stays
    assert config.train.grad_accum == TrainConfig.model_fields["grad_accum"].default  # default


def test_preset_named_in_the_file_and_flag_preset_wins(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "cpu"\n[model]\nn_embd = 96\n', encoding="utf-8")
    from_file = resolve_config(None, path, {})
    assert from_file.model.n_layer == PRESETS["cpu"]["n_layer"] and from_file.model.n_embd == 96
    from_flag = resolve_config("baby", path, {})
    assert from_flag.model.n_layer == PRESETS["baby"]["n_layer"] and from_flag.model.n_embd == 96
    assert resolve_config(None, None, {}).model.n_embd == PRESETS["baby"]["n_embd"]  # the default preset


def test_file_values_are_validated(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("n_embd = 100\nn_head = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="n_embd"):
        resolve_config(None, path, {})
    assert resolve_config(None, path, {"n_head": 4}).model.n_head == 4  # a flag repairs it


def test_unknown_key_in_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("n_layers = 3\nn_embd = 64\n[train]\nlr = 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    assert info.value.problems == [f"lr: unknown setting in {path}", f"n_layers: unknown setting in {path}"]
    with pytest.raises(ConfigError):
        resolve_config(None, path, {})


@pytest.mark.parametrize("text", ["n_layer = \n", "n_layer 3\n", "[model\nn_layer = 3\n", 'n_layer = "3\n'])
def test_bad_toml_is_a_usage_error(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match="not valid TOML") as info:
        resolve_config(None, path, {})
    assert not isinstance(info.value, ConfigError)
    assert str(path) in info.value.message


def test_missing_config_file_and_unknown_preset(tmp_path):
    with pytest.raises(UsageError, match="no config file"):
        resolve_config(None, tmp_path / "nope.toml", {})
    with pytest.raises(UsageError, match="unknown preset 'huge'"):
        resolve_config("huge", None, {})


def test_wrongly_typed_file_value(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('n_layer = "many"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="--n-layer"):
        resolve_config(None, path, {})


# --- the CLI ---------------------------------------------------------------------------

def test_cli_reports_invalid_config_without_traceback(run_cli):
    result = run_cli("train", "--n-embd", "100", "--n-head", "3", env=ONE_THREAD_ENV)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Error:")
    assert any("n_embd (100)" in line and "n_head (3)" in line for line in lines)
    assert any(line.startswith("Try:") for line in lines)
    assert result.stdout == ""


# --- property: any combination either fails readably or builds a working model ---------

def _expected_valid(v: dict) -> bool:
    positive = all(v[k] > 0 for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"))
    divisible = positive and v["n_embd"] % v["n_head"] == 0
    # The cpu preset uses rotary positions, which rotate pairs of channels: an even head size.
    rope_ok = divisible and (v["n_embd"] // v["n_head"]) % 2 == 0
    return 0 <= v["dropout"] < 1 and rope_ok


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vocab_size=st.integers(-2, 12),
    block_size=st.integers(-2, 8),
    n_layer=st.integers(-1, 3),
    n_head=st.integers(-1, 4),
    n_embd=st.sampled_from([-8, 0, 1, 3, 4, 6, 8, 12, 16]),
    dropout=st.sampled_from([-0.5, -0.01, 0.0, 0.1, 0.5, 0.99, 1.0, 1.5]),
    bias=st.booleans(),
)
def test_random_model_settings_fail_readably_or_build_a_working_model(**values):
    try:
        config = resolve_config("cpu", None, dict(values))
    except UsageError as e:  # ConfigError is a UsageError
        assert not _expected_valid(values), f"valid settings refused: {e.message}"
        assert e.exit_code == 2
        assert e.message.startswith("invalid configuration:")
        problems = getattr(e, "problems", [])
        assert problems and all(p.strip() for p in problems)
        for p in problems:  # each line names the setting it is about
            assert any(name in p for name in values) or any(
                "--" + name.replace("_", "-") in p for name in values), p
            assert "Traceback" not in p and "pydantic" not in p.lower()
        return
    assert _expected_valid(values), f"invalid settings accepted: {values}"
    model = GPT(config.model).eval()
    idx = torch.randint(0, config.model.vocab_size, (2, config.model.block_size))
    with torch.no_grad():
        logits, loss = model(idx, idx)
    assert logits.shape == (2, config.model.block_size, config.model.vocab_size)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("preset, max_iters, warmup", [("cpu", 10, 0), ("baby", 60, 1), ("baby", 100, 2)])
def test_a_presets_warmup_shrinks_with_a_short_run_and_says_so(preset, max_iters, warmup):
    notes: list[str] = []
    config = resolve_config(preset, None, {"max_iters": max_iters}, notes)
    assert config.train.warmup_iters == warmup
    assert len(notes) == 1 and f"warmup scaled to {warmup}" in notes[0]


def test_a_warmup_the_user_gave_is_never_changed():
    notes: list[str] = []
    with pytest.raises(ConfigError, match="warmup_iters"):
        resolve_config("cpu", None, {"max_iters": 10, "warmup_iters": 20}, notes)
    assert resolve_config("cpu", None, {"max_iters": 500}, notes).train.warmup_iters == PRESETS["cpu"]["warmup_iters"]
    assert notes == []
