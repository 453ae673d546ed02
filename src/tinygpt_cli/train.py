"""The training loop: the learning-rate schedule, one optimiser step, evaluation.

Read it the way nanoGPT's train.py reads: `learning_rate_at`, then `Trainer.train_step` (forward,
backward, clip, step), `Trainer.evaluate` (nanoGPT's estimate_loss) and `Trainer.fit`, the loop.
What surrounds the loop lives elsewhere:
- data/batches.py draws the batches; optim.py builds AdamW or Muon; system/rng.py keeps the
  training's random generators as its own; system/devices.py picks the device and precision
  (the model is built there at the end of this file); system/distributed.py holds the torchrun
  plumbing;
- lifecycle.py starts and resumes runs, saves checkpoints, stops cleanly on Ctrl-C and keeps
  run.json true. The Trainer reads and writes no file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch

from .data.batches import IGNORE, Batches
from .checkpoint import Checkpoint, load_model_weights, model_weights
from .config import RunConfig, TrainConfig
from .data.dataset import Dataset
from .errors import Command, TinyGPTError
from .evaluate import bits_per_byte
from .model import GPT
from .optim import make_optimizer, restore_groups
from .params import activation_bytes, param_report
from .system.devices import autocast_for, device_memory_bytes, pick_device, pick_dtype
from .system.distributed import DistContext, all_reduce_sum, init_process_group
from .system.rng import TrainingRNG
from .system.threads import SMALL_STEP_FLOPS, ThreadPolicy

LOG_INTERVAL = 10  # steps between step records in metrics.jsonl


def learning_rate_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine (or linear) decay to min_lr, or a constant rate."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if cfg.lr_decay == "constant":
        return cfg.learning_rate
    progress = min(1.0, (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    coeff = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_decay == "cosine" else 1 - progress
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


class EvaluationAbandoned(Exception):
    """A stop was asked for during an evaluation: its losses are not needed any more."""


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite: the weights are broken from this step on."""

    def __init__(self, loss: float, iteration: int):
        super().__init__(f"loss {loss} at iteration {iteration}")
        self.loss, self.iteration = loss, iteration


class LoopEvents(Protocol):
    """What the loop tells the run around it (lifecycle.py:TrainingRun), and asks of it."""

    def stop_requested(self) -> bool: ...
    def on_step(self, record: dict[str, Any]) -> None: ...
    def on_eval(self, record: dict[str, Any], improved: bool) -> None: ...


