"""Hyperparameter sweeps: a grid of comma-separated flag values, run one cell after another.

Every cell is a normal run folder inside the sweep folder, named after its grid values
(`n_layer=2,learning_rate=0.001`). Rerunning the same sweep into the same folder skips finished
cells and resumes the others from their `last` checkpoint, so a stopped sweep loses little.
torch is imported only by the functions that train or time.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..config import ALL_FIELDS, FIELD_INFO, SHAPE_FIELDS, RunConfig, flag_name, resolve_config
from ..errors import Command, ConfigError, TinyGPTError, TrainingStopped, UsageError
from ..system.fsutil import read_json, write_json_atomic
from ..rundir import RUNS_DIR, RunDir, default_run_name
from ..system.threads import ThreadPolicy
from .table import format_value, is_run_folder

# vocab_size follows from the dataset; it is not a flag of train either.
SWEEP_FIELDS = tuple(f for f in ALL_FIELDS if f != "vocab_size")
_FLAGS = {flag_name(f): f for f in SWEEP_FIELDS}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
MAX_CELL_NAME = 120


def valid_flags() -> str:
    return " ".join(_FLAGS)


def parse_grid_args(args: list[str]) -> dict[str, list[str]]:
    """`--kebab-flag v1,v2` / `--kebab-flag=v1,v2` pairs into {field: [raw values]}, in order.
    A boolean flag may also stand alone (`--bias`, `--no-bias`)."""
    grid: dict[str, list[str]] = {}
    i = 0
    hint = f"valid flags: {valid_flags()}"
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: sweep takes flags like --n-layer 2,4,6", hint)
        flag, eq, raw = arg.partition("=")
        name = _FLAGS.get(flag)
        if name is None and flag.startswith("--no-") and not eq:
            negated = _FLAGS.get("--" + flag[5:])
            if negated is not None and FIELD_INFO[negated].annotation is bool:
                name, raw, eq = negated, "false", "="
        if name is None:
            raise UsageError(f"unknown flag {flag}", hint)
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                raw = args[i + 1]
                i += 1
            elif FIELD_INFO[name].annotation is bool:
                raw = "true"
            else:
                raise UsageError(f"{flag} needs a value, e.g. {flag} A,B")
        if name in grid:
            raise UsageError(f"{flag} is given twice: put all its values in one comma-separated list")
        values = [v.strip() for v in raw.split(",")]
        if any(v == "" for v in values):
            raise UsageError(f"{flag} {raw!r}: empty value in the comma-separated list")
        grid[name] = values
        i += 1
    return grid


def convert_value(name: str, raw: str) -> Any:
    """A raw flag value as the field's type (range rules are checked later, per cell)."""
    if (FIELD_INFO[name].json_schema_extra or {}).get("text"):
        return raw  # the field reads its own text (a duration), when each cell's config is built
    try:
        return TypeAdapter(FIELD_INFO[name].annotation).validate_python(raw)
    except ValidationError as e:
        raise UsageError(f"{flag_name(name)}: {raw!r} is not valid ({e.errors()[0]['msg']})") from None


def cell_name(values: dict[str, Any]) -> str:
    """A folder name from the grid values, safe on every file system."""
    name = ",".join(f"{k}={format_value(k, v)}" for k, v in values.items())
    name = _UNSAFE.sub("_", name).strip(".") or "cell"
    return name[:MAX_CELL_NAME]


@dataclass
class Cell:
    name: str
    values: dict[str, Any]  # this cell's grid values
    config: RunConfig
    path: Path


@dataclass
class SweepPlan:
    out: Path
    preset: str | None
    axes: dict[str, list[Any]]
    fixed: dict[str, Any]
    cells: list[Cell]
    warnings: list[str] = field(default_factory=list)  # swept settings that change little or nothing

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "preset": self.preset, "axes": self.axes, "fixed": self.fixed,
                "cells": [{"name": c.name, "values": c.values, "path": str(c.path)} for c in self.cells]}


# Settings whose effect depends on the optimiser: (setting, optimiser, what it does there).
WEAK_UNDER = [
    ("learning_rate", "muon", "sets only the rate of the embeddings and norms (AdamW); the blocks' matrices follow --muon-lr"),
    ("beta1", "muon", "acts only on the embeddings and norms (AdamW); the blocks' matrices follow Muon's momentum"),
    ("beta2", "muon", "acts only on the embeddings and norms (AdamW)"),
    ("muon_lr", "adamw", "has no effect: no matrix is stepped by Muon"),
]


