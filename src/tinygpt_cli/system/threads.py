"""How many CPU threads torch computes with, chosen for this machine as it is right now.

torch splits each operation between OpenMP threads, and a thread that waits for the next
operation spins on its core for a while. When the cores are all ours, that saves a wake-up per
operation. When another process wants a core, a spinning thread keeps it from that process, and
each of our operations waits for a thread the scheduler has set aside (benchmarks/bench_busy.py
measures it; benchmarks/README.md, "A busy machine"). So:

- a step too small to split (under SMALL_STEP_FLOPS) runs on one thread: measured faster even on
  a quiet machine;
- a larger one runs on as many threads as there are cores that other processes leave idle,
  looked at again every second while training;
- OMP_NUM_THREADS, when the user sets it, is obeyed as it is, and nothing adapts.

Linux only for the load (/proc/stat); elsewhere every core counts as idle.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

# Training FLOPs per step below which one thread is fastest: between the tests' tiny model (one
# thread faster) and the cpu preset (two faster), on a log scale (benchmarks/README.md, "A busy
# machine", has the measurements).
SMALL_STEP_FLOPS = 5e8
CHECK_EVERY_S = 1.0  # how often a training run looks at the load again
IDLE_SHARE = 0.3  # a window in which we used less than this of a core is not judged
BUSY_CORES = 0.5  # other processes using this much of the cores make the machine busy (one thread fewer)
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal: time not idle


def usable_core_ids() -> set[int]:
    """The cores this process may run on (its CPU affinity, which containers and taskset set)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    return len(usable_core_ids())


def _busy_seconds(cores: set[int]) -> float | None:
    """CPU seconds spent not idle on `cores` since boot, by everyone; None without /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
    except OSError:
        return None
    ticks = sum(int(fields[1 + i]) for fields in lines if int(fields[0][3:]) in cores
                for i in _BUSY_FIELDS if 1 + i < len(fields))
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class _Sample:
    wall: float
    busy: float | None
    own: float


class OtherLoad:
    """How many cores other processes kept busy between two looks."""

    def __init__(self) -> None:
        self.cores = usable_core_ids()
        self._last = self._sample()
        self.own_share = 0.0

    def _sample(self) -> _Sample:
        return _Sample(time.monotonic(), _busy_seconds(self.cores), _own_cpu_seconds())

    def since_last_look(self) -> float:
        """Cores that other processes used since the previous call (0 where unknown); the cores
        this process used are left in `own_share`."""
        now, last = self._sample(), self._last
        self._last = now
        elapsed = now.wall - last.wall
        self.own_share = (now.own - last.own) / elapsed if elapsed > 0 else 0.0
        if now.busy is None or last.busy is None or elapsed <= 0:
            return 0.0
        return max(0.0, ((now.busy - last.busy) - (now.own - last.own)) / elapsed)


def user_threads() -> int | None:
    """OMP_NUM_THREADS as the user set it (a positive integer, or a list whose first entry is
    the outer level's), else None."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


class ThreadPolicy:
    """Sets torch's thread count, and keeps it fitted to the load (`adjust`, called every step
    or token, looks once a second). `small`: the work is too small to split (see
    SMALL_STEP_FLOPS); sampling one token at a time still gains from a second thread when idle."""

    def __init__(self, small: bool = False, processes: int = 1):
        import torch

        self._torch = torch
        self.fixed = user_threads()
        self.others_seen = 0.0  # cores other processes used, at the last look
        self._load = OtherLoad()
        self.small, self.max_threads = small, max(1, usable_cores() // processes)
        if self.adapts:
            time.sleep(0.05)  # a first look at the load, before any work
        self.fit(small, processes)

    def fit(self, small: bool, processes: int = 1) -> None:
        """Fit the policy to a piece of work: too small to split, or one of `processes` that
        share the cores (torchrun's ranks, the processes of one run); the next look decides."""
        self.small = small
        self.max_threads = max(1, usable_cores() // processes)
        self._judged = False  # the first look after this always decides
        self._next_look = time.monotonic()
        self.adjust()

    @property
    def adapts(self) -> bool:
        return self.fixed is None and not self.small and self.max_threads > 1

    def describe(self) -> str:
        """For the start line and run.json: the threads and why."""
        threads = self._torch.get_num_threads()
        count = f"{threads} thread{'s' if threads > 1 else ''}"
        if self.fixed is not None:
            return f"{count} (OMP_NUM_THREADS)"
        if self.small:
            return f"{count} (a small step: splitting it costs more than it saves)"
        if not self.adapts:
            return f"{count} (one core for this process)"
        return f"{count} of {self.max_threads}, fewer while other processes use the cores"

    def adjust(self) -> None:
        if self.fixed is not None:
            self._set(self.fixed)
            return
        if not self.adapts:
            self._set(1)
            return
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + CHECK_EVERY_S
        others = self._load.since_last_look()
        if self._judged and self._load.own_share < IDLE_SHARE:  # we hardly ran (a pause between runs): not a measure of now
            return
        self._judged = True
        self.others_seen = others
        idle = len(self._load.cores) - self.others_seen
        self._set(max(1, min(self.max_threads, math.ceil(idle - BUSY_CORES))))  # half a core busy elsewhere: one thread fewer

    def _set(self, threads: int) -> None:
        if self._torch.get_num_threads() != threads:
            self._torch.set_num_threads(threads)
