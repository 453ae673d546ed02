"""`tinygpt train` and `tinygpt resume`, with a live display or plain lines when piped."""

from __future__ import annotations

import os
import shlex
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import typer

from ..config import MODEL_FIELDS, TRAIN_FIELDS
from .config_flags import CONFIG_OPTION, PRESET_OPTION, with_config_flags
from .console import err, format_duration, out, print_json

JSON_SUMMARY = typer.Option(False, "--json", help="No progress: print one JSON summary at the end (for scripts).", rich_help_panel="Run")
TRAIN_FLAGS = [f for f in MODEL_FIELDS + TRAIN_FIELDS if f != "vocab_size"]  # vocab size comes from the data
RESUME_FLAGS = [f for f in TRAIN_FIELDS if f not in ("data_dir",)] + ["dropout"]


def make_reporter(interactive: bool):
    """A TrainingReporter that draws a live progress line on a terminal and plain lines otherwise."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..train import TrainingReporter

    class Reporter(TrainingReporter):
        def __init__(self) -> None:
            self.progress: Progress | None = None
            self.sample_prompt = ""
            self.task = None
            self.max_iters = 0

        def on_start(self, info) -> None:
            cfg = info.config
            self.sample_prompt = info.sample_prompt
            self.max_iters = cfg.train.max_iters
            out.print(
                f"run {info.run}  |  {info.n_params / 1e6:.2f}M parameters  |  {info.tokens_per_iter:,} tokens/iteration  |  "
                f"device {info.device} ({info.dtype}){'  |  ' + info.threads if info.threads else ''}  |  {cfg.model.n_layer} layers, {cfg.model.n_head} heads, "
                f"{cfg.model.n_embd} wide, block {cfg.model.block_size}"
            )
            if info.start_iter:
                out.print(f"resuming at iteration {info.start_iter:,} of {self.max_iters:,}")
            if info.previous_dtype:
                out.print(
                    f"[yellow]note:[/] iterations up to {info.start_iter:,} ran in {info.previous_dtype}, the rest run in "
                    f"{info.dtype} here: the result will differ slightly from an uninterrupted run"
                )
            if info.best_saved_after_last is not None:
                out.print(
                    f"[yellow]note:[/] best.safetensors (iteration {info.best_saved_after_last:,}) was saved after "
                    f"last.safetensors (an interrupted save): it is kept as the best so far"
                )
            if info.projected_seconds > 3600:
                out.print(
                    f"[yellow]warning:[/] this may take about {info.projected_seconds / 3600:.1f} h on {info.device}; "
                    "for a quick CPU run try: tinygpt train --preset cpu"
                )
            if interactive:
                self.progress = Progress(
                    TextColumn("iter {task.completed:>6.0f}/{task.total:.0f}"),
                    BarColumn(),
                    TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
                    TimeElapsedColumn(),
                    TextColumn("ETA"),
                    TimeRemainingColumn(),
                    console=out,
                    transient=False,
                )
                self.progress.start()
                self.task = self.progress.add_task("train", total=self.max_iters, completed=info.start_iter,
                                                   loss="-", val="-", lr="-", tps="-")

        def on_step(self, record: dict[str, Any]) -> None:
            fields = dict(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tps=f"{record['tokens_per_s']:,.0f}")
            if self.progress is not None:
                self.progress.update(self.task, completed=record["iter"], **fields)
            elif record["iter"] % 100 == 0 or record["iter"] == self.max_iters:
                out.print(f"iter {record['iter']:>6}  loss {fields['loss']}  lr {fields['lr']}  {fields['tps']} tok/s  "
                          f"elapsed {format_duration(record['elapsed'])}")

        def on_eval(self, record: dict[str, Any]) -> None:
            star = " *" if record["improved"] else ""
            line = (f"eval {record['iter']:>6}  train {record['train_loss']:.4f}  val {record['val_loss']:.4f}  "
                    f"best {record['best_val_loss']:.4f}{star}  elapsed {format_duration(record['elapsed'])}")
            if self.progress is not None:
                self.progress.update(self.task, val=f"{record['val_loss']:.4f}")
                self.progress.console.print(line)
            else:
                out.print(line)

        def on_stop_requested(self, signum: int) -> None:
            # Inside the signal handler: a raw write, no console lock that the interrupted code may hold.
            with suppress(OSError):  # stderr gone (a pipe whose reader died): the stop goes on regardless
                os.write(2, b"\nstopping: finishing this step (an evaluation is cut short), then saving last.safetensors"
                            b" -- Ctrl-C again to abort without saving\n")

        def on_end(self, status: str, result: dict[str, Any]) -> None:
            if self.progress is not None:
                self.progress.stop()
            if status == "finished":
                best = result["best_val_loss"]
                out.print(f"done: {result['iteration']:,} iterations in {format_duration(result['elapsed'])}, "
                          f"best val loss {best:.4f}  ->  {result['run']}/best.safetensors")
                from ..runs import RunDir
                from .runs_cmds import print_curve

                print_curve(RunDir(result["run"]).read_metrics())
                prompt = f" --prompt {shlex.quote(self.sample_prompt)}" if self.sample_prompt else ""
                out.print(f"next: tinygpt generate --run {shlex.quote(str(result['run']))}{prompt}", markup=False)

    return Reporter()


def _interactive() -> bool:
    return sys.stdout.isatty()


def _check_nproc(nproc: int, device) -> None:
    """One process per GPU, or per CPU core: more only competes for the same hardware."""
    import os

    import torch

    from ..errors import UsageError

    have, unit = (torch.cuda.device_count(), "GPUs") if device.type == "cuda" else (os.cpu_count() or 1, "CPU cores")
    if nproc > have:
        raise UsageError(f"--nproc {nproc}: this machine has {have} {unit}, one process each", f"pass --nproc {have} or fewer")


def _launch_torchrun(nproc: int, out_dir: Path) -> None:
    """Re-run this command under torchrun on this machine, one process per device."""
    import os

    from ..errors import UsageError

    args = sys.argv[1:]
    for i, arg in enumerate(args):  # drop --nproc N / --nproc=N
        if arg == "--nproc":
            del args[i : i + 2]
            break
        if arg.startswith("--nproc="):
            del args[i]
            break
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", str(out_dir)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "tinygpt_cli", *args]
    if os.environ.get("RANK") is not None:
        raise UsageError("--nproc is for a plain launch; under torchrun, leave it out")
    out.print(f"launching {nproc} processes: {' '.join(command[2:])}")
    sys.stdout.flush()
    os.execv(sys.executable, command)


def _quiet_unless_main(dist):
    """Under torchrun, only rank 0 reports a graceful stop; other ranks leave with its exit code."""
    from contextlib import contextmanager

    from ..errors import TrainingStopped

    @contextmanager
    def guard():
        try:
            yield
        except TrainingStopped as e:
            if dist.is_main:
                raise
            sys.exit(e.exit_code)

    return guard()


def _reporter_for(dist, as_json: bool):
    from ..train import TrainingReporter

    return make_reporter(_interactive()) if dist.is_main and not as_json else TrainingReporter()


def _print_summary(result, dist, as_json: bool) -> None:
    """--json: the run's outcome as one JSON object (rank 0 only)."""
    if as_json and dist.is_main:
        print_json({"status": "finished", "run": str(result.run), "iterations": result.iteration,
                    "best_val_loss": result.best_val_loss, "last_val_loss": result.last_val_loss,
                    "elapsed_s": result.elapsed, "best_checkpoint": str(Path(result.run) / "best.safetensors")})


