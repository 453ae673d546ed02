"""Hyperparameters as typed pydantic models, presets, and the precedence that resolves them.

Precedence, highest first: command-line flag > `--config FILE.toml` > `--preset` > field default.
Every field becomes a `--kebab-case` flag of `tinygpt train`; its description is the flag's help.
"""

from __future__ import annotations

import re
import reprlib
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import Command, ConfigError, UsageError
from .system.fsutil import FileTooLarge, read_limited

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _panel(name: str) -> dict:
    return {"panel": name}


MAX_TIME_S = 30 * 24 * 3600
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in a duration as people write it: "90s", "10m", "2h", "1h30m", "1.5h"; a bare
    number is seconds. Zero, a sign, nan or inf are not durations."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        parts = [(cleaned, "s")]
    else:  # number-unit pairs and nothing else, spaces aside
        parts = _DURATION.findall(cleaned) if not _DURATION.sub("", cleaned).strip() else []
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a duration: write it like 90s, 10m, 2h or 1h30m")
    return seconds


def describe_duration(seconds: float) -> str:
    """A duration the way parse_duration reads it: "90s", "10m", "1h30m", "2m05s"."""
    total = round(seconds)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    parts = [f"{h}h"] if h else []
    if m or (h and s):
        parts.append(f"{m:02d}m" if h else f"{m}m")
    if s or not parts:
        parts.append(f"{s:02d}s" if parts else f"{s}s")
    return "".join(parts)


