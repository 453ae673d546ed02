"""The thread policy: one thread for small steps, the idle cores otherwise, the user's OMP_NUM_THREADS always."""

from __future__ import annotations

import pytest
import torch

import tinygpt_cli.threads as threads


@pytest.fixture
def four_cores(monkeypatch):
    """A 4-core machine whose other processes use `load["others"]` cores; torch's threads restored after."""
    load = {"others": 0.0}
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads.OtherLoad, "__init__", lambda self: setattr(self, "cores", {0, 1, 2, 3}))
    monkeypatch.setattr(threads.OtherLoad, "since_last_look", lambda self: load["others"])
    monkeypatch.setattr(threads, "CHECK_EVERY_S", 0.0)  # look at every step
    yield load
    torch.set_num_threads(before)


@pytest.mark.parametrize("others, expected", [(0.0, 4), (0.4, 4), (0.5, 3), (1.0, 3), (2.2, 2), (3.9, 1), (9.0, 1)])
def test_threads_follow_the_cores_other_processes_leave_idle(four_cores, others, expected):
    policy = threads.ThreadPolicy()
    four_cores["others"] = others
    policy.adjust()
    assert torch.get_num_threads() == expected
    four_cores["others"] = 0.0  # the competitor is gone: all cores again
    policy.adjust()
    assert torch.get_num_threads() == 4


def test_a_small_step_runs_on_one_thread_whatever_the_load(four_cores):
    policy = threads.ThreadPolicy(small=True)
    assert torch.get_num_threads() == 1 and not policy.adapts and "small step" in policy.describe()


@pytest.mark.parametrize("value, expected", [("3", 3), ("2,1", 2)])
def test_omp_num_threads_is_obeyed_as_set(four_cores, monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    policy = threads.ThreadPolicy()
    four_cores["others"] = 3.0
    policy.adjust()
    assert torch.get_num_threads() == expected and "OMP_NUM_THREADS" in policy.describe()


def test_processes_of_one_run_share_the_cores(four_cores):
    threads.ThreadPolicy(processes=2)
    assert torch.get_num_threads() == 2


def test_other_load_counts_a_busy_process_and_not_our_own_work():
    import subprocess
    import sys
    import time

    load = threads.OtherLoad()
    if threads._busy_seconds(load.cores) is None:
        pytest.skip("no /proc/stat here")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        load.since_last_look()
        time.sleep(1.0)
        busy = load.since_last_look()
    finally:
        spin.kill()
        spin.wait()
    assert 0.5 <= busy <= len(load.cores) + 0.2


def test_a_look_after_a_long_pause_starts_a_fresh_window(four_cores, monkeypatch):
    """A long gap (another trainer's turn, a child process) averages load that is gone by now."""
    monkeypatch.setattr(threads, "CHECK_EVERY_S", 1.0)
    clock = {"now": 100.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["now"])
    restarts = []
    monkeypatch.setattr(threads.OtherLoad, "restart", lambda self: restarts.append(clock["now"]))
    policy = threads.ThreadPolicy()
    four_cores["others"] = 3.0  # what the stale window would report
    clock["now"] += 60
    policy.adjust()
    assert restarts == [160.0] and torch.get_num_threads() == 4  # not judged on the stale window
    clock["now"] += 1.0
    policy.adjust()
    assert torch.get_num_threads() == 1  # a fresh window that still sees the load
