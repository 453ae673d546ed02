"""`train --time` against the hand sweep and against the presets stretched to the same time (issue #32).

At each budget, on tiny Shakespeare, three whole `tinygpt train` processes run one after the other:
- the time dial: `train --time B`, which picks its shape and iterations with the shipped rule;
- the cpu preset stretched: `train --preset cpu --time B` with the preset's own shape given, so
  that only its iterations follow the time;
- the cpu-classic preset, stretched the same way.
Each records the whole process's wall time, the shape, the iterations and the final validation
loss of its best checkpoint over the whole split. The best cell of the hand sweep at the same
budget comes from results/scaling-<cpu kind>.json (benchmarks/bench_scaling.py).

With `--seeds`, each arm runs once per seed (the arms alternated within each seed), and the
arms are compared by their mean: one run of a config spreads by 0.01 to 0.02 from seed to seed,
as much as the differences between good shapes.

Done when (issue #32): the dial within 0.02 of the hand sweep's best cell, below both presets,
and its wall within 10% of the budget. The results file keeps every budget measured on this CPU
kind; a rerun measures only the budgets it lacks.

Usage: python benchmarks/bench_time_dial.py --source PATH/TO/input.txt --budgets 120,300 [--seeds 1337,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench_scaling import at_budget
from common import RESULTS, TINYGPT, code_version, cpu_kind, machine, run_process
from tinygpt_cli.config import PRESETS

CPU_SHAPE = ["--n-layer", "4", "--n-embd", "128", "--n-head", "4"]  # both cpu presets'
ARMS = {
    "time dial": [],
    "cpu preset, stretched": ["--preset", "cpu", *CPU_SHAPE],
    "cpu-classic preset, stretched": ["--preset", "cpu-classic", *CPU_SHAPE],
}
assert all(PRESETS[p][k] == v for p in ("cpu", "cpu-classic") for k, v in (("n_layer", 4), ("n_embd", 128), ("n_head", 4)))


def measure(arm: str, budget: int, seed: int, data_dir: Path, work: Path) -> dict:
    run = work / arm.split(",")[0].replace(" ", "-")
    command = TINYGPT + ["train", *ARMS[arm], "--time", f"{budget}s", "--seed", str(seed), "--data-dir", str(data_dir), "--out", str(run),
                         "--overwrite", "--json"]
    load = os.getloadavg()[0]
    wall, _, done = run_process(command)
    summary = json.loads(done.stdout)
    model = json.loads((run / "config.json").read_text())["model"]
    status = json.loads((run / "run.json").read_text())
    return {"arm": arm, "budget_s": budget, "seed": seed, "wall_s": round(wall, 2), "wall_over_budget": round(wall / budget, 3),
            "shape": f"{model['n_layer']}x{model['n_embd']}", "n_head": model["n_head"], "iters": summary["iterations"],
            "final_val_loss": summary["final_eval"]["val_loss"], "dtype": status["matmul_peak"]["dtype"],
            "predicted_val_loss": summary["time_plan"]["chosen"]["predicted_loss"], "planned_iters": summary["time_plan"]["chosen"]["iters"],
            "tokens_per_s_by_quarter": pace_by_quarter(run), "threads": status.get("threads"), "load_average": round(load, 2),
            "code": code_version()}


def hand_sweep_best(budget: int) -> dict | None:
    path = RESULTS / f"scaling-{cpu_kind()}.json"
    cells = at_budget(json.loads(path.read_text())["cells"], budget) if path.exists() else []
    if not cells:
        return None
    best = min(cells, key=lambda c: c["final_val_loss"])
    return {"shape": best["shape"], "final_val_loss": best["final_val_loss"], "wall_s": best["wall_s"], "shapes": len(cells),
            "method": best["method"]}


def pace_by_quarter(run: Path) -> list[int]:
    """Tokens per second in each quarter of the run's steps (metrics.jsonl): a machine that
    changed speed shows here, and explains a wall that ended early."""
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "tokens_per_s" in r]
    quarters = [steps[i * len(steps) // 4:(i + 1) * len(steps) // 4] for i in range(4)]
    return [round(sum(r["tokens_per_s"] for r in q) / len(q)) for q in quarters if q]


def verdict(rows: list[dict], best: dict | None) -> dict:
    """The done-when of issue #32 on one budget's runs, each arm by its mean over the seeds."""
    means = {arm: round(statistics.mean(r["final_val_loss"] for r in rows if r["arm"] == arm), 4) for arm in ARMS}
    dial = means["time dial"]
    presets = min(loss for arm, loss in means.items() if arm != "time dial")
    return {"mean_val_loss": means, "runs_per_arm": len(rows) // len(ARMS),
            "dial_minus_hand_sweep_best": None if best is None else round(dial - best["final_val_loss"], 4),
            "within_0.02_of_hand_sweep": None if best is None else dial <= best["final_val_loss"] + 0.02,
            "beats_both_presets": dial < presets,
            "every_wall_within_10_percent": all(abs(r["wall_over_budget"] - 1) <= 0.10 for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="tiny Shakespeare's input.txt")
    parser.add_argument("--budgets", default="120,300", help="seconds, comma-separated")
    parser.add_argument("--seeds", default="1337", help="training seeds, comma-separated: each arm runs once per seed (1337: the presets' own)")
    parser.add_argument("--again", action="store_true", help="measure these budgets again (the file keeps the earlier measurement under 'earlier')")
    args = parser.parse_args()
    path = RESULTS / f"time_dial-{cpu_kind()}.json"
    results = json.loads(path.read_text()) if path.exists() else {"benchmark": "time_dial", "machine": {**machine(), "cpu_kind": cpu_kind()},
                                                                   "budgets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        run_process(TINYGPT + ["prepare", "shakespeare", "--source", str(args.source), "--data-dir", str(data)])
        for budget in (int(b) for b in args.budgets.split(",")):
            if str(budget) in results["budgets"] and not args.again:
                continue
            rows = []
            for seed, arm in ((seed, arm) for seed in (int(s) for s in args.seeds.split(",")) for arm in ARMS):
                rows.append(measure(arm, budget, seed, data, Path(tmp)))
                r = rows[-1]
                print(f"{budget} s, {arm}, seed {seed}: {r['shape']} x {r['iters']:,} iterations, val {r['final_val_loss']:.4f} "
                      f"(predicted {r['predicted_val_loss']:.4f}), wall {r['wall_s']:.1f} s, load {r['load_average']}", flush=True)
            best = hand_sweep_best(budget)
            earlier = results["budgets"].get(str(budget))
            results["budgets"][str(budget)] = {"runs": rows, "hand_sweep_best": best, "verdict": verdict(rows, best),
                                               **({"earlier": [earlier, *earlier.pop("earlier", [])]} if earlier else {})}
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"{budget} s: {results['budgets'][str(budget)]['verdict']}", flush=True)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
