"""`train --time 10m`: the model shape and the number of iterations that a scaling rule says
reach the lowest validation loss in the time given, on this machine.

A bigger model learns more from each token, and sees fewer tokens in the same time. The rule
(runs/law.py) predicts the loss of N parameters after D tokens; this machine's speed turns the
time into D for each shape. So the plan:
1. estimates each candidate shape's step time from its FLOPs, at the rate one reference shape
   measures here (a second or two);
2. times the few best candidates for real (their steps as a run takes them, on synthetic tokens);
3. picks the lowest predicted loss, with as many iterations as fit the time left after the
   evaluations, the final one and the start of the run.
The run itself then keeps to the time (timekeeper.py). Shape settings the user gives are kept,
and the plan chooses the rest around them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..config import RunConfig, build_config, describe_duration, flag_name
from ..data.dataset import Dataset
from ..errors import TinyGPTError, UsageError
from ..evaluate import predictions
from ..lifecycle import FINAL_EVAL_TOKENS, prepare_training
from ..params import param_report
from ..system.threads import ThreadPolicy
from .law import HEAD_SIZE, Rule

# The shapes a plan chooses from: head size 32, as in every point of the shipped rule. Depth 4 and
# up: on tiny Shakespeare the 2-layer shapes of the hand sweep ended 0.014 to 0.024 above the
# fitted law at 2 and 5 minutes (benchmarks/results/scaling-*.json), the deeper ones within 0.013.
DEPTHS = (4, 6, 8)
WIDTHS = (64, 96, 128, 192, 256, 384, 512)
TIMED = 3  # the best candidates by the estimate that are timed for real
EVALUATIONS = 8  # periodic evaluations in a planned run (each also saves `last`)
START_S = 2.0  # building the model and measuring the matrix products' peak, before the first step
TIMING_MS = 400  # about how long each candidate is timed, once warm
MIN_ITERS = 50
SHAPE = ("n_layer", "n_embd", "n_head")


@dataclass(frozen=True)
class Candidate:
    n_layer: int
    n_embd: int
    n_head: int
    params: int  # outside the embeddings: the law's N
    ms_per_iter: float
    timed: bool  # measured here (else estimated from its FLOPs)
    iters: int
    tokens: int
    predicted_loss: float

    @property
    def shape(self) -> str:
        return f"{self.n_layer}x{self.n_embd}"


@dataclass
class TimePlan:
    budget_s: float
    config: RunConfig  # the run to start
    chosen: Candidate
    candidates: list[Candidate]  # lowest predicted loss first
    rule: Rule
    notes: list[str]  # what the rule is extrapolated to, what the user fixed
    planning_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"time_s": self.budget_s, "chosen": asdict(self.chosen), "candidates": [asdict(c) for c in self.candidates],
                "rule": self.rule.source, "law": asdict(self.rule.law), "notes": self.notes, "planning_s": self.planning_s,
                "config": self.config.flat()}

    def reason(self) -> str:
        """Why this shape: the start line of a planned run."""
        c = self.chosen
        per_param = c.tokens / c.params
        return (f"{describe_duration(self.budget_s)} on this machine: {c.n_layer} layers x {c.n_embd} wide "
                f"({c.params / 1e6:.2f}M parameters outside the embeddings), {c.iters:,} iterations, about "
                f"{c.tokens / 1e6:.1f}M tokens ({per_param:.1f} per parameter); the rule fitted on {self.rule.summary()} "
                f"predicts val loss {c.predicted_loss:.3f}")


def candidate_shapes(config: RunConfig, fixed: set[str]) -> list[tuple[int, int, int]]:
    """(n_layer, n_embd, n_head) to choose from: the user's own values where given."""
    m = config.model
    depths = (m.n_layer,) if "n_layer" in fixed else DEPTHS
    widths = (m.n_embd,) if "n_embd" in fixed else WIDTHS
    shapes = []
    for n_layer in depths:
        for n_embd in widths:
            n_head = m.n_head if "n_head" in fixed else max(1, n_embd // HEAD_SIZE)
            if n_embd % n_head == 0 and (m.pos_embedding != "rope" or (n_embd // n_head) % 2 == 0):
                shapes.append((n_layer, n_embd, n_head))
    if not shapes:
        raise UsageError(f"--n-head {m.n_head} divides none of the widths the time dial tries ({', '.join(map(str, widths))})",
                         "give --n-embd too, or leave out --n-head")
    return shapes


def _shaped(config: RunConfig, shape: tuple[int, int, int], **train: Any) -> RunConfig:
    return build_config({**config.flat(), **dict(zip(SHAPE, shape)), **train})


def _after_loop_s(config: RunConfig, ms_per_iter: float, val_tokens: int) -> float:
    """Seconds a run spends outside its steps: its start, the periodic evaluations (both splits,
    eval_iters batches each, forward only: about a third of a step per token) and the final
    evaluation of `best` over the validation split."""
    t, tokens_per_iter = config.train, config.tokens_per_step
    forward_s_per_token = ms_per_iter / 1000 / tokens_per_iter / 3
    periodic = (EVALUATIONS + 1) * 2 * t.eval_iters * tokens_per_iter
    final = min(val_tokens, max(FINAL_EVAL_TOKENS, t.eval_iters * tokens_per_iter))
    return START_S + (periodic + final) * forward_s_per_token


def _candidate(config: RunConfig, shape: tuple[int, int, int], ms: float, timed: bool, seconds_left: float,
               val_tokens: int, rule: Rule) -> Candidate:
    shaped = _shaped(config, shape)
    tokens_per_iter = shaped.tokens_per_step
    iters = max(0, int((seconds_left - _after_loop_s(shaped, ms, val_tokens)) * 1000 / ms))
    params = param_report(shaped.model).non_embedding
    loss = rule.law.loss(params, iters * tokens_per_iter) if iters else math.inf
    return Candidate(*shape, params, ms, timed, iters, iters * tokens_per_iter, loss)


def default_timer(threads: ThreadPolicy | None):
    """Milliseconds per step of a config, timed for about TIMING_MS once warm, given a first estimate."""
    from .bench import time_training_steps

    def timer(config: RunConfig, estimate_ms: float) -> float:
        steps = min(20, max(3, round(TIMING_MS / max(estimate_ms, 1e-3))))
        return time_training_steps(config, steps=steps, warmup=2, repeats=1, threads=threads).ms_per_iter

    return timer


def plan_for_time(config: RunConfig, budget_s: float, fixed: set[str], rule: Rule, threads: ThreadPolicy | None = None,
                  started: float | None = None, timer=None) -> TimePlan:
    """The plan for a run of `config` given `budget_s` seconds from `started` (time.monotonic();
    default now), the settings in `fixed` kept as they are."""
    started = time.monotonic() if started is None else started
    if "max_iters" in fixed:
        raise UsageError("--time fits the iterations to the time: give --time or --max-iters, not both")
    config, dataset = prepare_training(config)
    timer = timer or default_timer(threads)
    shapes = candidate_shapes(config, fixed)
    val_tokens = predictions(dataset.val, dataset.val_mask)
    flops = {s: param_report(_shaped(config, s).model).flops_per_token() for s in shapes}
    reference = min(shapes, key=lambda s: abs(math.log(flops[s] / param_report(config.model).flops_per_token())))
    timed = {reference: timer(_shaped(config, reference), 50.0)}
    seconds_left = lambda: budget_s - (time.monotonic() - started)  # noqa: E731

    def ranked() -> list[Candidate]:
        per_flop = timed[reference] / flops[reference]
        found = [_candidate(config, s, timed.get(s, flops[s] * per_flop), s in timed, seconds_left(), val_tokens, rule) for s in shapes]
        return sorted(found, key=lambda c: c.predicted_loss)

    def time_it(c: Candidate) -> None:
        shape = (c.n_layer, c.n_embd, c.n_head)
        timed[shape] = timer(_shaped(config, shape), c.ms_per_iter)

    for c in ranked()[:TIMED]:
        if not c.timed:
            time_it(c)
    # A candidate that the timings moved to the top without being timed itself is timed too.
    while not (candidates := ranked())[0].timed and len(timed) < 2 * TIMED + 1:
        time_it(candidates[0])
    chosen = next(c for c in candidates if c.timed)
    if chosen.iters < MIN_ITERS:
        raise TinyGPTError(f"--time {describe_duration(budget_s)} leaves time for {chosen.iters} iterations of the "
                           f"{chosen.shape} model after the evaluations: too few to train anything",
                           "give more time, or a smaller model (--n-layer, --n-embd)")
    settings = {"max_iters": chosen.iters, "time": budget_s}
    if "eval_interval" not in fixed:
        settings["eval_interval"] = max(1, chosen.iters // EVALUATIONS)
    if config.train.warmup_iters >= chosen.iters:
        settings["warmup_iters"] = chosen.iters // 10
    final = _shaped(config, (chosen.n_layer, chosen.n_embd, chosen.n_head), **settings)
    return TimePlan(budget_s, final, chosen, candidates, rule, extrapolations(final, chosen, dataset, rule, fixed),
                    time.monotonic() - started)


def extrapolations(config: RunConfig, chosen: Candidate, dataset: Dataset, rule: Rule, fixed: set[str]) -> list[str]:
    """Where the plan leaves what the rule was fitted on, in words."""
    notes = []
    f = rule.fitted_on
    ranges = rule.ranges()
    kept = [flag_name(k) for k in SHAPE if k in fixed]
    if kept:
        notes.append(f"kept your {', '.join(kept)}; the plan chose the rest around {'it' if len(kept) == 1 else 'them'}")
    tokenizer = dataset.info.tokenizer
    if f.get("tokenizer") and (tokenizer != f["tokenizer"] or dataset.tokenizer.size != f.get("vocab_size")):
        notes.append(f"the rule was fitted on {f['tokenizer']} tokens ({f.get('vocab_size')}) of {f.get('corpus')}; this dataset "
                     f"has {dataset.tokenizer.size:,} {tokenizer} tokens: its losses are on another scale, and the choice is extrapolated")
    if "epochs" in ranges:
        epochs = chosen.tokens / max(1, len(dataset.train))
        low, high = ranges["epochs"]
        if not 0.5 * low <= epochs <= 2 * high:
            notes.append(f"this run sees its training text {epochs:.2g} times; the rule's runs saw theirs {low:.2g} to {high:.2g} "
                         "times, so what repetition costs (or a larger text gives) is extrapolated")
    for what, value, unit in (("params", chosen.params, "parameters"), ("tokens", chosen.tokens, "tokens")):
        low, high = ranges[what]
        if not 0.5 * low <= value <= 2 * high:
            notes.append(f"{value / 1e6:.2f}M {unit}: outside the {low / 1e6:.2f}M to {high / 1e6:.2f}M the rule was fitted on")
    recipe = f.get("recipe_settings", {})
    differs = sorted(k for k, v in recipe.items() if config.flat().get(k) != v)
    if differs:
        notes.append(f"the rule's runs used another {', '.join(flag_name(k) for k in differs)}: its predictions are extrapolated")
    return notes
