"""Time to quality on CPU: `tinygpt train --preset cpu` on tiny Shakespeare, whole process.

Target (issue): validation loss <= 1.65 within 150 s of wall time, start of process to final
checkpoint, evaluation included. Reported per repeat: wall seconds, the run's own validation
estimate, and `tinygpt eval`'s loss over the whole validation split; then the medians.
Reference (nanoGPT's README CPU recipe on these machines): 1.886 after 143.8 s.

Usage: python benchmarks/bench_time_to_loss.py [--repeats 3] [--data-dir data/shakespeare] [-- extra train flags]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import TINYGPT, median, report, run_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default="data/shakespeare")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("extra", nargs="*", help="more train flags, after --")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            run = Path(tmp) / f"run{i}"
            cmd = TINYGPT + ["train", "--preset", args.preset, "--data-dir", args.data_dir, "--out", str(run), *args.extra]
            wall, peak, _ = run_process(cmd)
            status = json.loads((run / "run.json").read_text())
            _, _, ev = run_process(TINYGPT + ["eval", "--run", str(run), "--json"])
            full = json.loads(ev.stdout)["val"]["loss"]
            rows.append({"repeat": i + 1, "wall_s": wall, "val_estimate": status["best_val_loss"], "val_full_split": full,
                         "peak_rss_mib": peak, "met": wall <= 150 and status["best_val_loss"] <= 1.65})
    rows.append({"repeat": "median", "wall_s": median([r["wall_s"] for r in rows]),
                 "val_estimate": median([r["val_estimate"] for r in rows]),
                 "val_full_split": median([r["val_full_split"] for r in rows]),
                 "peak_rss_mib": max(r["peak_rss_mib"] for r in rows), "met": ""})
    report("time_to_loss", rows, {"preset": args.preset, "extra_flags": args.extra}, per_cpu_kind=True)


if __name__ == "__main__":
    main()