class ModelConfig(BaseModel):
    """The shape of the network. Changing any of these changes the checkpoint's tensors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    vocab_size: int = Field(65, gt=0, le=2**20, description="Number of tokens: the dataset's characters or BPE tokens (set from the dataset).", json_schema_extra=_panel("Model"))
    block_size: int = Field(256, gt=0, le=2**20, description="Context length: how many tokens the model sees at once.", json_schema_extra=_panel("Model"))
    n_layer: int = Field(6, gt=0, le=1024, description="Number of Transformer blocks stacked on top of each other.", json_schema_extra=_panel("Model"))
    n_head: int = Field(6, gt=0, le=4096, description="Attention heads per block; n_embd must divide by it.", json_schema_extra=_panel("Model"))
    n_embd: int = Field(384, gt=0, le=2**16, description="Width of the residual stream (embedding size).", json_schema_extra=_panel("Model"))
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout probability during training (0 turns it off).", json_schema_extra=_panel("Model"))
    bias: bool = Field(False, description="Use bias terms in linear layers and LayerNorms.", json_schema_extra=_panel("Model"))
    # Options beyond the classic GPT-2 recipe; the defaults keep the classic model.
    pos_embedding: Literal["learned", "rope"] = Field("learned", description="Positions: a learned table added to the input (GPT-2) or rotary embeddings inside attention.", json_schema_extra=_panel("Model"))
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="Normalisation layer: LayerNorm (GPT-2) or RMSNorm (cheaper, no centring).", json_schema_extra=_panel("Model"))
    activation: Literal["gelu", "gelu_tanh", "relu2"] = Field("gelu", description="MLP non-linearity: GELU, GELU's tanh approximation (as OpenAI's GPT-2 weights use) or squared ReLU.", json_schema_extra=_panel("Model"))
    qk_norm: bool = Field(False, description="Normalise queries and keys per head before attention (steadier at high learning rates).", json_schema_extra=_panel("Model"))

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_embedding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary positions need an even head size, and n_embd / n_head is {self.n_embd // self.n_head}")
        return self

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class TrainConfig(BaseModel):
    """How to train: optimisation, data and run settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    batch_size: int = Field(64, gt=0, le=2**20, description="Sequences per optimiser step (per process).", json_schema_extra=_panel("Data"))
    grad_accum: int = Field(1, gt=0, le=2**16, description="Micro-batches accumulated per optimiser step.", json_schema_extra=_panel("Data"))
    data_dir: str = Field("data/shakespeare", description="Prepared dataset folder, as the prepare command writes it.", json_schema_extra=_panel("Data"))

    max_iters: int = Field(5000, gt=0, le=10**9, description="Total optimiser steps.", json_schema_extra=_panel("Optimisation"))
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate, reached after warmup.", json_schema_extra=_panel("Optimisation"))
    min_lr: float = Field(1e-4, ge=0, description="Learning rate at the end of the decay.", json_schema_extra=_panel("Optimisation"))
    warmup_iters: int = Field(100, ge=0, le=10**9, description="Steps of linear warmup from 0 to learning_rate.", json_schema_extra=_panel("Optimisation"))
    lr_decay: Literal["cosine", "linear", "constant"] = Field("cosine", description="Shape of the decay from learning_rate to min_lr.", json_schema_extra=_panel("Optimisation"))
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay (2-D weight matrices only).", json_schema_extra=_panel("Optimisation"))
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam momentum: decay rate of the gradient's running mean.", json_schema_extra=_panel("Optimisation"))
    beta2: float = Field(0.99, ge=0, lt=1, description="Adam decay rate of the squared gradient's running mean.", json_schema_extra=_panel("Optimisation"))
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0 turns clipping off).", json_schema_extra=_panel("Optimisation"))
    optimizer: Literal["adamw", "muon"] = Field("adamw", description="AdamW for everything, or Muon for the blocks' weight matrices (AdamW for the rest).", json_schema_extra=_panel("Optimisation"))
    muon_lr: float = Field(0.02, gt=0, description="Peak learning rate of the Muon matrices (with --optimizer muon; follows the same schedule).", json_schema_extra=_panel("Optimisation"))

    eval_interval: int = Field(250, ge=1, description="Evaluate train/val loss and save `last` every N steps.", json_schema_extra=_panel("Run"))
    eval_iters: int = Field(200, gt=0, le=10**6, description="Batches averaged per loss estimate.", json_schema_extra=_panel("Run"))
    time: float | None = Field(None, gt=0, le=MAX_TIME_S, description="Train for this long, then stop (90s, 10m, 2h; whole process, evaluations and saves included): the iterations are fitted to the pace the run measures. On `train`, it also picks the model's shape for the time: any shape flag you give is kept.", json_schema_extra={**_panel("Run"), "text": True})
    stop_at_val_loss: float | None = Field(None, gt=0, description="Stop as soon as an evaluation's val loss is at or below this (a time-to-quality target).", json_schema_extra=_panel("Run"))
    seed: int = Field(1337, ge=0, le=2**32 - 1, description="Random seed: same seed, same run.", json_schema_extra=_panel("Run"))
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Where to compute (auto: cuda, then mps, then cpu).", json_schema_extra=_panel("Run"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Compute precision (auto: bfloat16 mixed precision on a CUDA GPU or a CPU that multiplies bfloat16 in hardware; float16 with loss scaling on a GPU of compute capability 7, such as a T4; else float32).", json_schema_extra=_panel("Run"))
    compile: bool = Field(False, description="Compile the model with torch.compile (slow start, faster steps).", json_schema_extra=_panel("Run"))
    init_from: str | None = Field(None, min_length=1, max_length=4096, description="Start from these weights instead of random ones, with their shape and tokenizer: a run folder or checkpoint, a transformers GPT-2 or GPT-NeoX folder, or a Hugging Face hub id such as gpt2 (downloaded once, then cached).", json_schema_extra=_panel("Run"))
    log: Literal["none", "tensorboard", "wandb"] = Field("none", description="Also log metrics to TensorBoard (event files in the run folder) or Weights & Biases (WANDB_MODE=offline works offline).", json_schema_extra=_panel("Run"))

    @field_validator("time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _cross_field(self) -> TrainConfig:
        problems = []
        if self.min_lr > self.learning_rate:
            problems.append(f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})")
        if self.warmup_iters >= self.max_iters:
            problems.append(f"warmup_iters ({self.warmup_iters}) must be smaller than max_iters ({self.max_iters})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RunConfig(BaseModel):
    """Everything a run needs, as saved in its folder's config.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig
    train: TrainConfig

    def flat(self) -> dict[str, Any]:
        return {**self.model.model_dump(), **self.train.model_dump()}

    @property
    def tokens_per_step(self) -> int:
        """Tokens one process trains on per optimiser step."""
        return self.train.batch_size * self.train.grad_accum * self.model.block_size


FIELD_INFO = {**ModelConfig.model_fields, **TrainConfig.model_fields}  # name -> type, default, description
MODEL_FIELDS = tuple(ModelConfig.model_fields)
TRAIN_FIELDS = tuple(TrainConfig.model_fields)
ALL_FIELDS = MODEL_FIELDS + TRAIN_FIELDS
# Settings that decide the checkpoint's tensors: fixed for the life of a run.
SHAPE_FIELDS = tuple(f for f in MODEL_FIELDS if f != "dropout")

PRESETS: dict[str, dict[str, Any]] = {
    # The classic "baby GPT": about 1.47 validation loss on tiny Shakespeare after 5000 steps on a GPU.
    "baby": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
        learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=5000, beta2=0.99,
        eval_interval=250, eval_iters=200,
    ),
    # The best model a 2-core laptop CPU trains in about two and a half minutes (benchmarks/
    # bench_time_to_loss.py): nanoGPT's CPU shape, more and smaller steps at a higher learning
    # rate decayed to zero, rotary positions and Muon for the blocks' matrices.
    "cpu": dict(
        n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=16, dropout=0.0,
        pos_embedding="rope", optimizer="muon", muon_lr=0.02,
        learning_rate=3e-3, min_lr=0.0, warmup_iters=20, max_iters=1200, beta2=0.99,
        eval_interval=300, eval_iters=20,
    ),
    # The same budget with the classic GPT-2 recipe (learned positions, AdamW), for comparison.
    "cpu-classic": dict(
        n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=16, dropout=0.0,
        learning_rate=3e-3, min_lr=1e-5, warmup_iters=20, max_iters=2000, beta2=0.99,
        eval_interval=500, eval_iters=20,
    ),
}
DEFAULT_PRESET = "baby"
TIME_PRESET = "cpu"  # with --time and no preset
# A settings file holds a few dozen lines: anything far larger is not one (or is /dev/zero).
MAX_CONFIG_BYTES = 2**20


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def read_config_file(path: Path) -> dict[str, Any]:
    """Values from a TOML file: flat `field = value` pairs (optionally under [model] / [train])."""
    try:
        data = tomllib.loads(read_limited(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except FileNotFoundError as e:
        raise UsageError(f"no config file at {path}") from e
    except FileTooLarge as e:
        raise UsageError(f"config file {path} is over the {MAX_CONFIG_BYTES:,}-byte limit for a settings file") from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path} is not valid TOML: {e}") from e
    except RecursionError as e:
        raise UsageError(f"config file {path} is not valid TOML: nested too deeply") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from e
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model", "train") and isinstance(value, dict):
            values.update(value)
        elif key == "preset":
            values["preset"] = value
        else:
            values[key] = value
    unknown = sorted(set(values) - set(ALL_FIELDS) - {"preset"})
    if unknown:
        raise ConfigError([f"{k}: unknown setting in {path}" for k in unknown], Command("train", ("--help",), why="lists every setting"))
    return values


def first_problem(error: ValidationError, whole: str = "settings") -> str:
    """The first broken rule of a pydantic error, as one short phrase (`whole`: what the
    location is when the error is about the whole object)."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}"


def _format_errors(error: ValidationError) -> list[str]:
    lines = []
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"] if p not in ("model", "train"))
        message = e["msg"].removeprefix("Value error, ")
        if field:
            lines.append(f"{flag_name(field)}: {message} (got {reprlib.repr(e.get('input'))})")
        else:
            lines.extend(message.split("; "))
    return lines


def build_config(values: dict[str, Any]) -> RunConfig:
    """Validate a flat dict of settings; every broken rule becomes one line of a ConfigError."""
    model_values = {k: v for k, v in values.items() if k in MODEL_FIELDS}
    train_values = {k: v for k, v in values.items() if k in TRAIN_FIELDS}
    problems: list[str] = [f"{k}: unknown setting" for k in sorted(set(values) - set(ALL_FIELDS))]
    parts: dict[str, Any] = {}
    for name, cls, vals in (("model", ModelConfig, model_values), ("train", TrainConfig, train_values)):
        try:
            parts[name] = cls(**vals)
        except ValidationError as e:
            problems.extend(_format_errors(e))
    if problems:
        raise ConfigError(problems, Command("train", ("--help",), why="lists every setting and its rule"))
    return RunConfig(**parts)


def resolve_config(preset: str | None, config_file: Path | None, flags: dict[str, Any],
                   notes: list[str] | None = None) -> RunConfig:
    """Merge preset < config file < flags (flags that are None were not given). Adjustments made
    for the user (a preset's warmup scaled to a short run) are appended to `notes`."""
    file_values = read_config_file(config_file) if config_file else {}
    chosen = {**{k: v for k, v in file_values.items() if k != "preset"}, **{k: v for k, v in flags.items() if v is not None}}
    # A run given a time starts from the recipe its rule was measured with (runs/timedial.py).
    preset = preset or file_values.get("preset") or (TIME_PRESET if chosen.get("time") is not None else DEFAULT_PRESET)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **chosen}
    if chosen.get("init_from") is not None:
        # The source's shape replaces the preset's (lifecycle.train_new): the model settings
        # left are the ones chosen here, which ModelConfig.model_fields_set then records.
        values = {k: v for k, v in values.items() if k in chosen or k not in SHAPE_FIELDS}
    if "warmup_iters" not in chosen:
        _scale_warmup(values, preset, notes if notes is not None else [])
    return build_config(values)


