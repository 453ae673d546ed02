"""Training throughput on CPU at nanoGPT's CPU-recipe shape (4/4/128, block 64, batch 12, dropout 0).

Training steps are timed in the same process, on the same model class and synthetic data:
- tinygpt's real step (Trainer.train_step: windows gathered from one int64 tensor, fused AdamW,
  attention by hand under CPU mixed precision, PyTorch's fused kernel in float32) in the default precision (bfloat16 mixed precision on a CPU that
  multiplies bfloat16 in hardware, then also in float32), else float32;
- a nanoGPT-style step: each batch sliced from a numpy memmap and stacked into new tensors,
  non-fused AdamW, as nanoGPT's train.py does on a CPU.
With `--nanogpt-dir PATH` (a checkout of karpathy/nanoGPT with data/shakespeare_char prepared),
whole training loops also run the recipe, alternated with the steps above: nanoGPT's own
train.py (its printed per-iteration times), the real baseline on this machine, and `tinygpt
train` on `--data-dir` (per-iteration times from its metrics.jsonl) in the default precision and
in float32, loop overheads included on every side.
Also reported: achieved GFLOP/s (6N + 12·L·d·T per token) as a fraction of what float32 matrix
products reach at the recipe's shapes (tinygpt_cli/peak.py). The issue's target: at least 1.4x nanoGPT's tokens/s (≈60 ms/iteration on the reference
machines, 12.8k tokens/s).

Usage: python benchmarks/bench_train_throughput.py [--steps 30] [--repeats 5] [--preset cpu] [--nanogpt-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import TINYGPT, report
from tinygpt_cli.peak import measure_matmul_peak
from tinygpt_cli.runs.bench import synthetic_dataset, time_steps, time_training_steps, training_step_fn
from tinygpt_cli.config import resolve_config
from tinygpt_cli.system.devices import pick_dtype
from tinygpt_cli.model import GPT
from tinygpt_cli.params import param_report

NANOGPT_RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0,
                      learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=2000,
                      pos_embedding="learned", optimizer="adamw")  # the classic GPT, as nanoGPT trains it


def nanogpt_style_step(config, tmp: str):
    """A nanoGPT-like step: memmap slices + torch.stack per batch, non-fused AdamW."""
    m, t = config.model, config.train
    path = Path(tmp) / "train.bin"
    synthetic_dataset(m.vocab_size).train.tofile(path)
    torch.manual_seed(t.seed)
    model = GPT(m)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=False)

    def get_batch():
        data = np.memmap(path, dtype=np.uint16, mode="r")  # nanoGPT re-opens the memmap every batch
        ix = torch.randint(len(data) - m.block_size, (t.batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + m.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + m.block_size].astype(np.int64)) for i in ix])
        return x, y

    def step():
        x, y = get_batch()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def nanogpt_iteration_ms(nanogpt_dir: Path, iters: int, out_dir: str) -> list[float]:
    """Per-iteration times that nanoGPT's train.py prints for the CPU recipe (its first 5 dropped)."""
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
           "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
           "--n_embd=128", f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0",
           "--eval_interval=1000000", "--always_save_checkpoint=False", f"--out_dir={out_dir}"]
    proc = subprocess.run(cmd, cwd=nanogpt_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nanoGPT failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    times = [float(ms) for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", proc.stdout, re.MULTILINE)]
    return times[5:]


def tinygpt_iteration_ms(data_dir: str, iters: int, out_dir: Path, dtype: str) -> list[float]:
    """Per-iteration times of `tinygpt train` on the recipe, from metrics.jsonl (its first 50 steps dropped)."""
    flags = {"batch-size": 12, "learning-rate": 1e-3, "min-lr": 1e-4, "warmup-iters": 100, "max-iters": iters,
             "eval-interval": iters, "eval-iters": 2, "dtype": dtype}
    cmd = TINYGPT + ["train", "--preset", "cpu-classic", "--data-dir", data_dir, "--out", str(out_dir), "--overwrite"]
    cmd += [arg for name, value in flags.items() for arg in (f"--{name}", str(value))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tinygpt train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_s" in r and r["iter"] >= 50]
    return [(b["elapsed"] - a["elapsed"]) * 1000 / (b["iter"] - a["iter"]) for a, b in zip(steps, steps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default=None, help="also time this preset's own shape (e.g. cpu)")
    parser.add_argument("--nanogpt-dir", type=Path, default=None, help="a nanoGPT checkout to run as the real baseline")
    parser.add_argument("--data-dir", default="data/shakespeare", help="prepared data for the tinygpt loop (with --nanogpt-dir)")
    args = parser.parse_args()
    from tinygpt_cli.system.process import init_process

    threads = init_process()  # a real run's thread policy and memory settings, as the CLI's
    config = resolve_config("cpu", None, NANOGPT_RECIPE)
    peak = measure_matmul_peak(config.model, config.train.batch_size, torch.device("cpu"), torch.float32).gflops
    flops = param_report(config.model).flops_per_token()
    tokens = config.train.batch_size * config.model.block_size
    with tempfile.TemporaryDirectory() as tmp:
        auto = str(pick_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
        steps = {"nanoGPT-style step": nanogpt_style_step(config, tmp), f"tinygpt step ({auto})": training_step_fn(config, threads=threads)}
        if auto != "float32":  # this CPU multiplies bfloat16 in hardware: float32 too, for comparison
            float32 = resolve_config("cpu", None, {**NANOGPT_RECIPE, "dtype": "float32"})
            steps["tinygpt step (float32)"] = training_step_fn(float32, threads=threads)
        for step in steps.values():
            time_steps(step, 3)
        # Alternate them, so that the machine's drifts hit both alike.
        samples = {name: [] for name in steps}
        loop_dtypes = dict.fromkeys([auto, "float32"])  # float32 too where auto is bfloat16
        loops: dict[str, list[float]] = {"nanoGPT train.py loop": []} | {f"tinygpt train loop ({d})": [] for d in loop_dtypes}
        for _ in range(args.repeats):
            for name, step in steps.items():
                samples[name].append(time_steps(step, args.steps))
            if args.nanogpt_dir:
                loops["nanoGPT train.py loop"] += nanogpt_iteration_ms(args.nanogpt_dir, 5 * args.steps, tmp)
                for dtype in loop_dtypes:
                    loops[f"tinygpt train loop ({dtype})"] += tinygpt_iteration_ms(args.data_dir, 5 * args.steps, Path(tmp) / "run", dtype)
    baseline = "nanoGPT-style step"
    if args.nanogpt_dir:
        baseline = "nanoGPT train.py loop"
        samples = {name: [statistics.median(values)] for name, values in loops.items()} | samples
    theirs_ms = statistics.median(samples[baseline])
    rows = []
    for name, values in samples.items():
        ms = statistics.median(values)
        tps = tokens / (ms / 1000)
        rows.append({"shape": "4/4/128 T64 B12", "step": name, "ms_per_iter": ms, "tokens_per_s": tps,
                     "gflops": tps * flops / 1e9, "of_peak": tps * flops / 1e9 / peak, "speedup": theirs_ms / ms,
                     "vs_nanogpt_60ms_reference": 60.0 / ms})
    if args.preset:
        preset = resolve_config(args.preset, None, {})
        timing = time_training_steps(preset, steps=args.steps, repeats=args.repeats, threads=threads)
        rows.append({"shape": f"preset {args.preset}", "step": "tinygpt step", "ms_per_iter": timing.ms_per_iter,
                     "tokens_per_s": timing.tokens_per_s, "gflops": timing.gflops, "of_peak": timing.gflops / peak,
                     "speedup": float("nan"), "vs_nanogpt_60ms_reference": float("nan")})
    report("train_throughput", rows, {"speedup_against": baseline, "matmul_peak_gflops": peak, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
