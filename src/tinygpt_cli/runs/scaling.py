"""`tinygpt scaling`: your own scaling law, measured on your data and your machine.

A small grid: a few model shapes, each trained for three times (t, 2t and 4t, their sum the
total you give), every cell a run given a time with its shape fixed (runs/timedial.py,
timekeeper.py). The final losses of the finished cells are fitted with runs/law.py; the result
is a rule file that `train --time --rule FILE` plans with, and a picture: loss against compute,
one curve per size, and the compute-optimal frontier. Rerunning into the same folder skips the
finished cells and resumes the stopped ones.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig, build_config, describe_duration
from ..errors import UsageError
from ..params import param_report
from ..rundir import RunDir
from ..system.threads import ThreadPolicy
from .law import HEAD_SIZE, Point, Rule, fit_law, recipe_of
from .plots import Picture, require_matplotlib

DEFAULT_SHAPES = "4x64,4x128,6x128,6x192"
BUDGET_RATIOS = (1, 2, 4)
MIN_CELL_S = 20.0


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """"4x128,6x192" as (n_layer, n_embd, n_head), heads of 32 wide (at least one)."""
    shapes = []
    for part in text.split(","):
        try:
            n_layer, n_embd = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise UsageError(f"--shapes: {part.strip()!r} is not LAYERSxWIDTH, such as 4x128") from None
        if n_layer < 1 or n_embd < 1:
            raise UsageError(f"--shapes: {part.strip()!r} needs at least one layer and a width of 1 or more")
        shapes.append((n_layer, n_embd, max(1, n_embd // HEAD_SIZE)))
    if len(set(shapes)) < 2:
        raise UsageError("--shapes: a scaling law needs at least two sizes", "give two or more, such as 4x64,4x128")
    return shapes


@dataclass(frozen=True)
class ScalingCell:
    shape: tuple[int, int, int]
    budget_s: float
    path: Path

    @property
    def name(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}-{describe_duration(self.budget_s)}"

    def state(self) -> str:
        """"finished", "resume" (stopped with a checkpoint) or "train"."""
        run = RunDir(self.path)
        if run.read_status().get("status") == "finished" and run.best_path.exists():
            return "finished"
        return "resume" if run.last_path.exists() and run.config_path.exists() else "train"


@dataclass
class ScalingPlan:
    out: Path
    config: RunConfig  # the recipe every cell shares
    cells: list[ScalingCell]
    total_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "time_s": self.total_s,
                "cells": [{"name": c.name, "n_layer": c.shape[0], "n_embd": c.shape[1], "n_head": c.shape[2],
                           "time_s": c.budget_s, "state": c.state(), "path": str(c.path)} for c in self.cells]}


def plan_scaling(config: RunConfig, total_s: float, shapes: list[tuple[int, int, int]], out: Path) -> ScalingPlan:
    """Each shape at t, 2t and 4t seconds, the whole grid `total_s`."""
    unit = total_s / (len(shapes) * sum(BUDGET_RATIOS))
    if unit < MIN_CELL_S:
        least = MIN_CELL_S * len(shapes) * sum(BUDGET_RATIOS)
        raise UsageError(f"--time {describe_duration(total_s)} gives the shortest runs {unit:.0f} s each: too short to learn anything",
                         f"give --time {describe_duration(least)} or more, or fewer --shapes")
    cells = [ScalingCell(shape, unit * ratio, out / ScalingCell(shape, unit * ratio, out).name) for shape in shapes for ratio in BUDGET_RATIOS]
    return ScalingPlan(out, config, cells, total_s)


def run_scaling(plan: ScalingPlan, rule: Rule, reporter_for: Callable[[ScalingCell], Any] | None = None,
                on_cell: Callable[[int, ScalingCell, str], None] | None = None, threads: ThreadPolicy | None = None) -> None:
    """Train (or resume) every cell that has not finished; `rule` only makes each cell's first
    guess of its iterations (its shape is fixed)."""
    import time

    from ..lifecycle import resume, train_new
    from .timedial import SHAPE, plan_for_time

    for i, cell in enumerate(plan.cells):
        state = cell.state()
        if on_cell is not None:
            on_cell(i, cell, state)
        reporter = reporter_for(cell) if reporter_for is not None and state != "finished" else None
        if state == "resume":
            resume(cell.path, None, reporter, threads=threads)
        elif state == "train":
            started = time.monotonic()
            shaped = build_config({**plan.config.flat(), **dict(zip(SHAPE, cell.shape)), "time": cell.budget_s})
            planned = plan_for_time(shaped, cell.budget_s, set(SHAPE), rule, threads, started)
            train_new(planned.config, cell.path, reporter, overwrite=True, threads=threads, started=started)


def finished_points(plan: ScalingPlan) -> list[Point]:
    """(parameters outside the embeddings, tokens seen, final val loss) of each finished cell."""
    from ..lifecycle import read_run_config

    points = []
    for cell in plan.cells:
        status = RunDir(cell.path).read_status()
        final = status.get("final_eval") or {}
        if cell.state() != "finished" or not isinstance(final.get("val_loss"), (int, float)):
            continue
        config = read_run_config(RunDir(cell.path))
        tokens = status["iteration"] * config.tokens_per_step
        points.append(Point(cell.name, param_report(config.model).non_embedding, tokens, float(final["val_loss"]), status.get("elapsed")))
    return points


def fit_scaling(plan: ScalingPlan) -> Rule:
    """The law fitted on the finished cells, as a rule that says what it was fitted on."""
    from ..lifecycle import prepare_training

    config, dataset = prepare_training(plan.config)
    points = finished_points(plan)
    law, spread = fit_law(points)
    machine = f"{platform.machine()} ({os.cpu_count()} cores)"
    fitted_on = {"corpus": dataset.info.name, "tokenizer": dataset.info.tokenizer, "vocab_size": dataset.tokenizer.size,
                 "train_tokens": len(dataset.train), "recipe_settings": recipe_of(config), "machine": machine,
                 "measured_by": "the scaling command", "runs": str(plan.out)}
    return Rule(law, points, fitted_on, spread, str(plan.out / "rule.json"))


def optimal_params(rule: Rule, compute: float) -> float:
    """The N that minimises L(N, D) at `compute` = 6 N D FLOPs (Kaplan et al. 2020's estimate of a
    step's FLOPs per parameter and token): N_opt = G (C / 6)^(beta / (alpha + beta)), with
    G = (alpha A / (beta B))^(1 / (alpha + beta)) (Hoffmann et al. 2022, equation 4)."""
    law = rule.law
    g = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
    return g * (compute / 6) ** (law.beta / (law.alpha + law.beta))


def scaling_picture(rule: Rule, title: str) -> Picture:
    """Loss against compute (6ND): each size's runs and its curve by the law, and the frontier."""
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    sizes = sorted({p.params for p in rule.points})
    computes = [6 * p.params * p.tokens for p in rule.points]
    low, high = math.log10(min(computes)) - 0.3, math.log10(max(computes)) + 0.5
    grid = [10 ** (low + (high - low) * i / 99) for i in range(100)]
    for i, n in enumerate(sizes):
        mine = [p for p in rule.points if p.params == n]
        color = f"C{i % 10}"
        ax.plot([6 * n * p.tokens for p in mine], [p.val_loss for p in mine], "o", color=color,
                label=f"{mine[0].shape.split('-')[0]}: {n / 1e6:.2f}M parameters")
        ax.plot(grid, [rule.law.loss(n, c / (6 * n)) for c in grid], "-", color=color, alpha=0.6, linewidth=1)
    frontier = [rule.law.loss(optimal_params(rule, c), c / (6 * optimal_params(rule, c))) for c in grid]
    ax.plot(grid, frontier, "k--", linewidth=2, label="compute-optimal frontier (the best size at each compute)")
    law, spread = rule.law, rule.uncertainty
    exponent = law.beta / (law.alpha + law.beta)
    plus = lambda k: f" ± {spread[k]:.2f}" if k in spread else ""  # noqa: E731
    ax.set_title(f"{title}\nL = {law.E:.2f} + A / N^{law.alpha:.2f}{plus('alpha')} + B / D^{law.beta:.2f}{plus('beta')};"
                 f"  the best N grows as compute^{exponent:.2f}", fontsize="medium")
    ax.set_xscale("log")
    ax.set_xlabel("compute: 6 x parameters x tokens (FLOPs)")
    ax.set_ylabel("val loss, best checkpoint, whole split (nats per token)")
    ax.set_ylim(top=min(max(p.val_loss for p in rule.points) + 0.3, max(frontier)))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return Picture(fig, title)
