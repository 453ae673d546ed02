"""A run given a time (`--time 10m`) ends on time: its number of iterations follows the pace it
measures, evaluations and saves included.

A plan's first number of iterations comes from a few timed steps before the run (runs/timedial.py)
and can be a third off: the run's own steps then go at another pace (threads settle, the machine's
load changes, memory warms up). So, in the first half of the time, the iterations follow the
measured pace both ways; after that, and in a resumed run, only a machine that slows down
shortens the run (a longer run would raise the decayed learning rate again), and the run says so.

Fitting the iterations changes where the learning-rate schedule ends (train.py:learning_rate_at).
In the first half the cosine is still high and moves slowly: 10% more iterations at a third of
the way raise the rate from 0.75 of its peak to 0.79.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

CALIBRATION_SHARE = 0.5  # the share of the time in which the iterations move both ways
REFIT_SHARE = 0.01  # ... when the fitted number differs from the plan's by more than this share
LATE_SLACK_SHARE = 0.03  # later: shortened when the projected end is past the deadline by this share of the time
LATE_SLACK_MIN_S = 2.0  # ... or by this much, whichever is longer; it then aims half of that before the deadline
PACE_WINDOW_SHARE = 0.05  # the pace is measured over this share of the time (at least PACE_WINDOW_MIN_S)
PACE_WINDOW_MIN_S = 3.0


@dataclass(frozen=True)
class Replan:
    max_iters: int
    calibrating: bool  # False: the machine slowed down after the calibration


def evaluations_left(step: int, max_iters: int, interval: int) -> int:
    """Evaluations the loop still runs after `step`: every `interval` steps, and at max_iters."""
    periodic = max_iters // interval - step // interval
    return periodic + (1 if max_iters % interval and max_iters > step else 0)


class TimeKeeper:
    """Fits a run's max_iters to the time it has left. `budget_s`: the run's whole time;
    `used_s`: the part of it spent before now (the setup, or the runs a resume continues).
    `calibrate`: fit both ways at first (a run from its first step; a resumed one is past its
    warmup and into its decay, where only shortening is safe)."""

    def __init__(self, budget_s: float, used_s: float, tokens_per_iter: int, eval_tokens: int, final_eval_tokens: int,
                 calibrate: bool = True, clock=time.monotonic):
        self.clock = clock
        self.budget, self.calibrate = budget_s, calibrate
        self.began = clock()
        self.deadline = self.began + budget_s - used_s
        # The tokens of a step, of a periodic evaluation (both splits) and of the final one.
        self.tokens_per_iter, self.eval_tokens, self.final_eval_tokens = tokens_per_iter, eval_tokens, final_eval_tokens
        self.marks: deque[tuple[float, int, float]] = deque()  # (time, step, evaluation seconds so far)
        self.eval_total = 0.0
        self.eval_seconds: float | None = None  # the last periodic evaluation's, its saves included

    def evaluated(self, seconds: float) -> None:
        """A periodic evaluation (of eval_tokens, and its checkpoint saves) took `seconds`."""
        self.eval_total += seconds
        self.eval_seconds = seconds

    def pace(self) -> float | None:
        """Seconds per training step over the recent window, evaluations left out."""
        if len(self.marks) < 2:
            return None
        (t0, s0, e0), (t1, s1, e1) = self.marks[0], self.marks[-1]
        return (t1 - t0 - (e1 - e0)) / (s1 - s0) if s1 > s0 and t1 - t0 - (e1 - e0) > 0 else None

    def after_steps(self, step: int, max_iters: int, eval_interval: int, warmup_iters: int) -> Replan | None:
        """Called every few steps: a new max_iters when the plan no longer fits the time."""
        now = self.clock()
        self.marks.append((now, step, self.eval_total))
        window = max(PACE_WINDOW_MIN_S, PACE_WINDOW_SHARE * self.budget)
        while len(self.marks) > 2 and now - self.marks[1][0] >= window:
            self.marks.popleft()
        pace = self.pace()
        if pace is None or now - self.marks[0][0] < min(window, PACE_WINDOW_MIN_S):
            return None
        # Evaluations left, then the final one over the validation split (forward only: about a
        # third of a training step's time per token, until an evaluation has been timed).
        if self.eval_seconds is not None:
            per_eval = self.eval_seconds
            forward_s_per_token = per_eval / max(1, self.eval_tokens)
        else:
            forward_s_per_token = pace / self.tokens_per_iter / 3
            per_eval = forward_s_per_token * self.eval_tokens
        after_loop = evaluations_left(step, max_iters, eval_interval) * per_eval + self.final_eval_tokens * forward_s_per_token
        fitting = lambda end: max(step, warmup_iters + 1, step + int((end - now - after_loop) / pace))  # noqa: E731
        projected = (max_iters - step) * pace + after_loop
        if self.calibrate and now - self.began < CALIBRATION_SHARE * (self.deadline - self.began):
            fitted = fitting(self.deadline)
            return Replan(fitted, True) if abs(fitted - max_iters) > REFIT_SHARE * max_iters else None
        slack = max(LATE_SLACK_MIN_S, LATE_SLACK_SHARE * self.budget)
        if now + projected > self.deadline + slack:  # aim a little early: one cut, not one every few steps
            while len(self.marks) > 1:  # and judge the next one on the pace from here on alone
                self.marks.popleft()
            return Replan(min(max_iters, fitting(self.deadline - slack / 2)), False)
        return None
