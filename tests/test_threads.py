"""The thread policy: one thread for small steps, the idle cores otherwise, the user's OMP_NUM_THREADS always."""

from __future__ import annotations

import pytest
import torch

import tinygpt_cli.system.threads as threads


@pytest.fixture
def four_cores(monkeypatch):
    """A 4-core machine whose other processes use `load["others"]` cores; torch's threads restored after."""
    load = {"others": 0.0}
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads.OtherLoad, "__init__", lambda self: self.__dict__.update(cores={0, 1, 2, 3}, own_share=1.0))
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


def test_a_window_in_which_we_hardly_ran_is_not_judged(four_cores):
    """A pause (another trainer's turn, waiting on a child process) averages load that says
    nothing of our own steps; a slow step, in which we did run, is judged."""
    policy = threads.ThreadPolicy()
    policy._load.own_share, four_cores["others"] = 0.05, 3.0
    policy.adjust()
    assert torch.get_num_threads() == 4
    policy._load.own_share = 1.8  # we computed through the window: its load is real
    policy.adjust()
    assert torch.get_num_threads() == 1
