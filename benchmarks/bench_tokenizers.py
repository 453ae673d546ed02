"""Characters against BPE on tiny Shakespeare, at the same wall time: val bits per byte.

For each tokenizer (char, and a byte-level BPE of 257, 512, 1,024 and 4,096 tokens trained on the
text), prepare tiny Shakespeare (its last 10% validates, as for every tokenizer), time the cpu
preset's training step with that vocabulary, and train the cpu preset for as many iterations as
fit the char model's 1,200 in the same time. Then `tinygpt eval` scores the whole validation
split: bits per byte is the loss that compares across tokenizers. Also reported: parameters,
tokens/s, bytes per token, iterations.

Usage: python benchmarks/bench_tokenizers.py --source PATH/TO/input.txt [--iters 1200] [--sizes 257,512,1024,4096]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from common import TINYGPT, report, run_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="tiny Shakespeare (input.txt)")
    parser.add_argument("--iters", type=int, default=1200, help="iterations of the char model (the cpu preset's)")
    parser.add_argument("--sizes", default="257,512,1024,4096")
    args = parser.parse_args()
    from tinygpt_cli.system.process import init_process

    threads = init_process()  # a real run's thread policy and memory settings, as the CLI's
    from tinygpt_cli.runs.bench import time_training_steps
    from tinygpt_cli.config import resolve_config
    from tinygpt_cli.data.dataset import load_dataset

    tokenizers = [("char", None)] + [("bpe", int(n)) for n in args.sizes.split(",")]
    rows, char_ms = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for kind, size in tokenizers:
            label = "char" if kind == "char" else f"bpe {size}"
            data = Path(tmp) / label.replace(" ", "")
            flags = ["--tokenizer", kind] + (["--vocab-size", str(size)] if size else [])
            run_process(TINYGPT + ["prepare", "shakespeare", "--source", args.source, "--data-dir", str(data), *flags])
            dataset = load_dataset(data)
            config = resolve_config("cpu", None, {"vocab_size": dataset.tokenizer.size})
            ms = time_training_steps(config, steps=20, repeats=3, threads=threads).ms_per_iter
            char_ms = char_ms or ms
            iters = round(args.iters * char_ms / ms)
            run = Path(tmp) / f"run-{label.replace(' ', '')}"
            wall, _, _ = run_process(TINYGPT + ["train", "--preset", "cpu", "--data-dir", str(data), "--max-iters", str(iters),
                                                "--eval-interval", str(iters), "--out", str(run)])
            _, _, ev = run_process(TINYGPT + ["eval", "--run", str(run), "--json"])
            val = json.loads(ev.stdout)["val"]
            speeds = [r["tokens_per_s"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "tokens_per_s" in r]
            info = dataset.info
            rows.append({"tokenizer": label, "vocab": dataset.tokenizer.size, "bytes_per_token": round(info.text_bytes / (info.train_tokens + info.val_tokens), 2),
                         "parameters": _params(config),
                         "iterations": iters, "wall_s": round(wall, 1), "tokens_per_s": round(sorted(speeds)[len(speeds) // 2]),
                         "val_loss": round(val["loss"], 4), "val_bits_per_byte": round(val["bits_per_byte"], 4),
                         "load_average_1min": round(os.getloadavg()[0], 2)})
    report("tokenizers", rows, {"preset": "cpu", "char_iterations": args.iters})


def _params(config) -> int:
    from tinygpt_cli.params import param_report

    return param_report(config.model).total


if __name__ == "__main__":
    main()
