"""A training run's life around the loop of train.py: start a run or resume one, save its
checkpoints, stop cleanly on Ctrl-C or SIGTERM, and keep run.json true however it ends.

`train_new` and `resume` are the entry points. Under torchrun every rank runs them and only
rank 0 touches the run folder. Progress goes to a `TrainingReporter`; the CLI supplies one that
renders it.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import nullcontext, suppress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from .checkpoint import Checkpoint, load_checkpoint, load_model_weights, save_checkpoint
from .config import SHAPE_FIELDS, RunConfig, build_config, check_against_data, describe_duration, first_problem, flag_name
from .data.dataset import Dataset, load_dataset
from .data.tokenizer import byte_lengths
from .evaluate import predictions, score_val, val_windows
from .system.distributed import DistContext, barrier
from .errors import CheckpointError, Command, TinyGPTError, TrainingStopped, UsageError
from .system.fsutil import check_writable, read_json, short_list, write_json_atomic
from .optim import state_problems
from .params import param_report
from .peak import MatmulPeak, measure_matmul_peak
from .interop.pretrained import check_tokenizer, fit_config, initial_weights, load_pretrained
from .system.rng import rng_problems
from .system.threads import ThreadPolicy
from .rundir import RunDir
from .timekeeper import Replan, TimeKeeper
from .tracking import Tracker, open_tracker
from .train import EvaluationAbandoned, NonFiniteLoss, Trainer

# Rough sustained throughput, for the projection printed before the first step.
ASSUMED_FLOPS = {"cpu": 3e10, "mps": 3e12, "cuda": 5e13}
# A finished run's best checkpoint is scored over its whole validation split up to this many
# tokens (or the tokens of one of its own estimates, if more); a larger split over this many.
FINAL_EVAL_TOKENS = 2**20
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
FREE_DISK = "free some disk space, then:"


class StopSignals:
    """First SIGINT/SIGTERM: remember it, say so (`on_first`, called inside the signal handler),
    let the loop save and stop. Second: abort at once. Only the main thread can take signals:
    a training run from another thread leaves the handlers alone and takes none."""

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
        if threading.current_thread() is threading.main_thread():
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
    chat: bool = False  # trained on conversations: `tinygpt chat` is the next step
    grown_tokens: int = 0  # fine-tuning: rows the token embedding grew by (the chat tokens)

    def notes(self) -> list[tuple[str, str]]:
        """What the start of a run says beyond its shape, for a reporter to render, as (kind,
        text): kind "info", "note" (the result changes) or "warning"."""
        train = self.config.train
        found = []
        if self.start_iter:
            found.append(("info", f"resuming at iteration {self.start_iter:,} of {train.max_iters:,}"))
        if train.time is not None:
            found.append(("info", f"given {describe_duration(train.time)}: the iterations follow this run's pace, to end on time"))
        elif train.init_from:
            found.append(("info", f"fine-tuning: the weights of {train.init_from}, a new optimiser state and schedule"))
        if self.grown_tokens:
            found.append(("info", f"the token embedding grew by {self.grown_tokens} rows for the chat tokens, each the mean of the others"))
        if self.chat and not self.start_iter:
            found.append(("info", "conversations: the loss counts the assistant's tokens only"))
        if self.previous_dtype:
            found.append(("note", f"iterations up to {self.start_iter:,} ran in {self.previous_dtype}, the rest run in {self.dtype} "
                                  "here: the result will differ slightly from an uninterrupted run"))
        if self.best_saved_after_last is not None:
            found.append(("note", f"best.safetensors (iteration {self.best_saved_after_last:,}) was saved after last.safetensors "
                                  "(an interrupted save): it is kept as the best so far"))
        if self.projected_seconds > 3600 and train.time is None:
            found.append(("warning", f"this may take about {self.projected_seconds / 3600:.1f} h on {self.device}"))
        return found


class TrainingReporter:
    """Receives progress; the CLI renders it. Every method does nothing by default."""

    def on_start(self, info: StartInfo) -> None: ...
    def on_step(self, record: dict[str, Any]) -> None: ...
    def on_eval(self, record: dict[str, Any]) -> None: ...
    def on_plan(self, record: dict[str, Any]) -> None:
        """A run given a time changed its max_iters to end on time (timekeeper.Replan): the
        record holds iter, max_iters, the previous one (was), whether it was the first half's
        calibration (calibrating) or a machine that slowed down, and a sentence (text)."""
    def on_final_eval(self, windows: int) -> Callable[[int], None]:
        """The final evaluation starts, over `windows` windows: a callback told of each batch scored."""
        return lambda n: None
    def on_end(self, status: str, record: dict[str, Any]) -> None: ...
    def on_stop_requested(self, signum: int, evaluating: bool) -> None:
        """The first Ctrl-C or SIGTERM arrived, during an evaluation (which is then cut short) or
        a step. Called inside the signal handler, between two bytecodes of anything: write
        without locks (os.write), never block."""


@dataclass
class TrainResult:
    run: Path
    iteration: int
    best_val_loss: float | None
    last_val_loss: float | None
    elapsed: float
    # The val losses above are estimates over this many tokens of windows drawn from the split
    # (eval_iters global batches); `tinygpt eval` scores every token of it.
    estimated_over_tokens: int = 0
    # A finished run: its best checkpoint scored over the validation split, as `tinygpt eval`
    # scores it (checkpoint.FinalEval's fields, and the checkpoint's iteration).
    final_eval: dict[str, Any] | None = None


class TrainingRun:
    """One process's part in a run: the Trainer, the run folder (written by rank 0 only) and the
    reporter. It answers the loop's events (train.LoopEvents)."""

    def __init__(self, trainer: Trainer, run: RunDir, reporter: TrainingReporter, tracker: Tracker = Tracker()):
        self.trainer, self.run, self.reporter, self.tracker = trainer, run, reporter, tracker
        self.is_main = trainer.rank == 0
        self.saved_at = -1  # the iteration of the last `last` checkpoint
        self.saved_dtype: str | None = None  # the precision of the checkpoint resumed from
        self.best_saved_after_last: int | None = None
        self.data_changes: list[dict[str, Any]] = []  # resumes onto another dataset (--allow-data-change), for run.json
        self.signals: StopSignals | None = None  # set while fit() runs
        self.matmul_peak: MatmulPeak | None = None  # measured when fit() starts, for run.json
        self.started = time.monotonic()  # a new run's time (--time) counts from here, its setup included
        self.keeper: TimeKeeper | None = None  # set when fit() starts, for a run given a time

    # --- resuming --------------------------------------------------------------------------
    def restore(self, ckpt: Checkpoint) -> None:
        """Take the state of `ckpt`, checked whole against this model before anything is set."""
        path = self.run.last_path
        if ckpt.optimizer is None or ckpt.rng is None:
            raise CheckpointError(f"{path} has no optimiser or RNG state: it cannot be resumed")
        problems = state_problems(self.trainer.optimizer, ckpt.optimizer, ckpt.iteration) + rng_problems(ckpt.rng)
        if problems:
            raise CheckpointError(f"{path} has optimiser or RNG state that does not fit this run: {'; '.join(problems[:3])}")
        try:
            self.trainer.load_state(ckpt, path)
        except RuntimeError as e:  # a CUDA RNG state of the wrong size
            raise CheckpointError(f"{path} has an RNG state this machine cannot take: {e}") from e
        self.saved_at = ckpt.iteration
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
        t = self.trainer
        ahead = best.iteration > t.step and best.val_loss is not None
        if ahead and (t.best_val is None or best.val_loss < t.best_val):
            t.best_val = best.val_loss
            self.best_saved_after_last = best.iteration

    # --- the loop's events -----------------------------------------------------------------
    def stop_requested(self) -> bool:
        return self.signals is not None and self.signals.signum is not None

    def on_step(self, record: dict[str, Any]) -> None:
        self._log(record)
        self.reporter.on_step(record)
        if self.keeper is not None:
            cfg = self.trainer.config.train
            replan = self.keeper.after_steps(self.trainer.step, cfg.max_iters, cfg.eval_interval, cfg.warmup_iters)
            if replan is not None:
                self._replan(replan)

    def on_eval(self, record: dict[str, Any], improved: bool) -> None:
        saving = time.perf_counter()
        self._log(record)
        # `best` first: a crash between the two saves then leaves `last` at the previous
        # evaluation and `best` ahead of it, which a resume keeps (keep_best_saved_after_last).
        if improved:
            self.save("best")
        self.save("last")
        self._write_running()
        if self.keeper is not None:
            self.keeper.evaluated(self.trainer.eval_seconds + time.perf_counter() - saving)
        self.tracker.checkpoint_saved()  # a do-nothing Tracker off rank 0
        self.reporter.on_eval({**record, "best_val_loss": self.trainer.best_val, "improved": improved})

    def _replan(self, replan: Replan) -> None:
        """Another max_iters, so that a run given a time ends on time; config.json keeps it, so a
        resume goes on with the same plan."""
        t = self.trainer
        was = t.config.train.max_iters
        t.config = t.config.model_copy(update={"train": t.config.train.model_copy(update={"max_iters": replan.max_iters})})
        if self.is_main:
            write_json_atomic(self.run.config_path, t.config.model_dump())
            self._write_running()
        why = "fitted to this run's pace" if replan.calibrating else "the machine slowed down"
        self.reporter.on_plan({"iter": t.step, "max_iters": replan.max_iters, "was": was, "calibrating": replan.calibrating,
                               "text": f"{why}: {replan.max_iters:,} iterations instead of {was:,}, to end on time"})

    def _timekeeper(self) -> TimeKeeper | None:
        t = self.trainer
        budget = t.config.train.time
        if budget is None:
            return None
        used = t.elapsed_before if t.step else time.monotonic() - self.started
        final = min(predictions(t.dataset.val, t.dataset.val_mask), max(FINAL_EVAL_TOKENS, t.eval_tokens()))
        return TimeKeeper(budget, used, t.tokens_per_iter(), 2 * t.config.train.eval_iters * t.tokens_per_iter(), final,
                          calibrate=not t.step)

    # --- the run folder ----------------------------------------------------------------------
    def save(self, kind: str) -> None:
        if not self.is_main:
            return
        path = self.run.last_path if kind == "last" else self.run.best_path
        try:
            save_checkpoint(path, self.trainer.checkpoint(kind))
        except CheckpointError as e:  # the previous file is intact: the run can go on from it later
            with suppress(OSError):  # on a full disk the status may not be writable either
                self._write_status("failed", iteration=self.trainer.step, reason=e.message)
            if self.saved_at >= 0:
                hint = Command("resume", options={"run": str(self.run.path)}, before=FREE_DISK, why=f"continues from iteration {self.saved_at}")
            else:
                hint = Command("train", options={"out": str(self.run.path), "overwrite": True}, before=FREE_DISK)
            raise CheckpointError(e.message, hint) from e
        if kind == "last":
            self.saved_at = self.trainer.step

    def _write_status(self, status: str, **fields: Any) -> None:
        """run.json, with the CPU threads in use (they change with the machine's load)."""
        threads, peak = self.trainer.threads, self.matmul_peak
        self.run.write_status(status, **fields, **({"threads": threads.describe()} if threads is not None else {}),
                              # processes: each measured its own; the logged tokens/s are all of theirs together
                              **({"matmul_peak": {**peak.to_dict(), "processes": self.trainer.world_size}} if peak is not None else {}),
                              **({"data_changes": self.data_changes} if self.data_changes else {}))

    def _write_running(self) -> None:
        if self.is_main:
            t = self.trainer
            self._write_status("running", iteration=t.step, max_iters=t.config.train.max_iters, best_val_loss=t.best_val)

    def _log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.run.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.tracker.log(record)

    # --- start and end -----------------------------------------------------------------------
    def start_info(self) -> StartInfo:
        t = self.trainer
        cfg, device = t.config.train, t.device
        per_iter = param_report(t.config.model).flops_per_token() * t.tokens_per_iter()
        speed = ASSUMED_FLOPS[device.type] * (torch.get_num_threads() / 2 if device.type == "cpu" else 1)
        projected = per_iter * (cfg.max_iters - t.step) / speed / t.world_size
        dtype = t.dtype_name
        previous = self.saved_dtype if self.saved_dtype not in (None, dtype) else None
        threads = t.threads.describe() if t.threads is not None else None
        chat = t.dataset.info.kind == "chat"
        return StartInfo(self.run.path, t.config, str(device), dtype, threads, t.model.num_params(), t.tokens_per_iter(),
                         t.step, projected, previous, self.best_saved_after_last, "" if chat else first_line(t.dataset), chat,
                         t.grown_tokens)

    def fit(self) -> TrainResult:
        """Train to max_iters (or a stop signal). A run-folder write that fails (a full disk) is one
        line: checkpoints are atomic, so the run resumes from its last save. However the run
        ends, run.json says so: never "running" once the process has left."""
        failed = True
        try:
            result = self._fit()
            failed = False
            return result
        except TrainingStopped:  # a clean stop: saved, and the tracker's run continues on resume
            failed = False
            raise
        except OSError as e:
            self._record_end("failed", e)
            raise TinyGPTError(f"cannot write to the run folder {self.run.path}: {e.strerror or e}",
                               Command("resume", options={"run": str(self.run.path)}, before=FREE_DISK)) from e
        except KeyboardInterrupt as e:  # a second Ctrl-C: abort without saving
            self._record_end("aborted", e)
            raise
        except BaseException as e:
            self._record_end("failed", e)
            raise
        finally:
            with suppress(Exception):  # the run is saved: a tracker that fails to close must not hide how it ended
                self.tracker.close(failed)

    def _fit(self) -> TrainResult:
        t = self.trainer
        self.reporter.on_start(self.start_info())
        self._write_running()
        # Under torchrun an evaluation runs to its end on every rank (they finish it together).
        cut_short = lambda: self.trainer.evaluating and not self.trainer.dist.enabled  # noqa: E731
        with StopSignals(lambda signum: self.reporter.on_stop_requested(signum, cut_short())) as self.signals:
            # What the matrix products reach at the model's shapes here (a second for the baby GPT
            # on a CPU; a stop asked meanwhile is taken before the first step): `runs` puts the
            # steps' speed against it.
            self.matmul_peak = measure_matmul_peak(t.config.model, t.config.train.batch_size, t.device, t.dtype, repeats=2)
            self._write_running()
            self.keeper = self._timekeeper()
            try:
                finished = self.trainer.fit(self)
            except NonFiniteLoss as e:
                raise self._non_finite(e) from e
            if not finished:
                return self._stop(self.signals.signum or signal.SIGTERM)
            final = self._final_evaluation() if self.is_main else None  # a stop now skips it: the run is saved
        barrier(self.trainer.dist)  # leave together: a rank tearing down early can crash its peers' transport
        return self._finish("finished", final)

    def _record_end(self, status: str, error: BaseException) -> None:
        """Write the final status, unless one was written already (stopped, failed on a save...)."""
        if not self.is_main or self.run.read_status().get("status") != "running":
            return
        t = self.trainer
        reason = getattr(error, "message", None) or f"{type(error).__name__}: {error}".strip(": ")
        with suppress(OSError):  # on a full disk the status may not be writable either
            self._write_status(status, iteration=t.step, max_iters=t.config.train.max_iters, best_val_loss=t.best_val, reason=reason)

    def _finish(self, status: str, final: dict[str, Any] | None = None) -> TrainResult:
        t = self.trainer
        result = TrainResult(self.run.path, t.step, t.best_val, t.last_val, t.elapsed(), t.eval_tokens(), final)
        if self.is_main:
            self._write_status(status, iteration=t.step, max_iters=t.config.train.max_iters, best_val_loss=t.best_val,
                               elapsed=result.elapsed, **({"final_eval": final} if final else {}))
        self.reporter.on_end(status, result.__dict__)
        return result

    def _final_evaluation(self) -> dict[str, Any] | None:
        """The best checkpoint scored over the validation split as `tinygpt eval` scores it, so
        that the figure the run ends with (and run.json, `runs`, `plot` and the model card) is the
        model's loss, not an estimate from sampled windows, which on a corpus whose parts differ
        can be several percent off (and the best of noisy estimates is biased low). A split past
        max(FINAL_EVAL_TOKENS, the estimates' own tokens) is scored over that many tokens in
        windows spread through it. Recorded in `best` (progress.final_eval) and in metrics.jsonl.
        The run is finished and saved already: a stop, or a failure (memory, a full disk), skips
        it and the run keeps its estimates (TrainResult.final_eval None)."""
        t = self.trainer
        try:
            best = load_checkpoint(self.run.best_path)
        except CheckpointError:  # no best (nothing evaluated), or it was damaged since: no final figure
            return None
        model = t.model  # its training is over: it takes the best weights (a new model would draw torch's global generator)
        val, mask = t.dataset.val, t.dataset.val_mask
        cap = max(FINAL_EVAL_TOKENS, t.eval_tokens())
        shown = self.reporter.on_final_eval(val_windows(model, val, cap, mask))

        def progress(n: int) -> None:
            if self.stop_requested():
                raise EvaluationAbandoned
            shown(n)

        t.evaluating = True  # a Ctrl-C now says it cuts an evaluation short
        try:
            load_model_weights(model, best.weights, self.run.best_path)
            score = score_val(model, val, byte_lengths(t.dataset.tokenizer), cap, progress, mask, t.config.train.batch_size)
            final = {"val_loss": score.loss, "val_bits_per_byte": score.bits_per_byte, "tokens": score.tokens,
                     "whole_split": score.tokens == predictions(val, mask)}
            best.progress["final_eval"] = final
            save_checkpoint(self.run.best_path, best)
        except (EvaluationAbandoned, CheckpointError, MemoryError, torch.OutOfMemoryError):
            return None
        finally:
            t.evaluating = False
        self._log({"iter": t.step, "final_val_loss": score.loss, "final_val_bits_per_byte": score.bits_per_byte,
                   "final_eval_tokens": score.tokens, "final_eval_of_iter": best.iteration, "elapsed": t.elapsed()})
        return {**final, "iteration": best.iteration}

    def _stop(self, signum: int) -> TrainResult:
        if self.saved_at != self.trainer.step:
            self.save("last")
        barrier(self.trainer.dist)  # no rank leaves before rank 0 has saved
        self._finish("stopped")
        name = signal.Signals(signum).name
        raise TrainingStopped(f"{name} received: saved {self.run.last_path} at iteration {self.trainer.step}",
                              Command("resume", options={"run": str(self.run.path)}), SIGNAL_EXIT[signum])

    def _non_finite(self, error: NonFiniteLoss) -> TinyGPTError:
        """The loss diverged: nothing is saved (the weights are broken), run.json says so."""
        if self.is_main:
            self._write_status("failed", iteration=error.iteration, reason=str(error))
        last = f"{self.run.last_path} (iteration {self.saved_at})" if self.saved_at >= 0 else "none was saved yet"
        return TinyGPTError(
            f"the loss became {error.loss} at iteration {error.iteration}; training stopped without saving. Last good checkpoint: {last}",
            Command("resume", options={"run": str(self.run.path), "learning_rate": self.trainer.config.train.learning_rate / 3}),
        )


