"""Muon's Newton-Schulz products in float32 against bfloat16, in the cpu preset's real step.

The cpu preset (4 layers, 128 wide, batch 16 x 64, Muon) spends a large part of each step
orthogonalising the blocks' 16 momentum matrices: 2.35 GFLOP of products per step, against about
5 GFLOP for the model's own forward and backward. A training in bfloat16 now runs them in
bfloat16 (optim.py:orthogonalize). Here one Trainer times its real step (Trainer.train_step, on
synthetic data) with the products in each precision, alternated in blocks of steps within one
process, so that the machine's drifts hit both alike. Also timed: the products alone.

Usage: python benchmarks/bench_muon.py [--blocks 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from common import report
from tinygpt_cli.config import resolve_config
from tinygpt_cli.optim import orthogonalize
from tinygpt_cli.runs.bench import synthetic_dataset, time_steps
from tinygpt_cli.train import Trainer

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Seconds of steps before timing: on a 2-core Zen 4 the first 10 to 15 s of steps ran up to 40%
# slower than the rest (63, 60, 55, then 46 to 48 ms a step).
WARM_S = 20


def products_ms(trainer: Trainer, dtype: torch.dtype, repeats: int = 20) -> float:
    """Milliseconds for one step's Newton-Schulz products alone: each shape's stack of matrices."""
    stacks = {}
    for name, p in trainer.model.named_parameters():
        if p.dim() == 2 and name.startswith("blocks."):
            stacks.setdefault(p.shape, []).append(torch.randn(p.shape))
    stacks = [torch.stack(ms) for ms in stacks.values()]
    def products() -> None:
        for s in stacks:
            orthogonalize(s, dtype=dtype)

    products()
    return time_steps(products, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=8, help="alternations of the two precisions")
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    config = resolve_config("cpu", None, {"vocab_size": 65})
    trainer = Trainer(config, synthetic_dataset(65))
    if trainer.dtype != torch.bfloat16:
        raise SystemExit(f"this machine trains the cpu preset in {trainer.dtype}: Muon's products stay float32 there")
    warm_until = time.perf_counter() + WARM_S
    while time.perf_counter() < warm_until:
        trainer.train_step()
    loads = [os.getloadavg()[0]]
    steps: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    for _ in range(args.blocks):
        for name, dtype in PRECISIONS.items():
            trainer.optimizer.ns_dtype = dtype
            steps[name].append(time_steps(trainer.train_step, args.steps))
        loads.append(os.getloadavg()[0])
    baseline = statistics.median(steps["float32"])
    rows = [{"products": name, "step_ms": statistics.median(values), "step_ms_all": [round(v, 1) for v in values],
             "products_alone_ms": products_ms(trainer, dtype), "step_vs_float32": statistics.median(values) / baseline}
            for (name, dtype), values in zip(PRECISIONS.items(), steps.values())]
    report("muon", rows, {"preset": "cpu", "threads": torch.get_num_threads(), "steps_per_block": args.steps,
                          "load_average": [round(v, 2) for v in loads]}, per_cpu_kind=True)


if __name__ == "__main__":
    main()
