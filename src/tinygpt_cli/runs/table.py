"""Summaries of run folders for `tinygpt runs`, `plot` legends and sweep tables (no torch, no rich).

A summary never raises for a damaged folder: a corrupted config.json or run.json makes the run
"unreadable", with the reason, so one bad folder does not hide the others.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import ALL_FIELDS, ModelConfig, RunConfig, first_problem
from ..errors import Command, TinyGPTError, UsageError
from ..interop.card import is_tinygpt_export
from ..system.fsutil import read_json
from ..params import param_report
from ..rundir import RUNS_DIR, RunDir, finite_number

# Files whose presence makes a folder a run folder (a plot or a lock alone does not).
RUN_MARKERS = ("config.json", "run.json", "metrics.jsonl", "last.safetensors", "best.safetensors")
# Fields that follow from others or from the machine, never worth a column of their own.
# Settings that are no hyperparameters (where the metrics also go), or that follow from the data:
# never a column of `runs` nor a label of `plot`.
NOT_COMPARED = ("vocab_size", "log")


@dataclass
class RunSummary:
    name: str
    path: Path
    status: str
    updated: float | None = None  # seconds since the epoch of the last status write (or file change)
    config: dict[str, Any] | None = None  # flat RunConfig, None when unreadable
    n_params: int | None = None
    iteration: int | None = None
    max_iters: int | None = None
    best_val_loss: float | None = None
    best_val_bits_per_byte: float | None = None  # at the evaluation of the best val loss
    # A finished run's best checkpoint over the validation split (run.json's final_eval), as
    # `tinygpt eval` scores it; the two above are training's estimates from sampled windows.
    final_val_loss: float | None = None
    final_val_bits_per_byte: float | None = None
    elapsed: float | None = None
    tokens_per_s: float | None = None
    # What the machine's matrix products reached at the model's shapes, in the run's precision
    # (run.json's matmul_peak, peak.py), and the steps' rate as a fraction of it.
    matmul_peak_gflops: float | None = None
    utilisation: float | None = None
    error: str | None = None  # why the run is unreadable
    differing: dict[str, Any] = field(default_factory=dict)  # filled by summarize_runs

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": str(self.path), "status": self.status, "updated": self.updated,
            "n_params": self.n_params, "iteration": self.iteration, "max_iters": self.max_iters,
            "best_val_loss": self.best_val_loss, "best_val_bits_per_byte": self.best_val_bits_per_byte,
            "final_val_loss": self.final_val_loss, "final_val_bits_per_byte": self.final_val_bits_per_byte, "elapsed": self.elapsed, "tokens_per_s": self.tokens_per_s,
            "matmul_peak_gflops": self.matmul_peak_gflops, "utilisation": self.utilisation,
            "differing": self.differing, "config": self.config, "error": self.error,
        }


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def is_run_folder(path: Path) -> bool:
    """A folder holding a run's files; a transformers export (its config.json) is not one."""
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS) and not is_tinygpt_export(path)


def discover_exports(root: Path) -> list[Path]:
    """The transformers folders that `tinygpt export` wrote directly under `root`."""
    return sorted(p for p in root.iterdir() if p.is_dir() and is_tinygpt_export(p)) if root.is_dir() else []


