"""Time to quality on CPU: `tinygpt train --preset cpu` on tiny Shakespeare, whole process.

Target (issue): validation loss <= 1.65 within 150 s of wall time, start of process to final
checkpoint, evaluation included. Reported per repeat: wall seconds, the run's own validation
estimate, and `tinygpt eval`'s loss over the whole validation split; then the medians.
Reference (nanoGPT's README CPU recipe on these machines): 1.886 after 143.8 s.

Usage: python benchmarks/bench_time_to_loss.py [--repeats 3] [--data-dir data/shakespeare] [-- extra train flags]
With --against OTHER/src, each repeat also runs another checkout (say, the commit before a
change), alternated, so that both see the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from common import TINYGPT, clean_env, median, report, run_process


def timed_run(folder: Path, args, env: dict[str, str]) -> dict:
    """One training of the preset, whole process, and its checkpoint's loss over the whole validation split."""
    cmd = TINYGPT + ["train", "--preset", args.preset, "--data-dir", args.data_dir, "--out", str(folder), *args.extra]
    load = os.getloadavg()[0]  # before the run: what else the machine was doing
    wall, peak, _ = run_process(cmd, env=env)
    status = json.loads((folder / "run.json").read_text())
    _, _, ev = run_process(TINYGPT + ["eval", "--run", str(folder), "--json"], env=env)
    full = json.loads(ev.stdout)["val"]["loss"]
    return {"wall_s": wall, "val_estimate": status["best_val_loss"], "val_full_split": full,
            "peak_rss_mib": peak, "load_average": load, "met": wall <= 150 and status["best_val_loss"] <= 1.65}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default="data/shakespeare")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--against", type=Path, default=None,
                        help="the src/ folder of another tinygpt checkout (a commit before a change): its runs alternate with these")
    parser.add_argument("extra", nargs="*", help="more train flags, after --")
    args = parser.parse_args()
    # Both in the same environment (no OMP_* thread settings), only the code differs.
    versions = {"this": clean_env({})} | ({"against": clean_env({"PYTHONPATH": str(args.against.resolve())})} if args.against else {})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for version, env in versions.items():
                rows.append({"version": version, "repeat": i + 1, **timed_run(Path(tmp) / f"{version}{i}", args, env)})
    for version in versions:
        mine = [r for r in rows if r["version"] == version]
        rows.append({"version": version, "repeat": "median", **{key: median([r[key] for r in mine]) for key in
                     ("wall_s", "val_estimate", "val_full_split", "load_average")},
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in mine), "met": ""})
    report("time_to_loss", rows, {"preset": args.preset, "extra_flags": args.extra,
                                  "against": str(args.against) if args.against else None}, per_cpu_kind=True)


if __name__ == "__main__":
    main()
