"""Training: the learning-rate schedule, the step, evaluation, checkpoints and exact resume.

Batches come from batches.py, the optimiser from optim.py, the random generators' capture and
restore from rng.py. The loop reports progress to a `TrainingReporter`; the CLI supplies one
that renders it.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint, load_checkpoint, load_model_weights, model_weights, save_checkpoint
from .config import SHAPE_FIELDS, RunConfig, TrainConfig, build_config, check_against_data, flag_name
from .batches import Batches
from .data import Dataset, load_dataset
from .devices import autocast_for, device_memory_bytes, keep_freed_cpu_memory, pick_device, pick_dtype
from .distributed import DistContext, all_reduce_sum, barrier, init_process_group
from .errors import CheckpointError, TinyGPTError, TrainingStopped, UsageError
from .fsutil import read_json, short_list, write_json_atomic
from .model import GPT
from .optim import make_optimizer, restore_groups, state_problems
from .params import activation_bytes, param_report
from .rng import capture_rng, restore_rng, rng_problems, seed_all
from .runs import RunDir
from .threads import SMALL_STEP_FLOPS, ThreadPolicy

LOG_INTERVAL = 10  # steps between step records in metrics.jsonl
# Rough sustained throughput, for the projection printed before the first step.
ASSUMED_FLOPS = {"cpu": 3e10, "mps": 3e12, "cuda": 5e13}
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def learning_rate_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if cfg.lr_decay == "constant":
        return cfg.learning_rate
    progress = min(1.0, (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    coeff = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_decay == "cosine" else 1 - progress
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


TRAINING_BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments


def build_model(config: RunConfig, device: torch.device) -> GPT:
    """The model on `device`. A model, or a batch, that cannot fit is a one-line error before
    anything is allocated (on Linux an oversized CPU allocation would not fail: the process
    would be killed, or fail deep inside a step)."""
    n = param_report(config.model).total
    hint = "lower --n-embd, --n-layer or --block-size (tinygpt params shows the count)"
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


class EvaluationAbandoned(Exception):
    """A stop signal arrived during an evaluation: its losses are not needed any more."""


class StopSignals:
    """First SIGINT/SIGTERM: remember it, say so (`on_first`, called inside the signal handler),
    let the loop save and stop. Second: abort at once."""

    def __init__(self, on_first: Any = None) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._on_first = on_first

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self._on_first is not None:
            self._on_first(signum)

    def __enter__(self) -> StopSignals:
        for sig in SIGNAL_EXIT:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class StartInfo:
    run: Path
    config: RunConfig
    device: str
    dtype: str
    threads: str | None  # CPU threads and why (threads.ThreadPolicy); None off a CPU
    n_params: int
    tokens_per_iter: int
    start_iter: int
    projected_seconds: float
    # Set when a resumed run trained in another precision until now (a machine with or without
    # hardware bfloat16 under --dtype auto, a GPU run resumed on a CPU): not bit-exact then.
    previous_dtype: str | None = None
    # Set when `best` was saved after `last` (a stop came between an evaluation's two saves):
    # the iteration of that best checkpoint, which the resumed run keeps as its best.
    best_saved_after_last: int | None = None
    # A prompt from the run's own text (its first line), for the hint at the end.
    sample_prompt: str = ""


class TrainingReporter:
    """Receives progress; the CLI renders it. Every method does nothing by default."""

    def on_start(self, info: StartInfo) -> None: ...
    def on_step(self, record: dict[str, Any]) -> None: ...
    def on_eval(self, record: dict[str, Any]) -> None: ...
    def on_end(self, status: str, record: dict[str, Any]) -> None: ...
    def on_stop_requested(self, signum: int) -> None:
        """The first Ctrl-C or SIGTERM arrived. Called inside the signal handler, between two
        bytecodes of anything: write without locks (os.write), never block."""


@dataclass
class TrainResult:
    run: Path
    iteration: int
    best_val_loss: float | None
    last_val_loss: float | None
    elapsed: float


class Trainer:
    def __init__(self, config: RunConfig, dataset: Dataset, run: RunDir, reporter: TrainingReporter,
                 dist: DistContext = DistContext()):
        self.config, self.dataset, self.run, self.reporter = config, dataset, run, reporter
        self.dist = dist
        self.rank, self.world_size = dist.rank, dist.world_size
        cfg = config.train
        self.device = pick_device(cfg.device)
        if self.device.type == "cuda" and dist.enabled:
            self.device = torch.device("cuda", dist.local_rank)
        init_process_group(dist, self.device.type)  # also makes this rank's GPU the current one
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.threads: ThreadPolicy | None = None
        if self.device.type == "cpu":
            keep_freed_cpu_memory()  # each step then reuses the last one's pages
            step_flops = param_report(config.model).flops_per_token() * cfg.batch_size * config.model.block_size
            self.threads = ThreadPolicy(step_flops < SMALL_STEP_FLOPS, dist.world_size)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        seed_all(cfg.seed)
        self.model = build_model(config, self.device)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # DDP all-reduces (averages) gradients across ranks during backward.
            self.forward = DistributedDataParallel(self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        block = config.model.block_size
        self.splits = {"train": Batches(dataset.train, block, self.device), "val": Batches(dataset.val, block, self.device)}
        self.step = 0
        self.best_val: float | None = None
        self.last_val: float | None = None
        self.evaluated_at = -1
        self.saved_at = -1
        self.elapsed_before = 0.0
        self.stop: StopSignals | None = None  # set while fit() runs
        self.saved_dtype: str | None = None  # the precision of the checkpoint resumed from
        self.best_saved_after_last: int | None = None

    # --- state in and out of checkpoints -------------------------------------------------
    def restore(self, ckpt: Checkpoint) -> None:
        """Take the state of `ckpt`, checked whole against this model before anything is set."""
        path = self.run.last_path
        if ckpt.optimizer is None or ckpt.rng is None:
            raise CheckpointError(f"{path} has no optimiser or RNG state: it cannot be resumed")
        problems = state_problems(self.optimizer, ckpt.optimizer, ckpt.iteration)
        problems += rng_problems(ckpt.rng)
        if problems:
            raise CheckpointError(f"{path} has optimiser or RNG state that does not fit this run: {'; '.join(problems[:3])}")
        load_model_weights(self.model, ckpt.weights, path)
        built_groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict(ckpt.optimizer)
        restore_groups(self.optimizer, built_groups)
        try:
            restore_rng(ckpt.rng, self.data_gen, self.device)
        except RuntimeError as e:  # a CUDA state of the wrong size
            raise CheckpointError(f"{path} has an RNG state this machine cannot take: {e}") from e
        self.step = ckpt.iteration
        self.best_val = ckpt.best_val_loss
        self.last_val = ckpt.val_loss
        self.evaluated_at = ckpt.progress.get("evaluated_at", -1)
        self.saved_at = ckpt.iteration
        self.elapsed_before = ckpt.progress.get("elapsed", 0.0)
        self.saved_dtype = ckpt.progress.get("dtype")

    def keep_best_saved_after_last(self) -> None:
        """An evaluation saves `best`, then `last`: a kill (or a failed `last` save) between the two
        leaves `best` ahead of `last`. Its loss becomes the best so far, as the resumed run may
        not reach it again (another --max-iters changes the schedule) and `best` must stay the
        checkpoint of the best loss the run records; a better evaluation still replaces it."""
        try:
            best = load_checkpoint(self.run.best_path)  # verified: a damaged file is not kept as the best
        except CheckpointError:  # none, or damaged: the next improvement replaces it
            return
        ahead = best.iteration > self.step and best.val_loss is not None
        if ahead and (self.best_val is None or best.val_loss < self.best_val):
            self.best_val = best.val_loss
            self.best_saved_after_last = best.iteration

    def _checkpoint(self, kind: str) -> Checkpoint:
        full = kind == "last"
        return Checkpoint(
            kind=kind,
            model_config=self.config.model,
            vocab=self.dataset.vocab,
            iteration=self.step,
            weights=model_weights(self.model),
            best_val_loss=self.best_val,
            val_loss=self.last_val,
            train_config=self.config.train.model_dump(),
            optimizer=self.optimizer.state_dict() if full else None,
            rng=capture_rng(self.data_gen, self.device) if full else None,
            progress={"elapsed": self.elapsed(), "evaluated_at": self.evaluated_at, "dtype": self.dtype_name},
        )

    def save(self, kind: str) -> None:
        if self.rank != 0:
            return
        try:
            save_checkpoint(self.run.last_path if kind == "last" else self.run.best_path, self._checkpoint(kind))
        except CheckpointError as e:  # the previous file is intact: the run can go on from it later
            with suppress(OSError):  # on a full disk the status may not be writable either
                self._write_status("failed", iteration=self.step, reason=e.message)
            if self.saved_at >= 0:
                hint = f"free some disk space, then: tinygpt resume {self.run.path}  (continues from iteration {self.saved_at})"
            else:
                hint = f"free some disk space, then: tinygpt train --out {self.run.path} --overwrite"
            raise CheckpointError(e.message, hint) from e
        if kind == "last":
            self.saved_at = self.step

    def _write_status(self, status: str, **fields: Any) -> None:
        """run.json, with the CPU threads in use (they change with the machine's load)."""
        threads = {"threads": self.threads.describe()} if self.threads is not None else {}
        self.run.write_status(status, **fields, **threads)

    # --- the work ------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._t0

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
        losses = {}
        for split, batches in self.splits.items():
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            total = torch.zeros((), device=self.device)
            for _ in range(cfg.eval_iters):
                if self._stop_requested() and not self.dist.enabled:  # ranks must finish it together
                    self.model.train()
                    raise EvaluationAbandoned
                x, y = batches.sample(cfg.batch_size * self.world_size * cfg.grad_accum, gen)
                for micro in range(cfg.grad_accum):
                    rows = self._my_rows(micro)
                    with autocast_for(self.device, self.dtype):
                        _, loss = self.model(x[rows], y[rows])
                    total += loss.float()
            n_batches = cfg.eval_iters * cfg.grad_accum * self.world_size
            losses[split] = all_reduce_sum(total, self.dist).item() / n_batches
        self.model.train()
        return losses

    def train_step(self) -> torch.Tensor:
        """One optimiser step; returns this rank's mean loss (a 0-d tensor, not yet synchronised)."""
        cfg = self.config.train
        lr = learning_rate_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        B, accum = cfg.batch_size, cfg.grad_accum
        x_all, y_all = self.splits["train"].sample(B * self.world_size * accum, self.data_gen)
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            rows = self._my_rows(micro)
            with self._sync_context(micro == accum - 1), autocast_for(self.device, self.dtype):
                _, loss = self.forward(x_all[rows], y_all[rows])
            self.scaler.scale(loss / accum).backward()
            total += loss.detach().float()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total / accum

    def _stop_requested(self) -> bool:
        return self.stop is not None and self.stop.signum is not None

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

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            with open(self.run.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _maybe_evaluate(self) -> None:
        cfg = self.config.train
        due = self.step % cfg.eval_interval == 0 or self.step == cfg.max_iters
        if not due or self.evaluated_at == self.step:
            return
        try:
            losses = self.evaluate()
        except EvaluationAbandoned:  # a stop: `last` is saved without it, a resume evaluates again
            return
        self.evaluated_at = self.step
        self.last_val = losses["val"]
        record = {"iter": self.step, "train_loss": losses["train"], "val_loss": losses["val"],
                  "lr": learning_rate_at(max(0, self.step - 1), cfg), "elapsed": self.elapsed()}
        improved = self.best_val is None or losses["val"] < self.best_val
        if improved:
            self.best_val = losses["val"]
        self._log(record)
        # `best` first: a crash between the two saves then leaves `last` at the previous
        # evaluation and `best` ahead of it, which a resume keeps (keep_best_saved_after_last).
        if improved:
            self.save("best")
        self.save("last")
        if self.rank == 0:
            self._write_status("running", iteration=self.step, max_iters=cfg.max_iters, best_val_loss=self.best_val)
        self.reporter.on_eval({**record, "best_val_loss": self.best_val, "improved": improved})

    def start_info(self) -> StartInfo:
        cfg, m = self.config.train, self.config.model
        tokens = cfg.batch_size * cfg.grad_accum * self.world_size * m.block_size
        n = self.model.num_params()
        per_iter = param_report(m).flops_per_token() * tokens
        speed = ASSUMED_FLOPS[self.device.type] * (torch.get_num_threads() / 2 if self.device.type == "cpu" else 1)
        projected = per_iter * (cfg.max_iters - self.step) / speed / self.world_size
        previous = self.saved_dtype if self.saved_dtype not in (None, self.dtype_name) else None
        threads = self.threads.describe() if self.threads is not None else None
        return StartInfo(self.run.path, self.config, str(self.device), self.dtype_name, threads, n, tokens, self.step, projected, previous,
                         self.best_saved_after_last, first_line(self.dataset))

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def fit(self) -> TrainResult:
        """Train to max_iters (or a stop signal). A run-folder write that fails (a full disk) is one
        line: checkpoints are atomic, so the run resumes from its last save. However the run
        ends, run.json says so: never "running" once the process has left."""
        try:
            return self._fit()
        except OSError as e:
            self._record_end("failed", e)
            raise TinyGPTError(f"cannot write to the run folder {self.run.path}: {e.strerror or e}",
                               f"free some disk space, then: tinygpt resume {self.run.path}") from e
        except KeyboardInterrupt as e:  # a second Ctrl-C: abort without saving
            self._record_end("aborted", e)
            raise
        except BaseException as e:
            self._record_end("failed", e)
            raise

    def _record_end(self, status: str, error: BaseException) -> None:
        """Write the final status, unless one was written already (stopped, failed on a save...)."""
        if self.rank != 0 or self.run.read_status().get("status") != "running":
            return
        reason = getattr(error, "message", None) or f"{type(error).__name__}: {error}".strip(": ")
        with suppress(OSError):  # on a full disk the status may not be writable either
            self._write_status(status, iteration=self.step, max_iters=self.config.train.max_iters,
                                  best_val_loss=self.best_val, reason=reason)

    def _fit(self) -> TrainResult:
        cfg = self.config.train
        self._t0 = time.perf_counter()
        info = self.start_info()
        self.reporter.on_start(info)
        if self.rank == 0:
            self._write_status("running", iteration=self.step, max_iters=cfg.max_iters, best_val_loss=self.best_val)
        window_start, window_steps = time.perf_counter(), 0
        with StopSignals(self.reporter.on_stop_requested) as stop:
            self.stop = stop
            self._maybe_evaluate()
            stopping = False
            while self.step < cfg.max_iters and not stopping:
                if stop.signum is not None and not self.dist.enabled:
                    stopping = True  # one process needs no agreement: stop before another step
                    break
                if self.threads is not None:
                    self.threads.adjust()  # fewer threads while other processes want the cores
                loss, stopping = self._agree(self.train_step(), stop.signum is not None)
                self.step += 1
                window_steps += 1
                if not math.isfinite(loss):
                    self._fail_non_finite(loss)
                if self.step % LOG_INTERVAL == 0 or self.step == cfg.max_iters:
                    now = time.perf_counter()
                    record = {"iter": self.step, "loss": loss, "lr": learning_rate_at(self.step - 1, cfg),
                              "tokens_per_s": window_steps * info.tokens_per_iter / (now - window_start),
                              "elapsed": self.elapsed()}
                    window_start, window_steps = now, 0
                    self._log(record)
                    self.reporter.on_step(record)
                if not stopping:
                    self._maybe_evaluate()
            if stopping:
                return self._stop(stop.signum or signal.SIGTERM)
        barrier(self.dist)  # leave together: a rank tearing down early can crash its peers' transport
        return self._finish("finished")

    def _finish(self, status: str) -> TrainResult:
        result = TrainResult(self.run.path, self.step, self.best_val, self.last_val, self.elapsed())
        if self.rank == 0:
            self._write_status(status, iteration=self.step, max_iters=self.config.train.max_iters,
                                  best_val_loss=self.best_val, elapsed=result.elapsed)
        self.reporter.on_end(status, result.__dict__)
        return result

    def _stop(self, signum: int) -> TrainResult:
        if self.saved_at != self.step:
            self.save("last")
        barrier(self.dist)  # no rank leaves before rank 0 has saved
        self._finish("stopped")
        name = signal.Signals(signum).name
        raise TrainingStopped(
            f"{name} received: saved {self.run.last_path} at iteration {self.step}",
            f"tinygpt resume {self.run.path}",
            SIGNAL_EXIT[signum],
        )

    def _fail_non_finite(self, loss: float) -> None:
        if self.rank == 0:
            self._write_status("failed", iteration=self.step, reason=f"loss {loss} at iteration {self.step}")
        last = f"{self.run.last_path} (iteration {self.saved_at})" if self.saved_at >= 0 else "none was saved yet"
        raise TinyGPTError(
            f"the loss became {loss} at iteration {self.step}; training stopped without saving. Last good checkpoint: {last}",
            f"tinygpt resume {self.run.path} --learning-rate {self.config.train.learning_rate / 3:g}",
        )


def first_line(dataset: Dataset, max_chars: int = 30) -> str:
    """The first line of the training text that is not blank, cut to `max_chars`: a prompt the
    model has seen the like of, whatever the corpus (a play, code, another language)."""
    head = dataset.vocab.decode(dataset.train[: 20 * max_chars].tolist())
    line = next((line.strip() for line in head.splitlines() if line.strip()), "")
    return line[:max_chars]


def prepare_training(config: RunConfig) -> tuple[RunConfig, Dataset]:
    """Load the dataset and fit the config to it (vocabulary size, absolute data path)."""
    data_dir = Path(config.train.data_dir).resolve()
    dataset = load_dataset(data_dir)
    flat = {**config.flat(), "vocab_size": dataset.vocab.size, "data_dir": str(data_dir)}
    config = build_config(flat)
    check_against_data(config, len(dataset.train), len(dataset.val), dataset.vocab.size)
    return config, dataset


def train_new(config: RunConfig, run_path: Path, reporter: TrainingReporter | None = None,
              overwrite: bool = False, dist: DistContext = DistContext()) -> TrainResult:
    """Start a run in `run_path`. Under torchrun only rank 0 touches the folder."""
    config, dataset = prepare_training(config)
    run = RunDir(run_path)
    foreign = run.foreign_files() if dist.is_main else []
    if foreign:
        raise UsageError(f"{run.path} holds files that are not a tinygpt run's ({short_list(foreign)}): a run folder holds only its own files",
                         "train into a new or empty folder with --out runs/NAME")
    with run.locked() if dist.is_main else nullcontext():
        if dist.is_main:
            if run.has_checkpoint() or run.metrics_path.exists():
                if not overwrite:
                    raise UsageError(f"{run.path} already holds a run", f"tinygpt resume {run.path}  (or pass --overwrite to start it again)")
                run.clear()
            write_json_atomic(run.config_path, config.model_dump())
        return Trainer(config, dataset, run, reporter or TrainingReporter(), dist).fit()


def read_run_config(run: RunDir) -> RunConfig:
    try:
        return RunConfig(**read_json(run.config_path))
    except FileNotFoundError as e:
        raise TinyGPTError(f"{run.path} is not a run folder (no config.json)", "tinygpt train --out RUN  (starts one)") from e
    except Exception as e:
        raise TinyGPTError(f"{run.config_path} is unreadable: {e}") from e


def resume(run_path: Path, overrides: dict[str, Any] | None = None, reporter: TrainingReporter | None = None,
           dist: DistContext = DistContext()) -> TrainResult:
    """Continue a run from its `last` checkpoint; `overrides` may change non-shape settings.

    The number of processes may differ from the first launch; the data order then follows the
    new global batch size from the resumed iteration on.
    """
    run = RunDir(run_path)
    if not run.path.is_dir():
        raise UsageError(f"no run folder at {run.path}", "ls runs/  (lists run folders)")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    refused = sorted(set(overrides) & set(SHAPE_FIELDS))
    if refused:
        raise UsageError(f"cannot change the model's shape on resume ({', '.join(map(flag_name, refused))})",
                         "start a new run with tinygpt train instead")
    with run.locked() if dist.is_main else nullcontext():
        saved = read_run_config(run)
        config = build_config({**saved.flat(), **overrides})
        if not run.last_path.exists():
            raise TinyGPTError(f"{run.path} has no last checkpoint to resume from", f"tinygpt train --out {run.path} --overwrite")
        ckpt = load_checkpoint(run.last_path)
        if config.train.max_iters < ckpt.iteration:
            raise UsageError(f"--max-iters {config.train.max_iters} is below the {ckpt.iteration} iterations already done",
                             f"tinygpt resume {run.path} --max-iters {ckpt.iteration * 2}")
        config, dataset = prepare_training(config)
        if ckpt.vocab != dataset.vocab:
            raise TinyGPTError(f"the dataset in {config.train.data_dir} has a different vocabulary from the checkpoint",
                               f"rebuild the dataset this run trained on with the same `tinygpt prepare` command, into {config.train.data_dir}")
        trainer = Trainer(config, dataset, run, reporter or TrainingReporter(), dist)
        trainer.restore(ckpt)  # checks the whole state: nothing in the folder has changed yet
        trainer.keep_best_saved_after_last()
        if dist.is_main:
            write_json_atomic(run.config_path, config.model_dump())
            run.truncate_metrics(ckpt.iteration)
        return trainer.fit()