def weak_axes(axes: dict[str, list[Any]], cells: list[Cell]) -> list[str]:
    """One warning per swept setting that the cells' optimiser mostly or entirely ignores."""
    optimizers = {cell.config.train.optimizer for cell in cells}
    return [f"--{name.replace('_', '-')} under --optimizer {optimizer} {effect}"
            for name, optimizer, effect in WEAK_UNDER if name in axes and optimizers == {optimizer}]


def plan_sweep(args: list[str], preset: str | None = None, config_file: Path | None = None,
               out: Path | None = None) -> SweepPlan:
    """Parse the grid flags, expand the grid and validate every cell's configuration."""
    grid = parse_grid_args(args)
    typed: dict[str, list[Any]] = {}
    for name, raws in grid.items():
        values: list[Any] = []
        for raw in raws:
            value = convert_value(name, raw)
            if value not in values:
                values.append(value)
        typed[name] = values
    axes = {k: v for k, v in typed.items() if len(v) > 1}
    fixed = {k: v[0] for k, v in typed.items() if len(v) == 1}
    if not axes:
        raise UsageError("nothing to sweep: give at least one flag several comma-separated values",
                         Command("sweep", options={"preset": "cpu", "n_layer": "2,4", "muon_lr": "0.01,0.02", "max_iters": 500}))
    out = Path(out) if out is not None else RUNS_DIR / f"sweep-{default_run_name()}"
    cells: list[Cell] = []
    seen: set[str] = set()
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        name = cell_name(values)
        if name in seen:  # two values that print alike (e.g. data folders of the same name)
            name = f"{name}-{len(cells)}"
        seen.add(name)
        try:
            config = resolve_config(preset, config_file, {**fixed, **values})
        except ConfigError as e:
            raise ConfigError([f"{p}  (cell {name})" for p in e.problems], e.hint) from None
        if config.train.init_from is not None:  # its cells would need the source's shape (pretrained.fit_config)
            raise UsageError("sweep does not fine-tune yet: --init-from is for train",
                             Command("train", options={"init_from": config.train.init_from}, why="one run at a time"))
        cells.append(Cell(name, values, config, out / name))
    return SweepPlan(out, preset, axes, fixed, cells, weak_axes(axes, cells))


# --- what to do with each cell ---------------------------------------------------------------


def _saved_changes(cell: Cell) -> dict[str, Any]:
    """Settings of the cell that differ from what its folder was trained with."""
    from ..lifecycle import read_run_config

    saved = read_run_config(RunDir(cell.path)).flat()
    wanted = cell.config.flat()
    changes = {}
    # A run given a time fits its own iterations to it (timekeeper.py): they are not a change.
    owned = {"max_iters", "eval_interval", "warmup_iters"} if wanted.get("time") is not None else set()
    for name in (n for n in SWEEP_FIELDS if n not in owned):
        a, b = wanted[name], saved.get(name)
        if name == "data_dir":
            a, b = str(Path(a).resolve()), str(Path(str(b)).resolve())
        if a != b:
            changes[name] = wanted[name]
    return changes


def cell_action(cell: Cell) -> tuple[str, dict[str, Any]]:
    """("train" | "skip" | "resume" | "restart", overrides for resume)."""
    run = RunDir(cell.path)
    if not is_run_folder(cell.path):
        return "train", {}
    if not run.config_path.exists():
        return "restart", {}
    changes = _saved_changes(cell)
    fixed = sorted(set(changes) & (set(SHAPE_FIELDS) | {"data_dir"}))
    if fixed:
        raise UsageError(f"{cell.path} was trained with other {', '.join(flag_name(f) for f in fixed)} values than this sweep asks for",
                         "rerun with the same flags, or sweep into a new folder with --out")
    if run.read_status().get("status") == "finished" and not changes:
        return "skip", {}
    if run.last_path.exists():
        return "resume", changes
    return "restart", {}


def prepared_configs(plan: SweepPlan) -> list[RunConfig]:
    """Each cell's configuration fitted to its dataset (vocabulary size), checked against it."""
    from ..lifecycle import prepare_training

    return [prepare_training(cell.config)[0] for cell in plan.cells]


# --- dry run: parameters and projected time --------------------------------------------------