@with_config_flags(TRAIN_FLAGS)
def train(
    flags: dict,
    preset: str = PRESET_OPTION,
    config: Path = CONFIG_OPTION,
    out_dir: Path = typer.Option(None, "--out", help="Run folder (default: runs/<timestamp>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a run folder that already holds a run."),
    nproc: int = typer.Option(None, "--nproc", min=1, help="Data-parallel processes on this machine (starts torchrun for you).", rich_help_panel="Run"),
    as_json: bool = JSON_SUMMARY,
) -> None:
    """Train a GPT from scratch on a prepared dataset.

    Example: tinygpt train --preset cpu --max-iters 2000
    """
    import time

    from ..config import resolve_config
    from ..distributed import broadcast_int, context_from_env, destroy_process_group, init_process_group
    from ..runs import RUNS_DIR, default_run_name
    from ..train import pick_device, train_new

    notes: list[str] = []
    run_config = resolve_config(preset, config, flags, notes)
    say = err if as_json else out  # with --json, stdout holds the JSON alone
    for note in notes if os.environ.get("RANK", "0") == "0" else []:  # said once under torchrun
        say.print(f"[yellow]note:[/] {note}")
    if nproc is not None and nproc > 1:
        _check_nproc(nproc, pick_device(run_config.train.device))
        _launch_torchrun(nproc, out_dir or RUNS_DIR / default_run_name())
    dist = context_from_env()
    run_path = out_dir
    if run_path is None:
        # Under torchrun every rank must agree on the folder: rank 0's clock decides.
        init_process_group(dist, pick_device(run_config.train.device).type)
        run_path = RUNS_DIR / default_run_name(broadcast_int(int(time.time()), dist))
    try:
        if dist.enabled and dist.is_main:
            say.print(f"data parallel: {dist.world_size} processes, global batch "
                      f"{run_config.train.batch_size * run_config.train.grad_accum * dist.world_size} sequences "
                      f"({run_config.train.batch_size} per process x {run_config.train.grad_accum} accumulation steps)")
        with _quiet_unless_main(dist):
            result = train_new(run_config, run_path, _reporter_for(dist, as_json), overwrite=overwrite, dist=dist)
        _print_summary(result, dist, as_json)
    finally:
        destroy_process_group()


@with_config_flags(RESUME_FLAGS, defaults_from_run=True)
def resume(
    flags: dict,
    run: Path = typer.Argument(..., help="The run folder to continue (runs/NAME)."),
    as_json: bool = JSON_SUMMARY,
) -> None:
    """Continue a stopped run exactly where it left off (--max-iters may extend it).

    Example: tinygpt resume runs/20261127-181500 --max-iters 4000
    """
    from ..distributed import context_from_env, destroy_process_group
    from ..train import resume as resume_run

    dist = context_from_env()
    try:
        with _quiet_unless_main(dist):
            result = resume_run(run, flags, _reporter_for(dist, as_json), dist=dist)
        _print_summary(result, dist, as_json)
    finally:
        destroy_process_group()


def register(app: typer.Typer) -> None:
    app.command("train", no_args_is_help=False)(train)
    app.command("resume")(resume)
