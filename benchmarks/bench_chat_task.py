"""From a text completer to an assistant, timed: a base model trained on tiny Shakespeare, then
fine-tuned on examples/make_chat_task.py's greeting task (copy the user's name into the reply),
scored by `tinygpt eval --task` on held-out names before and after.

The commands are the tutorial's lesson 11, at a smaller size: the cpu preset trained for 200
steps, fine-tuned for 400 on 2,000 conversations, 100 held-out names. Reported per repeat:
each stage's seconds, both accuracies with their 95% intervals, and the load average.

Usage: python benchmarks/bench_chat_task.py --source path/to/input.txt [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import TINYGPT, median, report, run_process

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "make_chat_task.py"


def recipe(work: Path, source: str, base_iters: int = 200, tune_iters: int = 400, train: int = 2000, test: int = 100) -> list[tuple[str, list[str]]]:
    """The stages, named, each one command run in `work`."""
    return [
        ("task", [sys.executable, str(EXAMPLE), "--out", "chats", "--train", str(train), "--test", str(test)]),
        ("prepare", [*TINYGPT, "prepare", "shakespeare", "--source", source]),
        ("base", [*TINYGPT, "train", "--preset", "cpu", "--max-iters", str(base_iters), "--eval-interval", str(base_iters), "--out", "runs/base"]),
        ("prepare chat", [*TINYGPT, "prepare", "chat", "chats/train.jsonl", "--tokenizer", "runs/base", "--data-dir", "data/greet"]),
        ("fine-tune", [*TINYGPT, "train", "--preset", "cpu", "--init-from", "runs/base", "--data-dir", "data/greet",
                       "--max-iters", str(tune_iters), "--eval-interval", str(tune_iters), "--out", "runs/greet"]),
        ("eval before", [*TINYGPT, "eval", "--run", "runs/base", "--task", "chats/test.jsonl", "--json"]),
        ("eval after", [*TINYGPT, "eval", "--run", "runs/greet", "--task", "chats/test.jsonl", "--json"]),
    ]


def run_recipe(work: Path, source: str) -> dict:
    """Run every stage in `work`: seconds per stage, and each evaluation's JSON."""
    seconds, results = {}, {}
    for name, cmd in recipe(work, source):
        wall, _, proc = run_process(cmd, cwd=work)
        seconds[name] = wall
        if name.startswith("eval"):
            results[name] = json.loads(proc.stdout)
    return {"seconds": seconds, "before": results["eval before"], "after": results["eval after"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a local copy of tiny Shakespeare")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as work:
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            out = run_recipe(Path(work), args.source)
            rows.append({"repeat": repeat + 1, "load_1min": load, "total_s": time.perf_counter() - t0,
                         **{f"{k}_s": v for k, v in out["seconds"].items()},
                         "before": out["before"]["accuracy"], "after": out["after"]["accuracy"],
                         "after_low": out["after"]["interval_95"][0], "questions": out["after"]["total"]})
    report("chat_task", rows, {"median_total_s": median([r["total_s"] for r in rows]),
                               "median_fine_tune_s": median([r["fine-tune_s"] for r in rows])})


if __name__ == "__main__":
    main()
