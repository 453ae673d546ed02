"""Run folders: `runs/<name>/` with config.json, metrics.jsonl, run.json, last/best checkpoints.

A lock file (flock, released by the kernel even on SIGKILL) keeps a second training out.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import Command, TinyGPTError, UsageError
from .system.fsutil import entries_except, is_temp_file_of, open_for_reading, read_json, short_list, write_json_atomic, write_text_atomic

RUNS_DIR = Path("runs")
MAX_METRICS_BYTES = 2**30  # a record is about 200 bytes: millions of steps
# Every file a run folder can hold: tinygpt writes these and nothing else there (loss.png by
# `tinygpt runs plot`, tracking.json and the trackers' outputs with --log), and --overwrite
# removes these and nothing else.
RUN_FILES = ("config.json", "metrics.jsonl", "run.json", "last.safetensors", "best.safetensors", "loss.png", "tracking.json", ".lock")
# What `--log` adds: TensorBoard's event files and the wandb folder of Weights & Biases.
_TENSORBOARD_EVENTS = re.compile(r"events\.out\.tfevents\..+")
WANDB_FOLDER = "wandb"
# safetensors writes a file through its own temporary, `.tmp` and six letters or digits (the Rust
# tempfile crate's name), beside ours: a save in progress, or one killed midway, leaves one.
_SAFETENSORS_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def is_tracker_output(name: str) -> bool:
    return name == WANDB_FOLDER or bool(_TENSORBOARD_EVENTS.fullmatch(name))


def is_half_written(name: str) -> bool:
    """The temporary of a save in progress, or of one killed midway."""
    return is_temp_file_of(name, RUN_FILES) or bool(_SAFETENSORS_TEMP.fullmatch(name))


def is_run_file(name: str) -> bool:
    """Whether a file of this name may be a run's: its files, its trackers' and the half-written ones of a save."""
    return name in RUN_FILES or is_half_written(name) or is_tracker_output(name)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    status_path = property(lambda self: self.path / "run.json")
    last_path = property(lambda self: self.path / "last.safetensors")
    best_path = property(lambda self: self.path / "best.safetensors")
    lock_path = property(lambda self: self.path / ".lock")
    tracking_path = property(lambda self: self.path / "tracking.json")  # a tracker's run id, for --log wandb

    def __str__(self) -> str:
        return str(self.path)

    def foreign_files(self) -> list[str]:
        """Names in the folder that are not a run's files: the user's, never to be touched."""
        if not self.path.is_dir():
            return []
        return entries_except(self.path, is_run_file)

    def has_checkpoint(self) -> bool:
        return self.last_path.exists() or self.best_path.exists()

    def checkpoint(self) -> Path | None:
        """The checkpoint to read: the best, else the last; None before the first save."""
        return next((p for p in (self.best_path, self.last_path) if p.exists()), None)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock; a second holder gets a clear error instead of a corrupted run."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TinyGPTError(f"cannot create run folder {self.path}: {e.strerror or e}", "pass a writable folder with --out") from e
        try:
            self._take_lock(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._remove_stale_temp_files()
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _take_lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise TinyGPTError(
                f"{self.path} is in use by another training (pid {holder})",
                "wait for it to finish, or train into another folder with --out runs/NAME",
            ) from None

    def check_not_in_use(self) -> None:
        """Refuse, as `locked` would, a folder that a training holds, without making anything."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except OSError:  # no lock file: nobody trains here
            return
        try:
            self._take_lock(fd)
        finally:
            os.close(fd)  # releases the lock just taken

    def _remove_stale_temp_files(self) -> None:
        """Half-written files of a training killed mid-save (SIGKILL, power loss): never read,
        and with the lock held nobody else is writing them."""
        for child in self.path.iterdir():
            if is_half_written(child.name) and child.is_file():
                child.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove a previous run's files (for --overwrite), and only those; the lock stays."""
        tracker_outputs = [p.name for p in self.path.iterdir() if is_tracker_output(p.name)] if self.path.is_dir() else []
        for name in [n for n in RUN_FILES if n != ".lock"] + tracker_outputs:
            path = self.path / name
            try:
                if name == WANDB_FOLDER and path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as e:  # read-only folder, a folder in the way...
                raise TinyGPTError(f"cannot remove {path}: {e.strerror}") from e

    def is_trained_run(self) -> bool:
        """A folder that training made: a status or a checkpoint beside its config (a config.json
        alone could be anybody's)."""
        return self.config_path.is_file() and (self.status_path.is_file() or self.has_checkpoint())

    def check_removable(self) -> None:
        """Refuse, with nothing deleted, a folder that `remove` must not delete: one that holds
        anything that is not the run's, one that is no run, or a symbolic link (a run is deleted
        only where it is, never through a link)."""
        if self.path.is_symlink():
            raise UsageError(f"{self.path} was not deleted: it is a symbolic link to {os.path.realpath(self.path)}",
                             "delete the link itself with rm, or pass the run's own folder")
        foreign = self.foreign_files()
        if not self.is_trained_run() or foreign:
            why = f"it holds files that are not the run's ({short_list(foreign)})" if foreign else "it is not a run folder"
            raise UsageError(f"{self.path.resolve()} was not deleted: {why}", "delete it yourself if you mean to")

    def remove(self) -> None:
        """Delete the run and its folder (check_removable first); refused while a training holds the lock."""
        self.check_removable()
        with self.locked():
            self.clear()
            self.lock_path.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError as e:
            raise TinyGPTError(f"cannot delete {self.path}: {e.strerror}") from e

    def write_status(self, status: str, **fields: Any) -> None:
        write_json_atomic(self.status_path, {"status": status, "pid": os.getpid(), "updated": time.time(), **fields})

    def read_status(self) -> dict[str, Any]:
        """run.json's fields; {} when it is missing, unreadable or not a JSON object."""
        try:
            status = read_json(self.status_path)
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

    def read_metrics(self) -> list[dict[str, Any]]:
        """Metric records in order, each an object with a whole `iter`; a torn last line (a
        crash mid-write), or any line that is not such a record, is skipped. A file that is
        not a regular one (a FIFO, a device) reads as empty, and one past MAX_METRICS_BYTES is
        refused."""
        try:
            with open_for_reading(self.metrics_path) as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    return []
                if info.st_size > MAX_METRICS_BYTES:
                    raise TinyGPTError(f"{self.metrics_path} is over the {MAX_METRICS_BYTES:,}-byte limit for a run's metrics")
                return [r for r in map(_metric_record, f) if r is not None]
        except FileNotFoundError:
            return []

    def truncate_metrics(self, iteration: int) -> None:
        """Drop records past `iteration`, which a resumed run logs again, and the final evaluation
        of a run that finished: it no longer has."""
        kept = [r for r in self.read_metrics() if r.get("iter", 0) <= iteration and "final_val_loss" not in r]
        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))


