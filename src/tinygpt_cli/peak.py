"""What this machine's matrix products reach at one model's shapes, in the run's precision: the
ceiling of its training throughput. `tinygpt bench` reports a step's speed against it, and a
training records it in run.json, for `runs`.

A CPU's rate depends on the shape (on a 2-core AMX Xeon in bfloat16: 0.2 TFLOP/s for attention's
scores, 3.3 for a 384 x 384 projection over 16k tokens) and on the precision, so one square
product in float32 says little: the products timed here are the step's own
(params.py:step_products, which torch's FLOP counter checks in the tests).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from .config import ModelConfig
from .params import Product, step_products

TIMED_FLOPS = 2**35  # a product larger than this (34 GFLOP) is timed on a part of it


@dataclass(frozen=True)
class MatmulPeak:
    dtype: str
    gflops: float  # all of a step's products, each at its share of the step's FLOPs
    best_gflops: float  # the fastest shape's rate
    best_shape: str

    def utilisation(self, gflops: float) -> float:
        """A step's rate (by the FLOPs of its products) as a fraction of `gflops` here: below 1, as
        the step runs those products and more."""
        return gflops / self.gflops

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "gflops": self.gflops, "best_gflops": self.best_gflops, "best_shape": self.best_shape}


def _operand(rows: int, cols: int, transposed: bool, batch: int, device: torch.device, dtype: torch.dtype,
             generator: torch.Generator) -> torch.Tensor:
    shape = (batch, cols, rows) if transposed else (batch, rows, cols)
    t = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    t = t.transpose(1, 2) if transposed else t
    return t[0] if batch == 1 else t


def measure_matmul_peak(config: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype,
                        repeats: int = 3) -> MatmulPeak:
    """Time each distinct product of a training step (the best of `repeats` samples, after an
    untimed call) in `dtype` on `device`: plain `a @ b`, with the operands laid out as autograd passes them."""
    sync = {"cuda": torch.cuda.synchronize, "mps": getattr(torch, "mps", None) and torch.mps.synchronize}.get(device.type) or (lambda: None)
    timed: dict[Product, float] = {}
    total_flops = total_seconds = 0.0
    best = (0.0, "")
    for p in step_products(config, batch_size):
        key = replace(p, name="", count=1)
        if key not in timed:
            timed[key] = _product_seconds(p, device, dtype, repeats, sync)
            rate = p.flops / timed[key] / 1e9
            if rate > best[0]:
                shape = f"({p.m}, {p.k}) @ ({p.k}, {p.n})" + (f" x {p.batch}" if p.batch > 1 else "")
                best = (rate, f"{p.name} {shape}")
        total_flops += p.count * p.flops
        total_seconds += p.count * timed[key]
    return MatmulPeak(str(dtype).removeprefix("torch."), total_flops / total_seconds / 1e9, *best)


def _product_seconds(p: Product, device: torch.device, dtype: torch.dtype, repeats: int, sync) -> float:
    """Seconds of product `p`. One past TIMED_FLOPS (GPT-2's LM head over 4,096 tokens: 316
    GFLOP) is timed on a part, its largest side halved until it fits, and scaled up: at these
    sizes the rate no longer depends on the size, and the time and memory stay bounded."""
    sides = {"batch": p.batch, "m": p.m, "k": p.k, "n": p.n}
    while 2 * math.prod(sides.values()) > TIMED_FLOPS:
        largest = max(sides, key=sides.__getitem__)
        sides[largest] //= 2
    part = replace(p, **sides)
    generator = torch.Generator(device).manual_seed(0)  # values of its own: the process's generators stay untouched
    a = _operand(part.m, part.k, part.a_t, part.batch, device, dtype, generator)
    b = _operand(part.k, part.n, part.b_t, part.batch, device, dtype, generator)
    def seconds(calls: int) -> float:  # of one call, timed over `calls` queued back to back
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            a @ b
        sync()
        return (time.perf_counter() - t0) / calls

    # Enough calls a sample for a millisecond: a GPU's short kernels are then timed as a step
    # queues them, not each with a launch and a synchronisation of its own.
    calls = min(1000, math.ceil(1e-3 / max(seconds(1), 1e-9)))
    return min(seconds(calls) for _ in range(repeats)) * p.flops / part.flops