def first_line(dataset: Dataset, max_chars: int = 30) -> str:
    """The first line of the training text that is not blank, its white space made single
    spaces, cut to `max_chars`: a prompt the model has seen the like of, whatever the corpus
    (a play, code, another language)."""
    head = dataset.tokenizer.decode(dataset.train[: 20 * max_chars].tolist())
    line = next((line for line in head.splitlines() if line.strip()), "")
    return " ".join(line.split())[:max_chars]  # tabs and runs of spaces as one space: a prompt to type


def prepare_training(config: RunConfig) -> tuple[RunConfig, Dataset]:
    """Load the dataset and fit the config to it (vocabulary size, absolute data path)."""
    data_dir = Path(config.train.data_dir).resolve()
    dataset = load_dataset(data_dir)
    flat = {**config.flat(), "vocab_size": dataset.tokenizer.size, "data_dir": str(data_dir)}
    config = build_config(flat)
    check_against_data(config, len(dataset.train), len(dataset.val), dataset.tokenizer.size, dataset.train_mask is not None)
    longest = dataset.info.chat.get("longest", 0)
    if longest > config.model.block_size:
        raise UsageError(f"the longest conversation in {data_dir} is {longest:,} tokens; --block-size "
                         f"{config.model.block_size:,} would cut it",
                         Command("prepare chat", ("FILE",), {"context": config.model.block_size, "data_dir": str(data_dir)},
                                 why="fits them to the shorter context"))
    return config, dataset


