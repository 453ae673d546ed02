"""Measure what this machine does: training step time for a configuration (the matmul peak at its
shapes is peak.py's).

Used by `tinygpt bench` and by the scripts under benchmarks/. Synthetic token ids stand in for
a dataset: step time does not depend on the text.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.dataset import Dataset, DatasetInfo
from ..config import RunConfig
from ..params import param_report
from ..train import Trainer
from ..system.threads import ThreadPolicy
from ..data.vocab import Vocabulary

SYNTHETIC_TOKENS = 200_000


def synthetic_dataset(vocab_size: int, n_tokens: int = SYNTHETIC_TOKENS, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    vocab = Vocabulary(tuple(chr(32 + i) for i in range(vocab_size)))
    train = rng.integers(0, vocab_size, n_tokens, dtype=np.uint16)
    val = rng.integers(0, vocab_size, n_tokens // 10, dtype=np.uint16)
    info = DatasetInfo("synthetic", Path("."), "synthetic", "", 0, 0, vocab_size, len(train), len(val), 0.1, "", "")
    return Dataset(info, vocab, train, val)


@dataclass(frozen=True)
class StepTiming:
    ms_per_iter: float  # median over repeats
    ms_all: list[float]
    tokens_per_iter: int
    flops_per_token: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_iter / (self.ms_per_iter / 1000)

    @property
    def gflops(self) -> float:
        return self.tokens_per_s * self.flops_per_token / 1e9

    def projected_seconds(self, iters: int) -> float:
        return iters * self.ms_per_iter / 1000


def training_step_fn(config: RunConfig, dataset: Dataset | None = None, threads: ThreadPolicy | None = None):
    """The real training step (Trainer.train_step) for `config`, on `dataset` or synthetic data,
    with the thread policy of a real run when one is given (system/process.py:init_process)."""
    trainer = Trainer(config, dataset or synthetic_dataset(config.model.vocab_size), threads=threads)

    def step() -> None:
        if trainer.threads is not None:
            trainer.threads.adjust()  # the thread policy of a real run
        trainer.train_step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def time_steps(step, steps: int) -> float:
    """Milliseconds per call of `step`, over `steps` calls."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) * 1000 / steps


def warm_up(step, at_least: int = 3, at_most: int = 8) -> None:
    """Run `step` until it stops getting faster (at least `at_least` times, at most `at_most`):
    a large model's first steps on a CPU take their memory page by page (the baby preset's
    first six took 11.0, 4.7, 3.5, 3.1, 2.7 and 2.2 s on a 2-core Xeon, most of it system time)."""
    previous = float("inf")
    for done in range(1, at_most + 1):
        ms = time_steps(step, 1)
        if done >= at_least and ms > 0.9 * previous:
            return
        previous = ms


def time_training_steps(config: RunConfig, steps: int = 20, warmup: int = 3, repeats: int = 3,
                        dataset: Dataset | None = None, threads: ThreadPolicy | None = None) -> StepTiming:
    """Median milliseconds per optimiser step of the real training step for `config`, once warm."""
    step = training_step_fn(config, dataset, threads)
    warm_up(step, at_least=warmup)
    samples = [time_steps(step, steps) for _ in range(repeats)]
    c = config
    tokens = c.tokens_per_step
    return StepTiming(statistics.median(samples), samples, tokens, param_report(c.model).flops_per_token())

