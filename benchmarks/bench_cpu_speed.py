"""How close tinygpt comes to this CPU's own limit, and to nanoGPT, alternated in one run.

1. The baby preset's training step (6/6/384, block 256, batch 64, dropout 0.2), the real step
   (Trainer.train_step) in the default precision: with tinygpt's dropout, with torch's
   F.dropout in its place (what tinygpt did before, on a CPU with fast bfloat16 like the one
   measured; on a float32-only CPU attention took the fused kernel then, not this variant's
   by-hand path), and with dropout 0; with --nanogpt-dir,
   nanoGPT's own train.py on its baby config (float32 on a CPU, compile off), its printed
   per-iteration times. Alternated, so that the machine's drifts hit all alike.
2. The peak: what the step's own matrix products reach on this machine (tinygpt_cli/peak.py), in
   bfloat16 and float32, and the step's rate (6N + attention FLOPs) as a fraction of it.
3. Where a step goes (torch.profiler, one step): dropout's ops, the casts (copy_), and what the
   weights' casts cost alone, against keeping bfloat16 copies of them.
4. Sampling 1,000 characters from the baby GPT: the whole process, the first character's
   arrival after the process starts (under a pseudo-terminal, where generate streams), and the
   rate once started; with --nanogpt-dir, nanoGPT's sample.py on the same shape, whole process.
The cpu preset's time to quality is bench_time_to_loss.py's.

nanoGPT runs from a scratch copy of --nanogpt-dir, with --source as its input.txt.

Usage: python benchmarks/bench_cpu_speed.py [--repeats 3] [--nanogpt-dir PATH/TO/nanoGPT --source PATH/TO/input.txt]
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tinygpt_cli.model as model_module
from bench_sampling import baby_checkpoint
from common import TINYGPT, clean_env, report, run_process
from tinygpt_cli.config import resolve_config
from tinygpt_cli.params import param_report
from tinygpt_cli.peak import measure_matmul_peak
from tinygpt_cli.runs.bench import time_steps, training_step_fn, warm_up
from tinygpt_cli.system.devices import pick_dtype
from tinygpt_cli.system.process import init_process

BABY = {"vocab_size": 65}
OURS = model_module.dropout


def torch_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(x, p, training)


def step_variants(threads) -> dict:
    """name -> (dropout function, step): the real training step of the baby preset."""
    variants = {"tinygpt dropout 0.2": (OURS, 0.2), "F.dropout 0.2 (before)": (torch_dropout, 0.2), "dropout 0": (OURS, 0.0)}
    steps = {}
    for name, (fn, p) in variants.items():
        model_module.dropout = fn
        steps[name] = (fn, training_step_fn(resolve_config("baby", None, {**BABY, "dropout": p}), threads=threads))
        warm_up(steps[name][1])
    model_module.dropout = OURS
    return steps


def timed_step(fn, step, n: int) -> float:
    model_module.dropout = fn
    try:
        return time_steps(step, n)
    finally:
        model_module.dropout = OURS


def prepare_nanogpt(source_dir: Path, text: Path, scratch: Path) -> Path:
    """A scratch copy of nanoGPT with shakespeare_char prepared and a baby checkpoint of its own."""
    nano = scratch / "nanoGPT"
    shutil.copytree(source_dir, nano, ignore=shutil.ignore_patterns("out*", "*.bin", "*.pkl"))
    data = nano / "data" / "shakespeare_char"
    shutil.copy(text, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    # sample.py reads out/ckpt.pt: nanoGPT's own format, written by its own model class.
    code = ("import torch, os\nfrom model import GPT, GPTConfig\ntorch.manual_seed(0)\n"
            "args = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, bias=False, vocab_size=65, dropout=0.0)\n"
            "os.makedirs('out', exist_ok=True)\n"
            "torch.save({'model': GPT(GPTConfig(**args)).state_dict(), 'model_args': args, 'iter_num': 0, 'best_val_loss': 0.0,"
            " 'config': {'dataset': 'shakespeare_char'}}, 'out/ckpt.pt')\n")
    subprocess.run([sys.executable, "-c", code], cwd=nano, check=True, capture_output=True)
    return nano


def nanogpt_step_ms(nano: Path, iters: int) -> list[float]:
    """nanoGPT's train.py on its baby config (dropout 0.2), per-iteration times; its first (an
    evaluation's) dropped."""
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
           "--eval_iters=1", "--log_interval=1", f"--max_iters={iters}", "--eval_interval=1000000",
           "--always_save_checkpoint=False", "--out_dir=out-train"]
    proc = subprocess.run(cmd, cwd=nano, env=clean_env({}), capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"nanoGPT's train.py failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return [float(ms) for ms in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", proc.stdout, re.MULTILINE)][1:]


def first_output_s(cmd: list[str], after: int) -> float:
    """Seconds from the start of `cmd` until it has written more than `after` bytes, under a
    pseudo-terminal (where generate flushes each character)."""
    leader, follower = pty.openpty()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=follower, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    os.close(follower)
    seen, arrived = 0, None
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            seen += len(chunk)
            if arrived is None and seen > after:
                arrived = time.perf_counter() - t0
    finally:
        os.close(leader)
        proc.wait()
    if arrived is None:
        raise SystemExit(f"no output from {' '.join(cmd)}")
    return arrived


