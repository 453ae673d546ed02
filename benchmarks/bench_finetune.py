"""How fast a CPU fine-tunes GPT-2 124M (`train --init-from gpt2`): the real training step at
GPT-2's shape (12 layers, 12 heads, width 768, 50,257 tokens, biases, tanh GELU).

The weights are random: a step costs the same whatever the weights hold, and this machine cannot
download GPT-2. Reported per setting: median seconds per optimiser step over the repeats, tokens
per second, peak memory of the process, the load average beside it, and what nanoGPT's
`config/finetune_shakespeare.py` budget (20 steps of 32 x 1024 tokens) would take at that speed.

Usage: python benchmarks/bench_finetune.py [--steps 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource

from common import report
from tinygpt_cli.runs.bench import time_training_steps
from tinygpt_cli.config import resolve_config
from tinygpt_cli.system.devices import pick_dtype

GPT2_SHAPE = dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, bias=True, activation="gelu_tanh", dropout=0.0)
NANOGPT_FINETUNE_TOKENS = 20 * 32 * 1024  # max_iters x gradient_accumulation_steps x block_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from tinygpt_cli.system.process import init_process

    threads = init_process()  # a real run's thread policy and memory settings, as the CLI's
    rows = []
    default = pick_dtype("auto", __import__("torch").device("cpu"))
    for block, batch in ((256, 4), (1024, 1)):
        for dtype in dict.fromkeys([str(default).removeprefix("torch."), "float32"]):
            config = resolve_config(None, None, {**GPT2_SHAPE, "block_size": block, "batch_size": batch, "dtype": dtype,
                                                  "device": "cpu", "data_dir": "."})
            load_before = os.getloadavg()[0]
            timing = time_training_steps(config, steps=args.steps, warmup=1, repeats=args.repeats, threads=threads)
            seconds = timing.ms_per_iter / 1000
            rows.append({"block": block, "batch": batch, "dtype": dtype, "s_per_step": seconds,
                         "tokens_per_s": timing.tokens_per_iter / seconds,
                         "nanogpt_finetune_h": NANOGPT_FINETUNE_TOKENS / (timing.tokens_per_iter / seconds) / 3600,
                         "peak_rss_mib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                         "load_avg_1m": (load_before + os.getloadavg()[0]) / 2})
            print(rows[-1], flush=True)
    report("finetune_gpt2_cpu", rows, {"steps": args.steps, "repeats": args.repeats, "shape": GPT2_SHAPE})


if __name__ == "__main__":
    main()
