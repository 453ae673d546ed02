"""A scaling law: the validation loss a model of N parameters reaches after D training tokens,

    L(N, D) = E + A / N^alpha + B / D^beta

the form of Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", Chinchilla,
approach 3). E is what no model of this family removes from the text (its entropy as the
family sees it); A / N^alpha is what a model too small leaves; B / D^beta is what too few
tokens leave. N counts the parameters outside the embeddings (Kaplan et al. 2020, "Scaling Laws
for Neural Language Models"), which carry most of the compute of a character model.

The fit follows Chinchilla's: least Huber loss (delta 1e-3) between the logarithms of the
predicted and the measured losses, the law written as a log-sum-exp so the constants stay
positive, L-BFGS from a grid of starting points. The uncertainty of each constant is its
standard deviation over fits to bootstrap resamples of the points.

A rule is a law with what it was fitted on (corpus, tokenizer, recipe, the points): a JSON file
that `tinygpt scaling` writes and `train --time --rule FILE` reads. The one tinygpt ships,
rules/tinyshakespeare-char.json, comes from benchmarks/bench_scaling.py.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import Command, TinyGPTError
from ..system.fsutil import read_json, write_json_atomic

RULE_FORMAT = "tinygpt-scaling-rule-1"
WRITES_A_RULE = Command("scaling", options={"time": "1h"}, why="measures your own; its folder then holds rule.json")
SHIPPED_RULE = Path(__file__).parent / "rules" / "tinyshakespeare-char.json"
# The settings a rule's runs share besides their shape and length: a plan on others is extrapolated.
RECIPE_FIELDS = ("block_size", "batch_size", "grad_accum", "dropout", "bias", "pos_embedding", "norm", "activation", "qk_norm",
                 "optimizer", "learning_rate", "muon_lr", "min_lr", "lr_decay", "weight_decay", "beta1", "beta2", "grad_clip")
HEAD_SIZE = 32  # the width of a head in every shape the rules are measured on, and the time dial chooses from
HUBER_DELTA = 1e-3
BOOTSTRAP_FITS = 40


@dataclass(frozen=True)
class Law:
    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta


@dataclass(frozen=True)
class Point:
    """One trained model: its shape, non-embedding parameters, tokens seen and final val loss."""

    shape: str
    params: int
    tokens: int
    val_loss: float
    seconds: float | None = None


@dataclass
class Rule:
    law: Law
    points: list[Point]
    fitted_on: dict[str, Any]  # corpus, tokenizer, vocab_size, train_tokens, recipe, machine
    uncertainty: dict[str, float] = field(default_factory=dict)  # each constant's bootstrap standard deviation
    source: str = ""  # where it was read from

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The parameters, tokens and epochs the fit has seen, smallest to largest."""
        train_tokens = self.fitted_on.get("train_tokens") or 0
        seen = {"params": [p.params for p in self.points], "tokens": [p.tokens for p in self.points]}
        if train_tokens:
            seen["epochs"] = [p.tokens / train_tokens for p in self.points]
        return {k: (min(v), max(v)) for k, v in seen.items()}

    def summary(self) -> str:
        """What the rule was fitted on, in a phrase."""
        f = self.fitted_on
        where = f" on {f['machine']}" if f.get("machine") else ""
        return f"{len(self.points)} runs of {f.get('corpus', 'a corpus')} ({f.get('tokenizer', '?')} tokens){where}"

    def to_dict(self) -> dict[str, Any]:
        return {"format": RULE_FORMAT, "law": asdict(self.law), "uncertainty": self.uncertainty,
                "fitted_on": self.fitted_on, "points": [asdict(p) for p in self.points]}

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())


def recipe_of(config: RunConfig) -> dict[str, Any]:
    flat = config.flat()
    return {k: flat[k] for k in RECIPE_FIELDS}