def _metric_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or type(record.get("iter")) is not int:
        return None
    return record


def finite_number(value: Any) -> float | None:
    """A number read from a run's JSON files, if it is a finite one (a torn or hand-edited
    record may hold anything)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def default_run_name(timestamp: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(timestamp))


def _trained_runs(root: Path, depth: int = 2) -> Iterator[RunDir]:
    """The run folders with a checkpoint under `root`, and inside the folders that are none (a
    sweep's), `depth` levels down."""
    for child in root.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            run = RunDir(child)
            if run.has_checkpoint():
                yield run
            elif depth > 1:
                yield from _trained_runs(child, depth - 1)


def latest_run(root: Path = RUNS_DIR) -> RunDir | None:
    """The most recently updated run folder under `root` (runs/NAME, or runs/SWEEP/NAME) that
    holds a checkpoint."""
    runs = list(_trained_runs(root)) if root.is_dir() else []
    if not runs:
        return None
    return max(runs, key=lambda r: max(p.stat().st_mtime for p in (r.last_path, r.best_path) if p.exists()))


def resolve_run(run: Path | None = None, root: Path = RUNS_DIR) -> Path:
    """The run folder a command acts on: `run`, else the most recent run under `root`."""
    if run is not None:
        return run
    found = latest_run(root)
    if found is None:
        raise TinyGPTError(f"no trained run found under {root}/ (nor in its sweep folders)", Command("train", options={"preset": "cpu"}))
    return found.path


def resolve_checkpoint(run: Path | None = None, checkpoint: Path | None = None, root: Path = RUNS_DIR) -> Path:
    """The checkpoint a command should read: --checkpoint, else the best (or last) of --run,
    else the best of the most recent run under `root`."""
    if run is not None and checkpoint is not None:
        raise UsageError("pass either --run or --checkpoint, not both")
    if checkpoint is not None:
        return checkpoint
    chosen = RunDir(resolve_run(run, root))
    if not chosen.path.is_dir():
        raise UsageError(f"no run folder at {chosen.path}", f"ls {root}/  (lists run folders)")
    path = chosen.checkpoint()
    if path is not None:
        return path
    raise TinyGPTError(f"{chosen.path} has no checkpoint yet", Command("resume", options={"run": str(chosen.path)}))