class Trainer:
    """The model, its optimiser and its data in one training process (one rank under torchrun).

    It changes nothing of the process beyond its own objects: its random numbers are its own
    (system/rng.py), and torch's thread count changes only through a `threads` policy handed to
    it (system/process.py:init_process)."""

    def __init__(self, config: RunConfig, dataset: Dataset, dist: DistContext = DistContext(),
                 threads: ThreadPolicy | None = None):
        self.config, self.dataset, self.dist = config, dataset, dist
        self.rank, self.world_size = dist.rank, dist.world_size
        cfg = config.train
        self.device = training_device(cfg.device, dist)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.threads = threads if self.device.type == "cpu" else None
        if self.threads is not None:
            step_flops = param_report(config.model).flops_per_token() * cfg.batch_size * config.model.block_size
            self.threads.fit(small=step_flops < SMALL_STEP_FLOPS, processes=dist.world_size)
        self.rng = TrainingRNG(cfg.seed, self.device)
        with self.rng.drawing():  # the first weights
            self.model = build_model(config, self.device)
        self.optimizer = make_optimizer(self.model, cfg, self.device, self.dtype)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # DDP all-reduces (averages) gradients across ranks during backward.
            self.forward = DistributedDataParallel(self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # float16 needs loss scaling (its gradients underflow); bfloat16 and float32 do not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        block = config.model.block_size
        # Conversations (a chat dataset): windows from each conversation's start, trained on the
        # assistant's tokens only (data/batches.py).
        self.masked = dataset.train_mask is not None
        self.splits = {"train": Batches(dataset.train, block, self.device, dataset.train_mask),
                       "val": Batches(dataset.val, block, self.device, dataset.val_mask)}
        # Bits per byte = val loss / ln 2 / the val split's bytes per token: comparable across tokenizers.
        self.val_bytes_per_token = dataset.val_bytes_per_token()
        self.step = 0
        self.best_val: float | None = None
        self.last_val: float | None = None
        self.evaluated_at = -1
        self.grad_norm = torch.zeros(())  # of the last step's gradient, before clipping
        self.elapsed_before = 0.0  # training seconds of the runs this one resumes
        self.grown_tokens = 0  # fine-tuning: tokens the source's vocabulary lacked (lifecycle.py)
        self.scored: dict[str, int] = {}  # chat: the trained tokens each split's last estimate scored
        self._t0 = time.perf_counter()
        self.stop_requested: Callable[[], bool] = lambda: False  # fit() sets the run's
        self.evaluating = False  # inside evaluate(): a stop then cuts the evaluation short
        self.eval_seconds = 0.0  # the last evaluation's

    # --- state in and out of checkpoints -------------------------------------------------
    def checkpoint(self, kind: str) -> Checkpoint:
        """`last` holds everything a resume needs; `best` only the weights and where they stand."""
        full = kind == "last"
        return Checkpoint(
            kind=kind,
            model_config=self.config.model,
            tokenizer=self.dataset.tokenizer,
            iteration=self.step,
            weights=model_weights(self.model),
            best_val_loss=self.best_val,
            val_loss=self.last_val,
            train_config=self.config.train.model_dump(),
            optimizer=self.optimizer.state_dict() if full else None,
            rng=self.rng.capture() if full else None,
            progress={"elapsed": self.elapsed(), "evaluated_at": self.evaluated_at, "dtype": self.dtype_name,
                      "val_bytes_per_token": self.val_bytes_per_token, "data_sha256": self.dataset.info.digest,
                      "loss_scale": self._loss_scale(), "eval_tokens": self.eval_tokens()},
            chat_template=self.dataset.info.chat_template,
        )

    def load_state(self, ckpt: Checkpoint, source: Path) -> None:
        """Continue from `ckpt` (read from `source`), which lifecycle.py has checked against
        this model and optimiser."""
        load_model_weights(self.model, ckpt.weights, source)
        built_groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict(ckpt.optimizer)
        restore_groups(self.optimizer, built_groups)  # the settings of this run's config
        self.rng.restore(ckpt.rng)
        self.step = ckpt.iteration
        self.best_val, self.last_val = ckpt.best_val_loss, ckpt.val_loss
        self.evaluated_at = ckpt.progress.get("evaluated_at", -1)
        self.elapsed_before = ckpt.progress.get("elapsed", 0.0)
        if self.scaler.is_enabled() and ckpt.progress.get("loss_scale"):
            saved = ckpt.progress["loss_scale"]
            self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": saved["scale"], "_growth_tracker": saved["growth_tracker"]})

    def _loss_scale(self) -> dict | None:
        """float16's loss scale, which a bit-exact resume needs (it decides which steps are skipped)."""
        if not self.scaler.is_enabled():
            return None
        state = self.scaler.state_dict()
        return {"scale": float(state["scale"]), "growth_tracker": int(state["_growth_tracker"])}

    def start_from(self, weights: dict[str, torch.Tensor], source: str) -> None:
        """Fine-tuning: pretrained weights in place of the random ones, before the first step
        (the optimiser's state and the schedule start fresh)."""
        load_model_weights(self.model, weights, source)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._t0

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    # --- the work ------------------------------------------------------------------------
    def _my_rows(self, micro: int) -> slice:
        """This rank's rows of a global batch for micro-step `micro` (see Batches)."""
        B, k = self.config.train.batch_size, micro * self.world_size + self.rank
        return slice(k * B, (k + 1) * B)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over `eval_iters` global batches of each split, the same windows at every
        evaluation; each rank scores its slices, as in training, and the sums are combined."""
        cfg = self.config.train
        self.model.eval()
        self.evaluating = True
        try:
            return self._evaluate_splits(cfg)
        finally:
            self.evaluating = False
            self.model.train()

    def _evaluate_splits(self, cfg: TrainConfig) -> dict[str, float]:
        losses = {}
        for split, batches in self.splits.items():
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            total, trained = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
            for _ in range(cfg.eval_iters):
                if self.stop_requested() and not self.dist.enabled:  # ranks must finish it together
                    raise EvaluationAbandoned
                x, y = batches.sample(cfg.batch_size * self.world_size * cfg.grad_accum, gen)
                for micro in range(cfg.grad_accum):
                    rows = self._my_rows(micro)
                    with autocast_for(self.device, self.dtype):
                        _, loss = self.model(x[rows], y[rows], reduction="sum" if self.masked else "mean")
                    total += loss.float()
                    if self.masked:
                        trained += (y[rows] != IGNORE).sum()
            if self.masked:  # the mean over the trained tokens
                total, trained = all_reduce_sum(torch.stack([total, trained]), self.dist).tolist()
                losses[split] = total / max(trained, 1)
                self.scored[split] = int(trained)
            else:
                n_batches = cfg.eval_iters * cfg.grad_accum * self.world_size
                losses[split] = all_reduce_sum(total, self.dist).item() / n_batches
        return losses

    def train_step(self) -> torch.Tensor:
        """One optimiser step; returns this rank's mean loss (a 0-d tensor, not yet synchronised)."""
        cfg = self.config.train
        lr = learning_rate_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        B, accum = cfg.batch_size, cfg.grad_accum
        x_all, y_all = self.splits["train"].sample(B * self.world_size * accum, self.rng.data)
        # Conversations: the step's loss is the mean over the trained tokens of the whole global
        # batch, so each micro-batch adds its sum over their count (DDP's average across ranks
        # takes the world size back out); a window with no trained token adds exactly nothing.
        trained = (y_all != IGNORE).sum().clamp(min=1) if self.masked else None
        total = torch.zeros((), device=self.device)
        with self.rng.drawing():  # dropout
            for micro in range(accum):
                rows = self._my_rows(micro)
                with self._sync_context(micro == accum - 1), autocast_for(self.device, self.dtype):
                    _, loss = self.forward(x_all[rows], y_all[rows], reduction="mean" if trained is None else "sum")
                if trained is None:
                    self.scaler.scale(loss / accum).backward()
                else:
                    loss = loss * self.world_size / trained
                    self.scaler.scale(loss).backward()
                total += loss.detach().float()
        # The gradient's norm, for the logs, clipped to grad_clip (0: not clipped, the norm is still measured).
        self.scaler.unscale_(self.optimizer)
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total / accum if trained is None else total

    def _sync_context(self, last_micro_step: bool):
        # Under DDP, all-reduce gradients only once per step, on the last micro-batch.
        if self.dist.enabled and not last_micro_step:
            return self.forward.no_sync()
        return nullcontext()

    def _agree(self, loss: torch.Tensor, stop_requested: bool) -> tuple[float, bool]:
        """The loss averaged over ranks, and whether any rank was asked to stop: one all-reduce,
        so that every rank stops after the same step."""
        both = torch.stack([loss.float(), torch.tensor(float(stop_requested), device=loss.device)])
        both = all_reduce_sum(both, self.dist)
        return both[0].item() / self.world_size, bool(both[1].item() > 0)

    def _maybe_evaluate(self, events: LoopEvents) -> None:
        cfg = self.config.train
        due = self.step % cfg.eval_interval == 0 or self.step == cfg.max_iters
        if not due or self.evaluated_at == self.step:
            return
        started = time.perf_counter()
        try:
            losses = self.evaluate()
        except EvaluationAbandoned:  # a stop: `last` is saved without it, a resume evaluates again
            return
        self.eval_seconds = time.perf_counter() - started
        self.evaluated_at = self.step
        self.last_val = losses["val"]
        improved = self.best_val is None or losses["val"] < self.best_val
        if improved:
            self.best_val = losses["val"]
        events.on_eval({"iter": self.step, "train_loss": losses["train"], "val_loss": losses["val"],
                        "val_bits_per_byte": self.bits_per_byte(losses["val"]),
                        "lr": learning_rate_at(max(0, self.step - 1), cfg), "elapsed": self.elapsed()}, improved)

    def bits_per_byte(self, loss: float) -> float:
        return bits_per_byte(loss, self.val_bytes_per_token)

    def finite_grad_norm(self) -> float | None:
        """The last step's gradient norm; None when float16's loss scaling overflowed it (the
        scaler then skips that step), as JSON has no inf."""
        norm = self.grad_norm.item()
        return norm if math.isfinite(norm) else None

    def eval_tokens(self) -> int:
        """The tokens each val loss estimate of `evaluate` is taken over: eval_iters global batches
        (on conversations, the trained tokens among them)."""
        return self.scored.get("val") or self.config.train.eval_iters * self.tokens_per_iter()

    def tokens_per_iter(self) -> int:
        return self.config.tokens_per_step * self.world_size

    def reached_target(self) -> bool:
        target = self.config.train.stop_at_val_loss
        return target is not None and self.last_val is not None and self.last_val <= target

    def fit(self, events: LoopEvents) -> bool:
        """Train to max_iters (or to the val loss target), evaluating every eval_interval steps.
        Returns False when `events` asked to stop first; raises NonFiniteLoss when the loss diverges."""
        self._t0 = time.perf_counter()
        self.stop_requested = events.stop_requested
        self._maybe_evaluate(events)
        window_start, window_steps = time.perf_counter(), 0
        # The config is read at every step: a run given a time may change its max_iters (timekeeper.py).
        while self.step < (cfg := self.config.train).max_iters and not self.reached_target():
            if events.stop_requested() and not self.dist.enabled:
                return False  # one process needs no agreement: stop before another step
            if self.threads is not None:
                self.threads.adjust()  # fewer threads while other processes want the cores
            loss, stopping = self._agree(self.train_step(), events.stop_requested())
            self.step += 1
            window_steps += 1
            if not math.isfinite(loss):
                raise NonFiniteLoss(loss, self.step)
            if self.step % LOG_INTERVAL == 0 or self.step == cfg.max_iters:
                now = time.perf_counter()
                events.on_step({"iter": self.step, "loss": loss, "lr": learning_rate_at(self.step - 1, cfg),
                                "tokens_per_s": window_steps * self.tokens_per_iter() / (now - window_start),
                                "grad_norm": self.finite_grad_norm(), "elapsed": self.elapsed()})
                window_start, window_steps = now, 0
            if stopping:
                return False
            self._maybe_evaluate(events)
        return True


# --- the device and the model there --------------------------------------------------------

def training_device(name: str, dist: DistContext) -> torch.device:
    """The device this process trains on: its own GPU under torchrun."""
    device = pick_device(name)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    init_process_group(dist, device.type)  # also makes this rank's GPU the current one
    return device


TRAINING_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments


def build_model(config: RunConfig, device: torch.device) -> GPT:
    """The model on `device`. A model, or a batch, that cannot fit is a one-line error before
    anything is allocated (on Linux an oversized CPU allocation would not fail: the process
    would be killed, or fail deep inside a step)."""
    n = param_report(config.model).total
    hint = Command("params", why="shows the count", before="lower --n-embd, --n-layer or --block-size:")
    memory = device_memory_bytes(device)
    state = n * TRAINING_BYTES_PER_PARAM
    if memory is not None and state > memory:
        raise TinyGPTError(
            f"a model of {n:,} parameters needs about {state / 2**30:,.1f} GiB to train; "
            f"{device} has {memory / 2**30:,.1f} GiB",
            hint,
        )
    activations = activation_bytes(config.model, config.train.batch_size)
    if memory is not None and state + activations > memory:
        raise TinyGPTError(
            f"a batch of {config.train.batch_size:,} x {config.model.block_size:,} tokens needs about "
            f"{activations / 2**30:,.1f} GiB of activations, on top of {state / 2**30:,.1f} GiB for the model; "
            f"{device} has {memory / 2**30:,.1f} GiB",
            "lower --batch-size (--grad-accum keeps the tokens per step) or --block-size",
        )
    try:
        return GPT(config.model).to(device)
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise TinyGPTError(f"not enough memory on {device} for a model of {n:,} parameters", hint) from e