def train_new(config: RunConfig, run_path: Path, reporter: TrainingReporter | None = None,
              overwrite: bool = False, dist: DistContext = DistContext(), threads: ThreadPolicy | None = None,
              started: float | None = None) -> TrainResult:
    """Start a run in `run_path`, from random weights or from config.train.init_from's. Under
    torchrun only rank 0 touches the folder. `threads`: the process's CPU thread policy
    (system/process.py:init_process), which the training then keeps fitted to the load.
    `started`: when a run given a time (config.train.time) started, as time.monotonic() (the
    command's start, its plan included); by default, now."""
    started = time.monotonic() if started is None else started
    check_time_alone(config, dist.world_size)
    run = RunDir(run_path)
    if dist.is_main:
        run.check_not_in_use()
        _check_new_run_folder(run, overwrite)
    # Everything that can be refused (the source, the data, the model's memory) comes before the
    # folder is made or changed: an earlier run is cleared only for a run that can start.
    trainer = _new_trainer(config, dist, threads)
    with run.locked() if dist.is_main else nullcontext():
        tracker = Tracker()  # rank 0 alone logs
        if dist.is_main:
            _check_new_run_folder(run, overwrite)  # again with the lock held: another train may have been first
            run.clear()
            tracker = open_tracker(trainer.config.train.log, run, trainer.config, 0)
            write_json_atomic(run.config_path, trainer.config.model_dump())
        training = TrainingRun(trainer, run, reporter or TrainingReporter(), tracker)
        training.started = started
        return training.fit()


