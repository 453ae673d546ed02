"""Training from a split read through np.memmap against the same split in memory, at the cpu
preset's shape: the real training step, alternated, medians. Target (issue): within 5%.

The split is synthetic token ids written to a file: the step's time does not depend on the text.

Usage: python benchmarks/bench_memmap.py [--repeats 5] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    from tinygpt_cli.system.process import init_process

    threads = init_process()  # a real run's thread policy and memory settings, as the CLI's
    from tinygpt_cli.runs.bench import synthetic_dataset, time_steps, training_step_fn
    from tinygpt_cli.config import resolve_config

    config = resolve_config("cpu", None, {"vocab_size": 65})
    in_memory = synthetic_dataset(65, n_tokens=10_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.bin"
        in_memory.train.tofile(path)
        mapped = replace(in_memory, train=np.memmap(path, dtype=in_memory.train.dtype, mode="r"))
        steps = {"in memory": training_step_fn(config, in_memory, threads), "np.memmap": training_step_fn(config, mapped, threads)}
        samples: dict[str, list[float]] = {name: [] for name in steps}
        for step in steps.values():
            time_steps(step, 5)  # warm-up
        for _ in range(args.repeats):
            for name, step in steps.items():
                samples[name].append(time_steps(step, args.steps))
    base = statistics.median(samples["in memory"])
    rows = [{"split": name, "ms_per_step": round(statistics.median(v), 2), "vs_in_memory": round(statistics.median(v) / base, 3),
             "all_ms": [round(x, 2) for x in v], "load_average_1min": round(os.getloadavg()[0], 2)} for name, v in samples.items()]
    report("memmap", rows, {"preset": "cpu", "tokens": len(in_memory.train)})


if __name__ == "__main__":
    main()