def load_rule(path: Path) -> Rule:
    """A rule file, checked: a one-line error for anything else."""
    try:
        data = read_json(path)
    except FileNotFoundError as e:
        raise TinyGPTError(f"no scaling rule at {path}", WRITES_A_RULE) from e
    except (OSError, ValueError) as e:
        raise TinyGPTError(f"cannot read the scaling rule {path}: {e}") from e
    try:
        if data.get("format") != RULE_FORMAT:
            raise ValueError(f"its format is {data.get('format')!r}, not {RULE_FORMAT!r}")
        law = Law(**{k: float(data["law"][k]) for k in ("E", "A", "alpha", "B", "beta")})
        points = [Point(**p) for p in data.get("points", [])]
        rule = Rule(law, points, dict(data.get("fitted_on", {})), dict(data.get("uncertainty", {})), str(path))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise TinyGPTError(f"{path} is not a scaling rule of tinygpt's: {e}", WRITES_A_RULE) from e
    if not all(math.isfinite(v) and v >= 0 for v in asdict(law).values()):
        raise TinyGPTError(f"{path} holds a law with a negative or infinite constant", WRITES_A_RULE)
    return rule


def _objective(theta, log_n, log_d, log_loss):
    """Chinchilla's: the Huber loss of log L, L = exp(e) + exp(a - alpha log N) + exp(b - beta log D)."""
    import torch

    e, a, alpha, b, beta = theta
    predicted = torch.logsumexp(torch.stack([e.expand_as(log_n), a - alpha * log_n, b - beta * log_d]), dim=0)
    return torch.nn.functional.huber_loss(predicted, log_loss, delta=HUBER_DELTA, reduction="sum")


def _fit_from(starts, points: list[Point]) -> tuple[float, list[float]] | None:
    import torch

    log_n = torch.tensor([math.log(p.params) for p in points], dtype=torch.float64)
    log_d = torch.tensor([math.log(p.tokens) for p in points], dtype=torch.float64)
    log_loss = torch.tensor([math.log(p.val_loss) for p in points], dtype=torch.float64)
    best = None
    for start in starts:
        theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = _objective(theta, log_n, log_d, log_loss)
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            value = _objective(theta, log_n, log_d, log_loss).item()
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, theta.detach().tolist())
    return best


def _law(theta: list[float]) -> Law:
    e, a, alpha, b, beta = theta
    return Law(math.exp(e), math.exp(a), alpha, math.exp(b), beta)


def fit_law(points: list[Point], bootstrap: int = BOOTSTRAP_FITS, seed: int = 0) -> tuple[Law, dict[str, float]]:
    """The law that fits `points` best, and each constant's standard deviation over `bootstrap`
    fits to resamples of them (each resample's fit starts from the best one)."""
    if len({p.params for p in points}) < 2 or len({p.tokens for p in points}) < 3 or len(points) < 6:
        raise TinyGPTError(f"a scaling law needs at least 6 runs of 2 sizes or more; {len(points)} finished",
                           "give the grid more time, or fewer sizes")
    grid = itertools.product([0.3], [2.0, 8.0], [0.3, 0.7], [2.0, 8.0], [0.3, 0.7])
    found = _fit_from(list(grid), points)
    if found is None:
        raise TinyGPTError("the scaling law did not converge on these runs", "give the grid more time, or other sizes")
    law = _law(found[1])
    rng = random.Random(seed)
    samples = []
    for _ in range(bootstrap):
        resample = [rng.choice(points) for _ in points]
        if len({p.params for p in resample}) > 1 and len({p.tokens for p in resample}) > 2:
            refit = _fit_from([found[1]], resample)
            if refit is not None:
                samples.append(asdict(_law(refit[1])))
    spread = {k: _std([s[k] for s in samples]) for k in asdict(law)} if len(samples) > 1 else {}
    return law, spread


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def describe_law(law: Law) -> str:
    return f"L = {law.E:.3f} + {law.A:.4g} / N^{law.alpha:.3f} + {law.B:.4g} / D^{law.beta:.3f}"
