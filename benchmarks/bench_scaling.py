"""A hand sweep of model shapes at fixed wall-time budgets: the data a time dial's rule is fitted
on (issue #32, `train --time`), measured a cell at a time and kept between sessions.

Each cell is one shape (n_layer x n_embd, head size 32, the cpu preset's recipe otherwise:
block 64, batch 16, Muon and rotary positions) trained on tiny Shakespeare for one budget of
wall time, as a whole `tinygpt train` process: its step time is measured first (a few steps,
once warm), the iterations are what fits the budget after the start and the final evaluation,
and the run evaluates at its start and its end only. The cell records the whole process's wall
time, the iterations, the parameters and tokens seen, and the final validation loss of its best
checkpoint over the whole split.

A sweep on a 2-core CPU takes long (12 shapes x 10 minutes is 2 hours), so the results file
keeps every cell measured on this CPU kind, and a rerun measures only the cells it lacks:
several sessions complete a grid together.

Usage: python benchmarks/bench_scaling.py --source PATH/TO/input.txt --budgets 120 [--shapes 2x64,4x128 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import RESULTS, TINYGPT, cpu_kind, machine, run_process
from tinygpt_cli.config import resolve_config
from tinygpt_cli.params import param_report
from tinygpt_cli.runs.bench import time_training_steps
from tinygpt_cli.system.process import init_process

LAYERS = (2, 4, 6)
WIDTHS = (64, 128, 192, 256)
HEAD_SIZE = 32
# A process's start (imports, data, the first evaluation) and its final evaluation: an estimate,
# not a measurement (the cells record how far each whole process's wall time landed from its budget).
START_AND_END_S = 8.0


def shape_settings(shape: str) -> dict:
    n_layer, n_embd = (int(v) for v in shape.split("x"))
    return {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_embd // HEAD_SIZE}


def cell_key(shape: str, budget: int) -> str:
    return f"{shape}@{budget}s"


def measure_cell(shape: str, budget: int, data_dir: Path, work: Path) -> dict:
    settings = shape_settings(shape)
    config = resolve_config("cpu", None, {**settings, "vocab_size": 65})
    timing = time_training_steps(config, steps=5, warmup=2, repeats=1, threads=init_process())
    iters = max(10, int((budget - START_AND_END_S) * 1000 / timing.ms_per_iter))
    run = work / shape
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    command = TINYGPT + ["train", "--preset", "cpu", *flags, "--max-iters", str(iters), "--eval-interval", str(iters),
                         "--data-dir", str(data_dir), "--out", str(run), "--overwrite"]
    load = os.getloadavg()[0]
    wall, _, _ = run_process(command)
    status = json.loads((run / "run.json").read_text())
    report = param_report(config.model)
    return {"shape": shape, **settings, "budget_s": budget, "wall_s": round(wall, 2), "iters": iters,
            "ms_per_iter_measured": round(timing.ms_per_iter, 2), "params": report.total, "non_embedding_params": report.non_embedding,
            "tokens": iters * timing.tokens_per_iter, "final_val_loss": status["final_eval"]["val_loss"],
            "best_val_estimate": status["best_val_loss"], "load_average": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="tiny Shakespeare's input.txt")
    parser.add_argument("--budgets", default="120", help="wall-time budgets in seconds, comma-separated")
    parser.add_argument("--shapes", default=",".join(f"{n}x{w}" for n in LAYERS for w in WIDTHS),
                        help="n_layer x n_embd, comma-separated (default: the 12 of 2, 4, 6 layers by 64 to 256 wide)")
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
        for shape, budget in todo:
            t0 = time.perf_counter()
            cell = measure_cell(shape, budget, data, Path(tmp))
            results["cells"][cell_key(shape, budget)] = cell
            path.write_text(json.dumps(results, indent=2) + "\n")  # each cell kept as soon as it is measured
            print(f"{cell_key(shape, budget)}: val {cell['final_val_loss']:.4f} after {cell['iters']:,} iterations, "
                  f"{cell['wall_s']:.1f} s wall ({time.perf_counter() - t0:.0f} s with the timing), load {cell['load_average']}", flush=True)
    for budget in budgets:
        cells = sorted((c for c in results["cells"].values() if c["budget_s"] == budget), key=lambda c: c["final_val_loss"])
        if cells:
            walls = [c["wall_s"] / budget for c in cells]
            print(f"{budget} s: best {cells[0]['shape']} at {cells[0]['final_val_loss']:.4f} of {len(cells)} shapes; "
                  f"wall / budget median {statistics.median(walls):.2f} ({min(walls):.2f} to {max(walls):.2f})")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
