"""Helpers shared by the benchmark scripts: timing whole processes, medians, tables and JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TINYGPT = [sys.executable, "-m", "tinygpt_cli"]


def machine() -> dict:
    import torch

    return {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}


def code_version() -> str:
    """The commit of the tinygpt measured, with "-dirty" when its src/ has uncommitted changes
    (results and notes written meanwhile do not count): figures from before and after a change
    stay told apart in one results file."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=RESULTS.parent, capture_output=True, text=True, timeout=10)
        return proc.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "../src")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (commit or "unknown") + ("-dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU's model name, family and model numbers where Linux tells them (the name alone can be vague)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()[:30] if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, v in info.items()}
    return f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def cpu_kind() -> str:
    """The CPU's kind, as far as tinygpt's speed goes: amx, avx512-bf16, avx512, avx2, or the
    machine's architecture (arm64...). Results of each kind are kept side by side."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    for flag, kind in (("amx_bf16", "amx"), ("avx512_bf16", "avx512-bf16"), ("avx512f", "avx512"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return platform.machine().lower()


def run_process(cmd: list[str], **kwargs) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and peak RSS (MiB) of one child process, start to exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children so far
    return wall, max(peak, before) / 1024, proc


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(name: str, rows: list[dict], extra: dict | None = None, per_cpu_kind: bool = False) -> Path:
    """Print rows as an aligned table and write them, with the machine, to results/NAME.json
    (per_cpu_kind: results/NAME-KIND.json, beside the other kinds' results)."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(widths[c]) for c in columns))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (f"{name}-{cpu_kind()}.json" if per_cpu_kind else f"{name}.json")
    path.write_text(json.dumps({"benchmark": name, "machine": {**machine(), "cpu_kind": cpu_kind()}, "code": code_version(),
                                "rows": rows, **(extra or {})},
                               indent=2) + "\n")
    print(f"-> {path}")
    return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


# --- a busy machine --------------------------------------------------------------------------

HOG_SECONDS = 900  # a background process never outlives a benchmark by more than this


def start_hogs(n: int) -> list[subprocess.Popen]:
    """`n` CPU-bound background processes (pure Python spinning), each ending by itself at the latest
    after HOG_SECONDS: the caller kills them when done."""
    spin = f"import time\nend = time.time() + {HOG_SECONDS}\nwhile time.time() < end: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]
    time.sleep(1.0)  # let the scheduler see them
    return hogs


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without thread settings (OMP_*, MKL_*, GOMP_*), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_"))}
    return {**env, **extra}
