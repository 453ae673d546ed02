"""Sampling speed of the baby GPT (6/6/384, block 256) on this machine's CPU.

Whole process (`tinygpt generate`, 1000 characters, import and load included) with the KV cache
in the default precision (auto: float16 weights on a CPU) and in float32, and without the cache,
plus characters/s once started, measured in-process. Reference: nanoGPT's
sample.py takes about 69 s for the whole process on these 2-core machines (no KV cache).
Speed does not depend on what the weights learned, so a freshly initialised model is used.

Usage: python benchmarks/bench_sampling.py [--repeats 3] [--chars 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import TINYGPT, median, report, run_process
from tinygpt_cli.checkpoint import Checkpoint, model_weights, save_checkpoint
from tinygpt_cli.config import PRESETS, ModelConfig
from tinygpt_cli.model import GPT
from tinygpt_cli.sampling import generate, set_sampling_precision
from tinygpt_cli.data.vocab import Vocabulary

NANOGPT_WHOLE_PROCESS_S = 69.0


def baby_checkpoint(folder: Path) -> tuple[Path, GPT]:
    shape = {k: PRESETS["baby"][k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    config = ModelConfig(vocab_size=65, **shape)
    torch.manual_seed(0)
    model = GPT(config).eval()
    vocab = Vocabulary(tuple(chr(c) for c in range(58, 58 + 65)))  # 65 printable characters, "A" among them
    path = folder / "baby.safetensors"
    save_checkpoint(path, Checkpoint("best", config, vocab, 0, model_weights(model)))
    return path, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chars", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path, reference = baby_checkpoint(Path(tmp))
        for cache, dtype_name in ((True, "auto"), (True, "float32"), (False, "float32")):
            flag = "--kv-cache" if cache else "--no-kv-cache"
            cmd = TINYGPT + ["generate", "--checkpoint", str(path), "--prompt", "A", "--max-new-tokens", str(args.chars),
                             "--seed", "1", flag, "--dtype", dtype_name]
            model = GPT(reference.config).eval()
            model.load_state_dict(reference.state_dict())
            set_sampling_precision(model, dtype_name)
            walls, peaks = [], []
            for _ in range(args.repeats):
                wall, peak, _ = run_process(cmd)
                walls.append(wall)
                peaks.append(peak)
            rates = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                n = sum(1 for _ in generate(model, [0], args.chars, seed=1, kv_cache=cache))
                rates.append(n / (time.perf_counter() - t0))
            whole = median(walls)
            rows.append({"kv_cache": cache, "dtype": dtype_name, "whole_process_s": whole, "chars_per_s_started": median(rates),
                         "speedup_vs_nanogpt_69s": NANOGPT_WHOLE_PROCESS_S / whole, "peak_rss_mib": max(peaks)})
    report("sampling", rows, {"chars": args.chars, "model": "baby 6/6/384 block 256"})


if __name__ == "__main__":
    main()