def check_time_alone(config: RunConfig, processes: int) -> None:
    """A run given a time fits its iterations to its own pace: processes under torchrun would
    each fit theirs (the plan would need a collective of its own)."""
    if config.train.time is not None and processes > 1:
        raise UsageError("--time runs in one process: under torchrun each process would fit the iterations to its own pace",
                         "leave out --nproc, or give --max-iters instead of --time")


def _check_new_run_folder(run: RunDir, overwrite: bool) -> None:
    foreign = run.foreign_files()
    if foreign:
        raise UsageError(f"{run.path} holds files that are not a tinygpt run's ({short_list(foreign)}): a run folder holds only its own files",
                         "train into a new or empty folder with --out runs/NAME")
    if (run.has_checkpoint() or run.metrics_path.exists()) and not overwrite:
        raise UsageError(f"{run.path} already holds a run", Command("resume", options={"run": str(run.path)}, why="or pass --overwrite to start it again"))


def _new_trainer(config: RunConfig, dist: DistContext, threads: ThreadPolicy | None) -> Trainer:
    """The Trainer of a new run: random weights, or config.train.init_from's."""
    pretrained = load_pretrained(config.train.init_from) if config.train.init_from else None
    if pretrained is not None:
        config = fit_config(config, pretrained)
    config, dataset = prepare_training(config)
    if pretrained is not None:
        check_tokenizer(dataset.tokenizer, pretrained, config.train.data_dir)
    trainer = Trainer(config, dataset, dist, threads)
    if pretrained is not None:
        trainer.start_from(initial_weights(pretrained, config.model), pretrained.source)
        trainer.grown_tokens = config.model.vocab_size - pretrained.config.vocab_size
    return trainer  # the source's own copy of the weights is freed here