def discover_runs(root: Path, depth: int = 2) -> list[Path]:
    """Run folders under `root`: direct children holding run files, and the runs inside
    folders that hold none themselves (a sweep folder), `depth` levels down."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_run_folder(child):
            found.append(child)
        elif depth > 1 and not is_tinygpt_export(child):
            found.extend(discover_runs(child, depth - 1))
    return found


def run_paths(args: list[Path], root: Path = RUNS_DIR) -> list[Path]:
    """Run folders named on the command line: a path, a name under `root`, or a sweep folder (its runs)."""
    paths: list[Path] = []
    for arg in args:
        path = arg if arg.is_dir() or arg.is_absolute() else (root / arg if (root / arg).is_dir() else arg)
        if is_run_folder(path):
            paths.append(path)
        elif path.is_dir() and discover_runs(path):
            paths.extend(discover_runs(path))
        else:
            raise UsageError(f"no run folder at {arg}", Command("runs", why="lists run folders"))
    return paths


def read_summary(path: Path, name: str | None = None) -> RunSummary:
    run = RunDir(path)
    summary = RunSummary(name=name or path.name, path=path, status="unreadable")
    try:
        saved = read_json(run.config_path)
        summary.config = RunConfig(**saved).flat()
    except FileNotFoundError:
        summary.error = "no config.json"
        return summary
    except ValidationError as e:
        summary.error = f"config.json: {first_problem(e)}"
        return summary
    except Exception as e:  # invalid JSON, not an object, unreadable file
        summary.error = f"config.json: {(str(e).splitlines() or [type(e).__name__])[0]}"
        return summary
    try:
        status = read_json(run.status_path)
        if not isinstance(status, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        status = None
    except Exception as e:
        summary.error = f"run.json: {str(e).splitlines()[0]}"
        return summary

    params = param_report(ModelConfig(**{k: summary.config[k] for k in ModelConfig.model_fields}))
    summary.n_params = params.total
    try:
        records = run.read_metrics()
    except TinyGPTError as e:
        summary.error = e.message
        return summary
    evals = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "tokens_per_s" in r]
    if status is None:
        summary.status = "not started"
        summary.updated = run.config_path.stat().st_mtime
    else:
        summary.status = str(status.get("status", "unknown"))
        if summary.status == "running" and not pid_alive(status.get("pid")):
            summary.status = "crashed"
        summary.updated = finite_number(status.get("updated")) or run.status_path.stat().st_mtime
        summary.iteration = status.get("iteration") if isinstance(status.get("iteration"), int) else None
        summary.best_val_loss = finite_number(status.get("best_val_loss"))
        summary.elapsed = finite_number(status.get("elapsed"))
        peak = status.get("matmul_peak") if isinstance(status.get("matmul_peak"), dict) else {}
        gflops, processes = finite_number(peak.get("gflops")), peak.get("processes", 1)
        if gflops is not None and gflops > 0 and isinstance(processes, int) and processes >= 1:
            summary.matmul_peak_gflops = gflops * processes  # torchrun: every process's products together
        final = status.get("final_eval") if summary.status == "finished" else None
        if isinstance(final, dict):
            summary.final_val_loss = finite_number(final.get("val_loss"))
            summary.final_val_bits_per_byte = finite_number(final.get("val_bits_per_byte"))
    summary.max_iters = (status or {}).get("max_iters") if isinstance((status or {}).get("max_iters"), int) else summary.config["max_iters"]
    running = summary.status == "running"  # its run.json was written when it started: its log is further on
    if records and (running or summary.iteration is None):
        summary.iteration = max(int(r.get("iter", 0)) for r in records)
    if running or summary.best_val_loss is None:
        vals = [v for v in (finite_number(r.get("val_loss")) for r in evals) if v is not None]
        summary.best_val_loss = min(vals) if vals else None
    scored = [r for r in evals if finite_number(r.get("val_loss")) is not None and finite_number(r.get("val_bits_per_byte")) is not None]
    if scored:  # runs of older tinygpt logged no bits per byte
        summary.best_val_bits_per_byte = min(scored, key=lambda r: r["val_loss"])["val_bits_per_byte"]
    if summary.elapsed is None and records:
        summary.elapsed = finite_number(records[-1].get("elapsed"))
    speeds = [v for v in (finite_number(r.get("tokens_per_s")) for r in steps[1:] or steps) if v is not None]
    summary.tokens_per_s = statistics.median(speeds) if speeds else None
    if summary.tokens_per_s is not None and summary.matmul_peak_gflops:
        summary.utilisation = summary.tokens_per_s * params.flops_per_token() / 1e9 / summary.matmul_peak_gflops
    return summary


def val_loss_of(summary: RunSummary) -> float | None:
    """The run's val loss: over the split when it finished (final_eval), else training's best estimate."""
    return summary.final_val_loss if summary.final_val_loss is not None else summary.best_val_loss


def bits_per_byte_of(summary: RunSummary) -> float | None:
    return summary.final_val_bits_per_byte if summary.final_val_bits_per_byte is not None else summary.best_val_bits_per_byte


def differing_fields(configs: list[dict[str, Any]]) -> list[str]:
    """Config fields (in declaration order) whose values are not the same in every config."""
    if len(configs) < 2:
        return []
    return [f for f in ALL_FIELDS if f not in NOT_COMPARED and len({json.dumps(c.get(f)) for c in configs}) > 1]


def format_value(name: str, value: Any) -> str:
    if name == "data_dir" and isinstance(value, str):
        return Path(value).name or value
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def label_for(summary: RunSummary, fields: list[str]) -> str:
    """A short label from the differing fields, e.g. `n_layer=2, learning_rate=0.001`."""
    if not fields or summary.config is None:
        return summary.name
    return ", ".join(f"{f}={format_value(f, summary.config.get(f))}" for f in fields)


def summarize_runs(paths: list[Path], root: Path | None = None) -> tuple[list[RunSummary], list[str]]:
    """Summaries of `paths` (named relative to `root` when given) and the fields that differ."""
    summaries = []
    for p in paths:
        try:
            name = str(p.relative_to(root)) if root is not None else p.name
        except ValueError:
            name = p.name
        summaries.append(read_summary(p, name))
    fields = differing_fields([s.config for s in summaries if s.config is not None])
    for s in summaries:
        if s.config is not None:
            s.differing = {f: s.config.get(f) for f in fields}
    return summaries, fields


SORT_KEYS = {
    "name": lambda s: s.name,
    "updated": lambda s: s.updated,
    "date": lambda s: s.updated,
    "status": lambda s: s.status,
    "params": lambda s: s.n_params,
    "iters": lambda s: s.iteration,
    "val_loss": val_loss_of,
    "bits_per_byte": bits_per_byte_of,  # the one that compares runs with different tokenizers
    "time": lambda s: s.elapsed,
    "tokens_per_s": lambda s: s.tokens_per_s,
}


def sort_runs(summaries: list[RunSummary], key: str = "name", reverse: bool = False) -> list[RunSummary]:
    """Sort by a column (see SORT_KEYS) or a hyperparameter; runs without a value go last either way."""
    key = key.replace("-", "_")
    if key in SORT_KEYS:
        get = SORT_KEYS[key]
    elif key in ALL_FIELDS:
        get = lambda s: None if s.config is None else s.config.get(key)  # noqa: E731
    else:
        raise UsageError(f"cannot sort by {key!r}: choose from {', '.join(SORT_KEYS)} or a hyperparameter such as n_layer")
    present = [s for s in summaries if get(s) is not None]
    missing = [s for s in summaries if get(s) is None]
    try:
        present.sort(key=lambda s: (get(s), s.name), reverse=reverse)
    except TypeError:  # mixed types in a hyperparameter: compare as text
        present.sort(key=lambda s: (str(get(s)), s.name), reverse=reverse)
    return present + missing


def labelled_metrics(summaries: list[RunSummary], fields: list[str]) -> list[tuple[str, list[dict]]]:
    """Each run's metrics records under its label: what differs between the runs, with the run's
    name where two labels would be the same."""
    labels = [label_for(s, fields) for s in summaries]
    if len(set(labels)) < len(labels):
        labels = [s.name if label == s.name else f"{s.name}: {label}" for s, label in zip(summaries, labels)]
    return [(label, RunDir(s.path).read_metrics()) for s, label in zip(summaries, labels)]


@dataclass
class PlotSeries:
    """What `plot` draws of some runs: (label, records) pairs, in bits per byte or nats per token."""

    series: list[tuple[str, list[dict]]]
    summaries: list[RunSummary]
    bits_per_byte: bool
    vocabularies: list[int]  # the runs' vocabulary sizes: more than one and bits per byte was picked for them
    skipped: list[tuple[str, str]]  # (label, why) of the runs left out

    @property
    def y_label(self) -> str:
        return "bits per byte" if self.bits_per_byte else "loss (cross-entropy, nats per token)"

    def vocabulary_note(self) -> str | None:
        """Why the losses are in bits per byte, when that was picked for the runs' vocabularies."""
        if not (self.bits_per_byte and len(self.vocabularies) > 1):
            return None
        return (f"these runs have different vocabularies ({', '.join(f'{v:,}' for v in self.vocabularies)} tokens): "
                "their losses per token do not compare, so they are plotted in bits per byte")


def plot_series(paths: list[Path], bits_per_byte: bool | None = None) -> PlotSeries:
    """The loss curves of the run folders `paths`; bits_per_byte None picks bits per byte when
    their vocabularies differ (their losses per token do not compare). Runs with nothing to draw
    are skipped, saying why; none at all is an error."""
    from .plots import in_bits_per_byte

    summaries, fields = summarize_runs(paths)
    vocabularies = sorted({s.config["vocab_size"] for s in summaries if s.config is not None})
    if bits_per_byte is None:
        bits_per_byte = len(vocabularies) > 1
    series, skipped = [], []
    for label, records in labelled_metrics(summaries, fields):
        converted = in_bits_per_byte(records) if bits_per_byte and records else records
        if converted:
            series.append((label, converted))
        else:
            skipped.append((label, "no bits per byte in its log (an older run)" if records else "no metrics yet"))
    if not series:
        raise TinyGPTError("none of these runs has logged any loss yet", "train for at least 10 iterations first")
    return PlotSeries(series, summaries, bits_per_byte, vocabularies, skipped)
