"""Startup latency: `tinygpt --help` (target < 0.3 s) and `tinygpt params` (target < 1 s).

Usage: python benchmarks/bench_startup.py [--repeats 10]
"""

from __future__ import annotations

import argparse

from common import TINYGPT, median, report, run_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rows = []
    for label, argv, target in (("tinygpt --help", ["--help"], 0.3), ("tinygpt params", ["params"], 1.0),
                                ("tinygpt --version", ["--version"], 0.3)):
        run_process(TINYGPT + argv)  # warm the file cache
        walls = [run_process(TINYGPT + argv)[0] for _ in range(args.repeats)]
        rows.append({"command": label, "median_s": median(walls), "min_s": min(walls), "max_s": max(walls),
                     "target_s": target, "met": median(walls) < target})
    report("startup", rows)


if __name__ == "__main__":
    main()
