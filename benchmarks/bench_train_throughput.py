"""Training throughput on CPU at nanoGPT's CPU-recipe shape (4/4/128, block 64, batch 12, dropout 0).

Two training steps are timed in the same process, on the same model class and synthetic data:
- tinygpt's real step (Trainer.train_step: windows gathered from one int64 tensor, fused AdamW,
  SDPA's fused kernel);
- a nanoGPT-style step: each batch sliced from a numpy memmap and stacked into new tensors,
  non-fused AdamW, as nanoGPT's train.py does on a CPU.
Also reported: achieved GFLOP/s (6N + 12·L·d·T per token) as a fraction of a measured fp32 matmul
peak. The issue's target: at least 1.4x nanoGPT's tokens/s (≈60 ms/iteration here, 12.8k tokens/s).

Usage: python benchmarks/bench_train_throughput.py [--steps 30] [--repeats 5] [--preset cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import report
from tinygpt_cli.bench import matmul_peak_gflops, synthetic_dataset, time_steps, time_training_steps, training_step_fn
from tinygpt_cli.config import resolve_config
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default=None, help="also time this preset's own shape (e.g. cpu)")
    args = parser.parse_args()
    peak = matmul_peak_gflops(n=2048)
    config = resolve_config("cpu", None, NANOGPT_RECIPE)
    flops = param_report(config.model).flops_per_token()
    tokens = config.train.batch_size * config.model.block_size
    with tempfile.TemporaryDirectory() as tmp:
        steps = {"nanoGPT-style step": nanogpt_style_step(config, tmp), "tinygpt step": training_step_fn(config, tmp)}
        for step in steps.values():
            time_steps(step, 3)
        # Alternate the two, so that the machine's drifts hit both alike.
        samples = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                samples[name].append(time_steps(step, args.steps))
    theirs_ms = statistics.median(samples["nanoGPT-style step"])
    rows = []
    for name, values in samples.items():
        ms = statistics.median(values)
        tps = tokens / (ms / 1000)
        rows.append({"shape": "4/4/128 T64 B12", "step": name, "ms_per_iter": ms, "tokens_per_s": tps,
                     "gflops": tps * flops / 1e9, "of_peak": tps * flops / 1e9 / peak, "speedup": theirs_ms / ms,
                     "vs_nanogpt_60ms_reference": 60.0 / ms})
    if args.preset:
        preset = resolve_config(args.preset, None, {})
        timing = time_training_steps(preset, steps=args.steps, repeats=args.repeats)
        rows.append({"shape": f"preset {args.preset}", "step": "tinygpt step", "ms_per_iter": timing.ms_per_iter,
                     "tokens_per_s": timing.tokens_per_s, "gflops": timing.gflops, "of_peak": timing.gflops / peak,
                     "speedup": float("nan"), "vs_nanogpt_60ms_reference": float("nan")})
    report("train_throughput", rows, {"matmul_peak_gflops": peak, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