def profile_step(fn, step) -> dict:
    """One step under torch.profiler: self seconds of the mask's ops (drawing, comparing, scaling), of copy_ (casts, and the mask's conversion to the activations' type), of matrix products."""
    from torch.profiler import ProfilerActivity, profile

    model_module.dropout = fn
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
    finally:
        model_module.dropout = OURS
    totals = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    mask_ops = ("aten::bernoulli_", "aten::random_", "aten::lt", "aten::div_")
    return {"profiled_step_s": sum(totals.values()),
            "mask_s": sum(totals.get(k, 0.0) for k in mask_ops),
            "copy_s": totals.get("aten::copy_", 0.0),
            "matmul_s": sum(totals.get(k, 0.0) for k in ("aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm"))}


def weight_cast_ms(config, repeats: int = 5) -> float:
    """What autocast's casts of the float32 weights to bfloat16 cost per micro-step: each weight once."""
    from tinygpt_cli.model import GPT

    weights = [p for p in GPT(config.model).parameters() if p.dim() == 2]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in weights:
            w.to(torch.bfloat16)
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def row(what: str, precision: str, ms: float, ms_all: list[float], **figures: float) -> dict:
    """One result, with every column (report's table takes its columns from the first row)."""
    columns = ("gflops", "of_peak", "of_best_shape", "first_char_ms", "chars_per_s_after_first", "tinygpt_faster_by")
    return {"what": what, "precision": precision, "ms": ms, "ms_all": [round(v, 1) for v in ms_all],
            **{c: figures.get(c, "") for c in columns}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="tinygpt steps per timed sample")
    parser.add_argument("--nanogpt-dir", type=Path, default=None, help="a nanoGPT checkout, to run its own train.py and sample.py")
    parser.add_argument("--source", type=Path, default=None, help="tiny Shakespeare's input.txt, for nanoGPT's data (with --nanogpt-dir)")
    parser.add_argument("--chars", type=int, default=1000)
    args = parser.parse_args()
    if args.nanogpt_dir and not args.source:
        parser.error("--nanogpt-dir needs --source (nanoGPT's input.txt)")
    threads = init_process()
    config = resolve_config("baby", None, BABY)
    cpu = torch.device("cpu")
    dtype = pick_dtype("auto", cpu)
    flops_per_step = param_report(config.model).flops_per_token() * config.train.batch_size * config.model.block_size
    rows, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        nano = prepare_nanogpt(args.nanogpt_dir, args.source, Path(tmp)) if args.nanogpt_dir else None
        steps = step_variants(threads)
        samples: dict[str, list[float]] = {name: [] for name in steps} | ({"nanoGPT train.py": []} if nano else {})
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            for name, (fn, step) in steps.items():
                samples[name].append(timed_step(fn, step, args.steps))
            if nano:
                samples["nanoGPT train.py"].append(statistics.median(nanogpt_step_ms(nano, 4)))
        peaks = {str(d).removeprefix("torch."): measure_matmul_peak(config.model, config.train.batch_size, cpu, d)
                 for d in dict.fromkeys([dtype, torch.float32])}  # best of 3 per shape, as bench and train measure it
        ours = statistics.median(samples["tinygpt dropout 0.2"])
        for name, values in samples.items():
            ms = statistics.median(values)
            gflops = flops_per_step / (ms / 1000) / 1e9
            precision = "float32" if name.startswith("nanoGPT") else str(dtype).removeprefix("torch.")
            peak = peaks[precision]
            rows.append(row(f"baby step: {name}", precision, ms, values, gflops=gflops, of_peak=peak.utilisation(gflops),
                            of_best_shape=gflops / peak.best_gflops, tinygpt_faster_by=ms / ours))
        profiles = {name: profile_step(fn, step) for name, (fn, step) in steps.items() if "0.2" in name}
        casts = weight_cast_ms(config)

        # Sampling: whole process, first character, rate once started.
        path, _ = baby_checkpoint(Path(tmp))
        cmd = TINYGPT + ["generate", "--checkpoint", str(path), "--prompt", "A", "--max-new-tokens", str(args.chars), "--seed", "1"]
        whole, first = [], []
        run_process(cmd)  # the file cache warm
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            whole.append(run_process(cmd)[0])
            first.append(first_output_s(cmd, after=len("A")))
        rate = args.chars / (statistics.median(whole) - statistics.median(first))
        rows.append(row(f"sampling {args.chars} characters: tinygpt generate", "auto", 1000 * statistics.median(whole),
                        [1000 * v for v in whole], first_char_ms=1000 * statistics.median(first), chars_per_s_after_first=rate))
        if nano:
            nano_cmd = [sys.executable, "sample.py", "--out_dir=out", "--device=cpu", "--num_samples=1",
                        f"--max_new_tokens={args.chars}", "--start=A", "--compile=False"]
            nano_whole = [run_process(nano_cmd, cwd=nano, env=clean_env({}))[0] for _ in range(args.repeats)]
            rows.append(row(f"sampling {args.chars} characters: nanoGPT sample.py", "float32", 1000 * statistics.median(nano_whole),
                            [1000 * v for v in nano_whole], tinygpt_faster_by=statistics.median(nano_whole) / statistics.median(whole)))
    report("cpu_speed", rows, {"peaks": {k: v.to_dict() for k, v in peaks.items()}, "profiles_s": profiles,
                               "weight_casts_ms_per_micro_step": casts, "load_average": loads,
                               "step_flops": flops_per_step}, per_cpu_kind=True)


if __name__ == "__main__":
    main()
