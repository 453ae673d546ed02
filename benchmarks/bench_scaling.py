"""A hand sweep of model shapes at fixed wall-time budgets, and the scaling law fitted on it:
the rule behind `train --time` (issue #32).

Each cell is one shape (n_layer x n_embd, head size 32, the cpu preset's recipe otherwise:
block 64, batch 16, Muon and rotary positions) trained on tiny Shakespeare as a whole
`tinygpt train --time BUDGET` process with its shape given, so the run fits its iterations to
the budget as it goes (cells measured before `--time` existed ran a number of iterations timed
beforehand, and their walls landed 0.65 to 1.31 of the budget: "method": "iterations"). The
cell records the whole process's wall time, the iterations, the parameters and tokens seen, and
the final validation loss of its best checkpoint over the whole split.

`--fit` fits L(N, D) = E + A / N^alpha + B / D^beta (runs/law.py) on the cells of the depths the
time dial chooses from (4 layers and up), writes the fit into the results file and the rule
tinygpt ships (src/tinygpt_cli/runs/rules/tinyshakespeare-char.json).

A sweep on a 2-core CPU takes long (12 shapes x 10 minutes is 2 hours), so the results file
keeps every cell measured on this CPU kind, and a rerun measures only the cells it lacks:
several sessions complete a grid together.

Usage: python benchmarks/bench_scaling.py --source PATH/TO/input.txt --budgets 120 [--shapes 2x64,4x128 ...] [--fit]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from common import RESULTS, TINYGPT, code_version, cpu_kind, machine, run_process
from tinygpt_cli.config import resolve_config
from tinygpt_cli.params import param_report
from tinygpt_cli.runs.law import HEAD_SIZE, SHIPPED_RULE, Point, Rule, describe_law, fit_law, recipe_of
from tinygpt_cli.runs.timedial import DEPTHS

LAYERS = (2, 4, 6)
WIDTHS = (64, 128, 192, 256)
TOKENS_PER_ITER = 16 * 64  # the cpu preset's batch x block


def shape_settings(shape: str) -> dict:
    n_layer, n_embd = (int(v) for v in shape.split("x"))
    return {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_embd // HEAD_SIZE}


def cell_key(shape: str, budget: int) -> str:
    """A cell measured with --time; those measured before it ran a number of iterations instead,
    and are kept under the same key with "-iterations" after it."""
    return f"{shape}@{budget}s"


def at_budget(cells: dict, budget: int) -> list[dict]:
    """One cell per shape at one budget: the one kept by --time where there is one (its wall is the budget)."""
    by_shape: dict[str, dict] = {}
    for c in cells.values():
        if c["budget_s"] == budget and (c["shape"] not in by_shape or c["method"] == "time"):
            by_shape[c["shape"]] = c
    return list(by_shape.values())


def measure_cell(shape: str, budget: int, data_dir: Path, work: Path) -> dict:
    settings = shape_settings(shape)
    run = work / shape
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    command = TINYGPT + ["train", "--preset", "cpu", *flags, "--time", f"{budget}s", "--data-dir", str(data_dir), "--out", str(run), "--overwrite"]
    load = os.getloadavg()[0]
    wall, _, _ = run_process(command)
    status = json.loads((run / "run.json").read_text())
    report = param_report(resolve_config("cpu", None, {**settings, "vocab_size": 65}).model)
    return {"shape": shape, **settings, "budget_s": budget, "method": "time", "wall_s": round(wall, 2), "iters": status["iteration"],
            "params": report.total, "non_embedding_params": report.non_embedding, "tokens": status["iteration"] * TOKENS_PER_ITER,
            "final_val_loss": status["final_eval"]["val_loss"], "best_val_estimate": status["best_val_loss"], "load_average": round(load, 2),
            "code": code_version()}


def fit(results: dict, train_tokens: int) -> None:
    """Fit the law on the cells of the depths the time dial chooses from (2-layer shapes sit 0.015
    to 0.04 above a law fitted on the deeper ones); write it into `results` and as the rule tinygpt ships."""
    points = [Point(c["shape"], c["non_embedding_params"], c["tokens"], c["final_val_loss"], c["wall_s"])
              for c in results["cells"].values() if c["n_layer"] >= min(DEPTHS)]
    law, spread = fit_law(points)
    m = results["machine"]
    rule = Rule(law, points, {"corpus": "tiny Shakespeare", "tokenizer": "char", "vocab_size": 65, "train_tokens": train_tokens,
                              "recipe": "the cpu preset's, head size 32", "recipe_settings": recipe_of(resolve_config("cpu", None, {})),
                              "machine": f"{m.get('cpu', 'a CPU')} ({m['cpu_kind']}), {m.get('cores', '?')} cores",
                              "measured_by": "benchmarks/bench_scaling.py"}, spread)
    residuals = {key: round(c["final_val_loss"] - law.loss(c["non_embedding_params"], c["tokens"]), 4) for key, c in results["cells"].items()}
    results["fit"] = {"law": rule.to_dict()["law"], "uncertainty": spread, "fitted_on_cells": len(points),
                      "fitted_on": f"the cells of {min(DEPTHS)} layers or more", "residuals_of_every_cell": residuals,
                      "formula": describe_law(law)}
    SHIPPED_RULE.parent.mkdir(exist_ok=True)
    rule.save(SHIPPED_RULE)
    fitted = [residuals[k] for k, c in results["cells"].items() if c["n_layer"] >= min(DEPTHS)]
    print(f"{describe_law(law)}; residuals of the fitted cells {min(fitted):+.3f} to {max(fitted):+.3f} -> {SHIPPED_RULE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="tiny Shakespeare's input.txt")
    parser.add_argument("--budgets", default="120", help="wall-time budgets in seconds, comma-separated")
    parser.add_argument("--shapes", default=",".join(f"{n}x{w}" for n in LAYERS for w in WIDTHS),
                        help="n_layer x n_embd, comma-separated (default: the 12 of 2, 4, 6 layers by 64 to 256 wide)")
    parser.add_argument("--fit", action="store_true", help="fit the law on every cell and write the rule tinygpt ships")
    args = parser.parse_args()
    path = RESULTS / f"scaling-{cpu_kind()}.json"
    results = json.loads(path.read_text()) if path.exists() else {"benchmark": "scaling", "machine": {**machine(), "cpu_kind": cpu_kind()},
                                                                   "recipe": "the cpu preset's, shapes changed", "cells": {}}
    budgets = [int(b) for b in args.budgets.split(",")]
    todo = [(s, b) for b in budgets for s in args.shapes.split(",") if cell_key(s, b) not in results["cells"]]
    print(f"{len(todo)} cells to measure, about {sum(b for _, b in todo) / 60:.0f} minutes")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        run_process(TINYGPT + ["prepare", "shakespeare", "--source", str(args.source), "--data-dir", str(data)])
        train_tokens = json.loads((data / "meta.json").read_text())["train_tokens"]
        for shape, budget in todo:
            cell = measure_cell(shape, budget, data, Path(tmp))
            results["cells"][cell_key(shape, budget)] = cell
            path.write_text(json.dumps(results, indent=2) + "\n")  # each cell kept as soon as it is measured
            print(f"{cell_key(shape, budget)}: val {cell['final_val_loss']:.4f} after {cell['iters']:,} iterations, "
                  f"{cell['wall_s']:.1f} s wall, load {cell['load_average']}", flush=True)
    for budget in budgets:
        cells = sorted(at_budget(results["cells"], budget), key=lambda c: c["final_val_loss"])
        if cells:
            walls = [c["wall_s"] / budget for c in cells]
            print(f"{budget} s: best {cells[0]['shape']} at {cells[0]['final_val_loss']:.4f} of {len(cells)} shapes ({cells[0]['method']}); "
                  f"wall / budget median {statistics.median(walls):.2f} ({min(walls):.2f} to {max(walls):.2f})")
    if args.fit:
        fit(results, train_tokens)
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
