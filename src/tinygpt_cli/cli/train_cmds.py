"""`tinygpt train` and `tinygpt resume`, with a live display or plain lines when piped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from ..config import MODEL_FIELDS, TRAIN_FIELDS
from .config_flags import CONFIG_OPTION, PRESET_OPTION, with_config_flags
from .console import err, out, print_json
from .options import JSON, OVERWRITE, RUN, run_named
from .reporting import make_reporter

TRAIN_FLAGS = [f for f in MODEL_FIELDS + TRAIN_FIELDS if f != "vocab_size"]  # vocab size comes from the data
RESUME_FLAGS = [f for f in TRAIN_FIELDS if f not in ("data_dir", "init_from")] + ["dropout"]


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
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "--", "tinygpt_cli", *args]
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
    from ..lifecycle import TrainingReporter

    return make_reporter(_interactive()) if dist.is_main and not as_json else TrainingReporter()


def _print_summary(result, dist, as_json: bool) -> None:
    """--json: the run's outcome as one JSON object (rank 0 only)."""
    if as_json and dist.is_main:
        print_json({"status": "finished", "run": str(result.run), "iterations": result.iteration,
                    "best_val_loss": result.best_val_loss, "last_val_loss": result.last_val_loss,
                    "val_loss_estimated_over_tokens": result.estimated_over_tokens, "final_eval": result.final_eval,
                    "elapsed_s": result.elapsed, "best_checkpoint": str(Path(result.run) / "best.safetensors")})


@with_config_flags(TRAIN_FLAGS)
def train(
    flags: dict,
    preset: str = PRESET_OPTION,
    config: Path = CONFIG_OPTION,
    out_dir: Path = typer.Option(None, "--out", help="Run folder (default: runs/<timestamp>)."),
    overwrite: bool = OVERWRITE,
    nproc: int = typer.Option(None, "--nproc", min=1, help="Data-parallel processes on this machine (starts torchrun for you).", rich_help_panel="Run"),
    as_json: bool = JSON,
) -> None:
    """Train a GPT from scratch on a prepared dataset.

    Example: tinygpt train --preset cpu --max-iters 2000
    """
    import time

    from ..config import resolve_config
    from ..system.distributed import backend_name, broadcast_int, context_from_env, destroy_process_group, init_process_group
    from ..rundir import RUNS_DIR, default_run_name
    from ..system.devices import pick_device
    from ..lifecycle import train_new
    from ..system.process import init_process

    notes: list[str] = []
    run_config = resolve_config(preset, config, flags, notes)
    say = err if as_json else out  # with --json, stdout holds the JSON alone
    for note in notes if os.environ.get("RANK", "0") == "0" else []:  # said once under torchrun
        say.print(f"[yellow]note:[/] {note}")
    if nproc is not None and nproc > 1:
        _check_nproc(nproc, pick_device(run_config.train.device))
        _launch_torchrun(nproc, out_dir or RUNS_DIR / default_run_name())
    dist = context_from_env()
    init_process_group(dist, pick_device(run_config.train.device).type)  # under torchrun only
    # Under torchrun every rank must agree on the folder: rank 0's clock decides.
    run_path = out_dir or RUNS_DIR / default_run_name(broadcast_int(int(time.time()), dist))
    try:
        if dist.enabled and dist.is_main:
            processes = f"{dist.world_size} process{'es' if dist.world_size > 1 else ''}"
            say.print(f"data parallel ({backend_name()}): {processes}, global batch "
                      f"{run_config.train.batch_size * run_config.train.grad_accum * dist.world_size} sequences "
                      f"({run_config.train.batch_size} per process x {run_config.train.grad_accum} accumulation steps)")
        with _quiet_unless_main(dist):
            result = train_new(run_config, run_path, _reporter_for(dist, as_json), overwrite=overwrite, dist=dist,
                               threads=init_process())
        _print_summary(result, dist, as_json)
    finally:
        destroy_process_group()


@with_config_flags(RESUME_FLAGS, defaults_from_run=True)
def resume(
    flags: dict,
    run: Path = RUN,
    positional: Path = typer.Argument(None, hidden=True, help="The run, as earlier versions took it (deprecated: --run)."),
    allow_data_change: bool = typer.Option(False, "--allow-data-change", help="Go on although the dataset was prepared again since the checkpoint (other text); run.json records the change.", rich_help_panel="Run"),
    as_json: bool = JSON,
) -> None:
    """Continue a stopped run exactly where it left off (--max-iters may extend it).

    Example: tinygpt resume --run runs/20261127-181500 --max-iters 4000
    """
    from ..system.distributed import context_from_env, destroy_process_group
    from ..lifecycle import resume as resume_run
    from ..rundir import resolve_run
    from ..system.process import init_process

    dist = context_from_env()
    try:
        with _quiet_unless_main(dist):
            result = resume_run(resolve_run(run_named(run, positional, "resume")), flags, _reporter_for(dist, as_json), dist=dist,
                                allow_data_change=allow_data_change,
                                threads=init_process())
        _print_summary(result, dist, as_json)
    finally:
        destroy_process_group()


def register(app: typer.Typer) -> None:
    app.command("train", no_args_is_help=False)(train)
    app.command("resume")(resume)