def given_settings(config_file: Path | None, flags: dict[str, Any]) -> set[str]:
    """The settings the user chose, by flag or in a settings file (not by preset)."""
    from_file = read_config_file(config_file) if config_file else {}
    return {k for k in from_file if k != "preset"} | {k for k, v in flags.items() if v is not None}


def _scale_warmup(values: dict[str, Any], preset: str, notes: list[str]) -> None:
    """A preset's warmup that does not fit a shorter run shrinks with it, keeping its share of
    the run (a warmup the user gave is never changed: it is refused if it does not fit)."""
    warmup, max_iters = values.get("warmup_iters"), values.get("max_iters")
    full = PRESETS[preset].get("max_iters")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (warmup, max_iters, full)):
        return  # not numbers: build_config reports them
    if warmup < max_iters:
        return
    values["warmup_iters"] = warmup * max_iters // full
    notes.append(f"warmup scaled to {values['warmup_iters']} iterations for a {max_iters}-iteration run "
                 f"(the {preset} preset warms up for {warmup} of {full}; --warmup-iters sets it)")


def check_against_data(config: RunConfig, train_tokens: int, val_tokens: int, vocab_size: int, conversations: bool = False) -> None:
    """Rules that need the dataset: windows must fit in each split (a split of conversations is
    padded past its end, data/batches.py: any size does)."""
    problems = []
    smallest = min(train_tokens, val_tokens)
    if config.model.block_size >= smallest and not conversations:
        problems.append(
            f"--block-size: {config.model.block_size} must be smaller than each split of the dataset "
            f"(train {train_tokens:,}, val {val_tokens:,} tokens)"
        )
    if config.model.vocab_size != vocab_size:
        problems.append(f"--vocab-size: {config.model.vocab_size} does not match the dataset's {vocab_size} tokens")
    if problems:
        raise ConfigError(problems)