def _data_change(ckpt: Checkpoint, dataset: Dataset, run: RunDir, allowed: bool) -> dict[str, Any] | None:
    """What changed when the dataset is not the one `ckpt` trained on (None when it is, or when
    an older checkpoint did not record it); refused unless `allowed`."""
    trained_on = ckpt.progress.get("data_sha256")
    if trained_on is None or trained_on == dataset.info.digest:
        return None
    if not allowed:
        raise TinyGPTError(f"the dataset in {dataset.info.path} is not the one {run.path} trained on: it was prepared again "
                           f"since iteration {ckpt.iteration} (its token ids changed)",
                           Command("resume", options={"run": str(run.path), "allow_data_change": True},
                                   why="goes on with the new data knowingly; run.json records the change"))
    return {"iteration": ckpt.iteration, "from_sha256": trained_on, "to_sha256": dataset.info.digest}


def _without_time_for_iters(saved: RunConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """A resume given --max-iters runs that many iterations: a time the run was given would
    otherwise fit them away again (a resume given --time keeps it, or sets a new one)."""
    if "max_iters" in overrides and "time" not in overrides and saved.train.time is not None:
        return {**overrides, "time": None}
    return overrides


def read_run_config(run: RunDir) -> RunConfig:
    try:
        saved = read_json(run.config_path)
    except FileNotFoundError as e:
        raise TinyGPTError(f"{run.path} is not a run folder (no config.json)", Command("train", options={"out": "RUN"}, why="starts one")) from e
    except (OSError, ValueError) as e:
        raise TinyGPTError(f"{run.config_path} is unreadable: {e}") from e
    if not isinstance(saved, dict):
        raise TinyGPTError(f"{run.config_path} is not a run's settings: not a JSON object")
    try:
        return RunConfig(**saved)
    except ValidationError as e:
        raise TinyGPTError(f"{run.config_path} holds invalid settings: {first_problem(e)}",
                           "restore the file, or start the run again with train --overwrite") from e


def resume(run_path: Path, overrides: dict[str, Any] | None = None, reporter: TrainingReporter | None = None,
           dist: DistContext = DistContext(), allow_data_change: bool = False, threads: ThreadPolicy | None = None) -> TrainResult:
    """Continue a run from its `last` checkpoint; `overrides` may change non-shape settings.

    The number of processes may differ from the first launch; the data order then follows the
    new global batch size from the resumed iteration on. A dataset that is not the one the
    checkpoint trained on (prepared again from another text) is refused unless
    `allow_data_change`; run.json then records the change.
    """
    run = RunDir(run_path)
    if not run.path.is_dir():
        raise UsageError(f"no run folder at {run.path}", "ls runs/  (lists run folders)")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    refused = sorted(set(overrides) & set(SHAPE_FIELDS))
    if refused:
        raise UsageError(f"cannot change the model's shape on resume ({', '.join(map(flag_name, refused))})",
                         Command("train", before="start a new run instead:"))
    with run.locked() if dist.is_main else nullcontext():
        saved = read_run_config(run)
        config = build_config({**saved.flat(), **_without_time_for_iters(saved, overrides)})
        check_time_alone(config, dist.world_size)
        if not run.last_path.exists():
            raise TinyGPTError(f"{run.path} has no last checkpoint to resume from",
                               Command("train", options={"out": str(run.path), "overwrite": True}))
        ckpt = load_checkpoint(run.last_path)
        if config.train.max_iters < ckpt.iteration:
            raise UsageError(f"--max-iters {config.train.max_iters} is below the {ckpt.iteration} iterations already done",
                             Command("resume", options={"run": str(run.path), "max_iters": ckpt.iteration * 2}))
        config, dataset = prepare_training(config)
        if ckpt.tokenizer != dataset.tokenizer:
            raise TinyGPTError(f"the dataset in {config.train.data_dir} has a different tokenizer from the checkpoint",
                               f"rebuild the dataset this run trained on, with the same prepare command, into {config.train.data_dir}")
        change = _data_change(ckpt, dataset, run, allow_data_change)
        training = TrainingRun(Trainer(config, dataset, dist, threads), run, reporter or TrainingReporter())
        training.restore(ckpt)  # checks the whole state: nothing in the folder has changed yet
        training.keep_best_saved_after_last()
        earlier = run.read_status().get("data_changes")
        training.data_changes = (earlier if isinstance(earlier, list) else []) + ([change] if change else [])
        if dist.is_main:
            check_writable(run.path, "the run folder", "make it writable, or copy the run elsewhere and resume the copy", "run.json")
            training.tracker = open_tracker(config.train.log, run, config, ckpt.iteration)  # may be refused: before any write
            write_json_atomic(run.config_path, config.model_dump())
            run.truncate_metrics(ckpt.iteration)
        return training.fit()
