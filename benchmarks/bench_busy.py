"""Training throughput on a busy machine: quiet, then with one and two CPU-bound processes beside it.

Each measurement is a fresh process that times real training steps (Trainer.train_step, with the
thread policy a real run uses, on synthetic data) for two workloads:
- the cpu preset (4/4/128, block 64, batch 16);
- a tiny model (2 layers, 32 wide, block 32, batch 8).
Variants, alternated within each load so that drifts hit them alike:
- `tinygpt`: the default policy (threads.py: fewer threads while other processes use the cores);
- `fixed 2 threads`: OMP_NUM_THREADS=2, which is what every run did before the policy (torch's
  default of one thread per core, spinning OpenMP workers);
- with `--nanogpt-dir` (a nanoGPT checkout with data/shakespeare_char prepared): nanoGPT's own
  train.py at the cpu preset's shape, its printed per-iteration times.
The background load is `--load` processes spinning in pure Python, started and stopped here,
each bounded to 15 minutes. Reported per row: median ms per step over the repeats, tokens/s,
the load average, and the throughput as a fraction of the same variant's quiet throughput.

Usage: python benchmarks/bench_busy.py [--repeats 3] [--loads 0,1,2] [--nanogpt-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import clean_env, report, start_hogs, stop_hogs
from tinygpt_cli.system.devices import pick_dtype

WORKLOADS = {
    "cpu preset": dict(vocab_size=65),
    "tiny": dict(vocab_size=65, n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8),
}
STEPS = {"cpu preset": 60, "tiny": 400}
VARIANTS = {"tinygpt": {}, "fixed 2 threads": {"OMP_NUM_THREADS": "2"}}

_CHILD = r"""
import json, sys
import torch
from tinygpt_cli.runs.bench import time_training_steps
from tinygpt_cli.config import resolve_config
from tinygpt_cli.system.process import init_process
flags, steps = json.loads(sys.argv[1]), int(sys.argv[2])
timing = time_training_steps(resolve_config("cpu", None, {**flags, "device": "cpu"}), steps=steps, warmup=3, repeats=1,
                             threads=init_process())
print(json.dumps({"ms": timing.ms_per_iter, "tokens_per_iter": timing.tokens_per_iter, "threads_at_end": torch.get_num_threads()}))
"""


def time_tinygpt(workload: str, variant: str) -> dict:
    cmd = [sys.executable, "-c", _CHILD, json.dumps(WORKLOADS[workload]), str(STEPS[workload])]
    proc = subprocess.run(cmd, env=clean_env(VARIANTS[variant]), capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise SystemExit(f"{variant} on {workload} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_nanogpt(nanogpt_dir: Path, iters: int) -> dict:
    """nanoGPT's train.py at the cpu preset's shape (learned positions and AdamW: its only recipe)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
               "--eval_iters=1", "--log_interval=1", "--block_size=64", "--batch_size=16", "--n_layer=4", "--n_head=4",
               "--n_embd=128", f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0",
               "--eval_interval=1000000", "--always_save_checkpoint=False", f"--out_dir={out}"]
        proc = subprocess.run(cmd, cwd=nanogpt_dir, env=clean_env({}), capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise SystemExit(f"nanoGPT failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    times = [float(ms) for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", proc.stdout, re.MULTILINE)][5:]
    return {"ms": statistics.median(times), "tokens_per_iter": 16 * 64, "threads_at_end": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loads", default="0,1,2", help="numbers of CPU-bound background processes")
    parser.add_argument("--nanogpt-dir", type=Path, default=None)
    args = parser.parse_args()
    loads = [int(n) for n in args.loads.split(",")]
    samples: dict[tuple, list[dict]] = {}
    load_avg: dict[int, list[float]] = {}
    for load in loads:
        hogs = start_hogs(load)
        try:
            for _ in range(args.repeats):
                for workload in WORKLOADS:
                    for variant in VARIANTS:
                        samples.setdefault((load, workload, variant), []).append(time_tinygpt(workload, variant))
                    if workload == "cpu preset" and args.nanogpt_dir:
                        samples.setdefault((load, workload, "nanoGPT train.py"), []).append(time_nanogpt(args.nanogpt_dir, 60))
                    load_avg.setdefault(load, []).append(os.getloadavg()[0])
        finally:
            stop_hogs(hogs)
        print(f"load {load}: done", flush=True)
    rows = []
    for (load, workload, variant), runs in samples.items():
        ms = statistics.median(r["ms"] for r in runs)
        quiet = samples.get((0, workload, variant))
        quiet_ms = statistics.median(r["ms"] for r in quiet) if quiet else float("nan")
        rows.append({"background_processes": load, "workload": workload, "variant": variant, "ms_per_step": ms,
                     "tokens_per_s": runs[0]["tokens_per_iter"] / (ms / 1000), "of_quiet": quiet_ms / ms,
                     "threads_at_end": runs[-1]["threads_at_end"], "load_avg_1min": statistics.median(load_avg[load])})
    nanogpt_rows = {r["background_processes"]: r for r in rows if r["variant"] == "nanoGPT train.py"}
    for r in rows:
        theirs = nanogpt_rows.get(r["background_processes"])
        r["vs_nanogpt"] = theirs["ms_per_step"] / r["ms_per_step"] if theirs and r["workload"] == "cpu preset" else float("nan")
    precision = str(pick_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    report("busy", rows, {"repeats": args.repeats, "steps": STEPS, "precision": f"--dtype auto: {precision}"})


if __name__ == "__main__":
    main()
