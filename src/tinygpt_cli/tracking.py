"""`--log tensorboard|wandb`: the run's metrics in an experiment tracker as well.

The run folder and its metrics.jsonl stay the record; a tracker gets a copy of each step and
evaluation record (rank 0 only under torchrun), and the resolved settings once.

A resumed run continues the same curves without a step twice:
- TensorBoard: the writer purges the events logged after the checkpoint resumed from
  (`purge_step`), as metrics.jsonl drops its records past it;
- Weights & Biases keeps every step it was sent: the resumed run joins the same W&B run (its
  id is in tracking.json) and skips the steps logged already (as of the last checkpoint, or of
  a clean stop). Resuming is bit-exact, so with the same settings the steps skipped are the
  ones it would have logged; a resume that changes a setting keeps the earlier values there.

Both libraries are optional extras, imported only here.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from typing import Any

from .config import RunConfig
from .errors import TinyGPTError
from .system.fsutil import read_json, write_json_atomic
from .rundir import RunDir

# metrics.jsonl keys -> tracker names, grouped as the trackers show them.
STEP_METRICS = {"loss": "train/loss", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s", "grad_norm": "train/grad_norm"}
EVAL_METRICS = {"train_loss": "eval/train_loss", "val_loss": "eval/val_loss", "val_bits_per_byte": "eval/val_bits_per_byte"}


def tracker_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's metrics under tracker names (finite numbers only)."""
    names = {**STEP_METRICS, **EVAL_METRICS}
    return {names[k]: float(v) for k, v in record.items()
            if k in names and isinstance(v, (int, float)) and math.isfinite(v)}


def _missing_extra(tracker: str, package: str) -> TinyGPTError:
    return TinyGPTError(f"--log {tracker} needs the {package} package, which is not installed",
                        f"pip install 'tinygpt[{tracker}]'  (or pass --log none)")


class Tracker:
    """Receives each metrics record; `close` once, however the run ends (`failed` unless it
    finished or stopped cleanly)."""

    def log(self, record: dict[str, Any]) -> None: ...
    def checkpoint_saved(self) -> None: ...
    def close(self, failed: bool = False) -> None: ...


class TensorBoardTracker(Tracker):
    def __init__(self, run: RunDir, config: RunConfig, resumed_at: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise _missing_extra("tensorboard", "tensorboard") from e
        # Events past the checkpoint are the steps this run logs again: TensorBoard hides them.
        self.writer = SummaryWriter(log_dir=str(run.path), purge_step=resumed_at + 1 if resumed_at else None)
        if not resumed_at:
            self.writer.add_text("config", "```\n" + json.dumps(config.model_dump(), indent=2) + "\n```", 0)

    def log(self, record: dict[str, Any]) -> None:
        for name, value in tracker_scalars(record).items():
            self.writer.add_scalar(name, value, record["iter"])

    def checkpoint_saved(self) -> None:
        self.writer.flush()  # a curve as fresh as the checkpoint, for a TensorBoard watching live

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, run: RunDir, config: RunConfig, resumed_at: int):
        try:
            import wandb
        except ImportError as e:
            raise _missing_extra("wandb", "wandb") from e
        self.run_dir = run
        state = self._state() if resumed_at else {}
        self.run_id = state.get("wandb_id") or secrets.token_hex(4)
        self.logged_through = state.get("wandb_logged_through", -1)
        self.logged_before = self.logged_through
        try:
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "tinygpt"), name=run.path.name, id=self.run_id,
                                    resume="allow", dir=str(run.path), config=config.flat())
        except Exception as e:  # not logged in, no network: the library says which
            raise TinyGPTError(f"Weights & Biases did not start: {e}".strip(),
                               "run `wandb login`, or set WANDB_MODE=offline (sync later with `wandb sync`)") from e
        self._save_state()

    def _state(self) -> dict[str, Any]:
        try:
            state = read_json(self.run_dir.tracking_path)
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        write_json_atomic(self.run_dir.tracking_path, {"wandb_id": self.run_id, "wandb_logged_through": self.logged_through})

    def log(self, record: dict[str, Any]) -> None:
        step = record["iter"]
        if step <= self.logged_before:
            return  # logged already, before the stop this run resumes from
        self.wandb.log(tracker_scalars(record), step=step)
        self.logged_through = step

    def checkpoint_saved(self) -> None:
        self._save_state()

    def close(self, failed: bool = False) -> None:
        self._save_state()
        self.wandb.finish(exit_code=1 if failed else 0)


def open_tracker(kind: str, run: RunDir, config: RunConfig, resumed_at: int) -> Tracker:
    """The tracker `--log` asks for (a do-nothing one for "none"); `resumed_at` is the
    checkpoint's iteration when resuming, else 0."""
    if kind == "tensorboard":
        return TensorBoardTracker(run, config, resumed_at)
    if kind == "wandb":
        return WandbTracker(run, config, resumed_at)
    return Tracker()
