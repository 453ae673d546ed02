"""The library as fast as the command line, on a busy machine: the README's library example
(load a checkpoint, score the whole validation split) against `tinygpt eval`.

Each measurement is a whole fresh process, timed from start to exit, with `--load` CPU-bound
processes spinning beside it (started and stopped here). Variants, alternated in each repeat so
that drifts hit them alike:
- `library`: score_split, nothing else set (torch's default threads: one per core, spinning);
- `library + init_process()`: the same after tinygpt_cli.init_process(), which the README shows;
- `tinygpt eval`: the command line, which calls init_process itself.
Reported: median seconds over the repeats, the ratio to `tinygpt eval`, the load average.

Usage: python benchmarks/bench_library.py --run runs/demo --data-dir data/shakespeare [--repeats 3] [--load 1]
(`make demo` makes runs/demo and data/shakespeare.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from common import TINYGPT, clean_env, report, run_process, start_hogs, stop_hogs

LIBRARY = r"""
import sys
from pathlib import Path
from tinygpt_cli import byte_lengths, eval_dataset, init_process, load_model, score_split
if sys.argv[3] == "init":
    init_process()
checkpoint = Path(sys.argv[1]) / "best.safetensors"
model, ckpt = load_model(checkpoint)
dataset = eval_dataset(ckpt, checkpoint, sys.argv[2])
print(score_split(model, dataset.val, byte_lengths(dataset.tokenizer)).bits_per_byte)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--data-dir", type=Path, default=Path("data/shakespeare"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=1, help="CPU-bound background processes")
    args = parser.parse_args()
    variants = {
        "library": [sys.executable, "-c", LIBRARY, str(args.run), str(args.data_dir), "plain"],
        "library + init_process()": [sys.executable, "-c", LIBRARY, str(args.run), str(args.data_dir), "init"],
        "tinygpt eval": [*TINYGPT, "eval", "--run", str(args.run), "--data-dir", str(args.data_dir), "--json"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    load_avg = []
    hogs = start_hogs(args.load)
    try:
        for _ in range(args.repeats):
            for name, cmd in variants.items():
                wall, _, _ = run_process(cmd, env=clean_env({}), timeout=900)
                seconds[name].append(wall)
                load_avg.append(os.getloadavg()[0])
    finally:
        stop_hogs(hogs)
    cli = statistics.median(seconds["tinygpt eval"])
    rows = [{"variant": name, "median_s": statistics.median(values), "vs_tinygpt_eval": statistics.median(values) / cli,
             "runs_s": ", ".join(f"{v:.2f}" for v in values)} for name, values in seconds.items()]
    report("library", rows, {"background_processes": args.load, "repeats": args.repeats, "run": str(args.run),
                             "load_avg_1min_median": statistics.median(load_avg)})


if __name__ == "__main__":
    main()