def _timing_key(config: RunConfig) -> str:
    t = config.train
    return json.dumps([config.model.model_dump(), t.batch_size, t.grad_accum, t.device, t.dtype, t.compile])


def projected_seconds(ms_per_iter: float, config: RunConfig, iters: int) -> float:
    """Training steps plus evaluations (2 x eval_iters forward passes, each about a third of a step)."""
    t = config.train
    if iters <= 0:
        return 0.0
    evals = iters // t.eval_interval + 1
    forward_ms = ms_per_iter / (3 * t.grad_accum)
    return (iters * ms_per_iter + evals * 2 * t.eval_iters * forward_ms) / 1000


def project(plan: SweepPlan, time_steps: Callable | None = None, threads: ThreadPolicy | None = None) -> list[dict[str, Any]]:
    """Per cell: what a run would do, parameters, measured ms per step (under `threads`, the
    process's thread policy), projected seconds. Cells that share a model shape and batch are timed once."""
    from ..params import param_report

    if time_steps is None:
        from .bench import time_training_steps

        time_steps = lambda c: time_training_steps(c, steps=3, warmup=2, repeats=1, threads=threads).ms_per_iter  # noqa: E731
    timings: dict[str, float] = {}
    rows = []
    for cell, config in zip(plan.cells, prepared_configs(plan)):
        action, _ = cell_action(cell)
        done = 0 if action in ("train", "restart") else RunDir(cell.path).read_status().get("iteration", 0) or 0
        key = _timing_key(config)
        if action != "skip" and key not in timings:
            timings[key] = float(time_steps(config))
        ms = timings.get(key)
        remaining = 0 if action == "skip" else max(0, config.train.max_iters - done)
        projected = projected_seconds(ms, config, remaining) if ms is not None else 0.0
        rows.append({"name": cell.name, "values": cell.values, "path": str(cell.path), "action": action,
                     "n_params": param_report(config.model).total, "max_iters": config.train.max_iters,
                     "done_iters": done, "ms_per_iter": ms,
                     # a run given a time takes it (its iterations follow from it)
                     "projected_seconds": config.train.time if config.train.time and action != "skip" else projected})
    return rows


# --- running ---------------------------------------------------------------------------------


@dataclass
class CellResult:
    cell: Cell
    outcome: str  # trained | resumed | skipped | failed
    error: str | None = None


@dataclass
class SweepResult:
    plan: SweepPlan
    cells: list[CellResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CellResult]:
        return [c for c in self.cells if c.outcome == "failed"]


def write_manifest(plan: SweepPlan) -> None:
    path = plan.out / "sweep.json"
    created = time.time()
    try:
        created = read_json(path).get("created", created)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        plan.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TinyGPTError(f"cannot create sweep folder {plan.out}: {e.strerror or e}", "pass a writable folder with --out") from e
    write_json_atomic(path, {**plan.to_dict(), "created": created, "updated": time.time()})


def run_sweep(plan: SweepPlan, reporter_for: Callable[[Cell], Any] | None = None,
              on_cell: Callable[[int, Cell, str], None] | None = None, threads: ThreadPolicy | None = None) -> SweepResult:
    """Run every cell in turn (under `threads`, the process's thread policy). A cell that fails
    (e.g. its loss diverges) is recorded and the sweep goes on; bad flags and a stop signal end
    the sweep (a rerun picks it up)."""
    from ..lifecycle import resume, train_new

    prepared_configs(plan)  # every cell's data and block size are fine before any training starts
    actions = [cell_action(cell) for cell in plan.cells]
    write_manifest(plan)
    result = SweepResult(plan)
    for i, (cell, (action, overrides)) in enumerate(zip(plan.cells, actions)):
        if on_cell is not None:
            on_cell(i, cell, action)
        if action == "skip":
            result.cells.append(CellResult(cell, "skipped"))
            continue
        reporter = reporter_for(cell) if reporter_for is not None else None
        try:
            if action == "resume":
                resume(cell.path, overrides, reporter, threads=threads)
                result.cells.append(CellResult(cell, "resumed"))
            else:
                train_new(cell.config, cell.path, reporter, overwrite=action == "restart", threads=threads)
                result.cells.append(CellResult(cell, "trained"))
        except (TrainingStopped, UsageError):
            raise
        except TinyGPTError as e:
            result.cells.append(CellResult(cell, "failed", e.message))
    return result
