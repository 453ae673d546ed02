"""`tinygpt train` and `tinygpt resume`, with a live display or plain lines when piped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from ..config import MODEL_FIELDS, TRAIN_FIELDS
from .config_flags import CONFIG_OPTION, PRESET_OPTION, with_config_flags
from .console import err, out, print_json
from .options import DRY_RUN, JSON, OVERWRITE, RUN, run_named
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


def _print_summary(result, dist, as_json: bool, plan=None) -> None:
    """--json: the run's outcome as one JSON object (rank 0 only)."""
    if as_json and dist.is_main:
        print_json({"status": "finished", "run": str(result.run), "iterations": result.iteration,
                    "best_val_loss": result.best_val_loss, "last_val_loss": result.last_val_loss,
                    "val_loss_estimated_over_tokens": result.estimated_over_tokens, "final_eval": result.final_eval,
                    "elapsed_s": result.elapsed, "best_checkpoint": str(Path(result.run) / "best.safetensors"),
                    **({"time_plan": plan.to_dict()} if plan is not None else {})})


def _show_plan(plan, say, dry_run: bool) -> None:
    """What a --time plan chose and why; with --dry-run, every candidate it weighed."""
    from rich.markup import escape

    say.print(f"time dial: {escape(plan.reason())}", soft_wrap=True)
    for note in plan.notes:
        say.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if not dry_run:
        return
    from rich.table import Table

    table = Table(title=f"the shapes weighed, best first (planned in {plan.planning_s:.1f} s)")
    for name in ("shape", "heads", "params", "ms/iter", "iters", "tokens/param", "val loss"):
        table.add_column(name, justify="left" if name == "shape" else "right", no_wrap=True)
    fitting = [c for c in plan.candidates if c.iters > 0]
    for c in fitting:
        table.add_row(f"{c.n_layer}x{c.n_embd}", str(c.n_head), f"{c.params:,}", f"{'' if c.timed else '~'}{c.ms_per_iter:.1f}",
                      f"{c.iters:,}", f"{c.tokens / c.params:.1f}", f"{c.predicted_loss:.4f}")
    say.print(table)
    say.print("ms/iter: timed here; ~: estimated from the FLOPs at the rate of those timed; val loss: the rule's prediction", soft_wrap=True)
    if len(fitting) < len(plan.candidates):
        say.print(f"too slow to train at all in the time: {', '.join(c.shape for c in plan.candidates if c.iters == 0)}", soft_wrap=True)
    from ..runs.law import SHIPPED_RULE

    shipped = plan.rule.source == str(SHIPPED_RULE)
    say.print(f"rule: {'the one tinygpt ships (runs/rules/' + SHIPPED_RULE.name + ')' if shipped else escape(plan.rule.source)}", soft_wrap=True)


@with_config_flags(TRAIN_FLAGS)
def train(
    flags: dict,
    preset: str = PRESET_OPTION,
    config: Path = CONFIG_OPTION,
    out_dir: Path = typer.Option(None, "--out", help="Run folder (default: runs/<timestamp>)."),
    overwrite: bool = OVERWRITE,
    nproc: int = typer.Option(None, "--nproc", min=1, help="Data-parallel processes on this machine (starts torchrun for you).", rich_help_panel="Run"),
    rule: Path = typer.Option(None, "--rule", help="The scaling rule --time plans with: a rule.json of tinygpt scaling (default: the one fitted on tiny Shakespeare).", rich_help_panel="Run"),
    dry_run: bool = DRY_RUN,
    as_json: bool = JSON,
) -> None:
    """Train a GPT from scratch on a prepared dataset.

    Example: tinygpt train --preset cpu --max-iters 2000
    Example: tinygpt train --time 10m   (the best model for ten minutes on this machine)
    """
    import time

    started = time.monotonic()
    from ..config import given_settings, resolve_config
    from ..system.distributed import backend_name, broadcast_int, context_from_env, destroy_process_group, init_process_group
    from ..rundir import RUNS_DIR, default_run_name
    from ..system.devices import pick_device
    from ..lifecycle import train_new
    from ..system.process import init_process

    notes: list[str] = []
    run_config = resolve_config(preset, config, flags, notes)
    say = err if as_json else out  # with --json, stdout holds the JSON alone
    for note in notes if dist_rank_is_main() else []:  # said once under torchrun
        say.print(f"[yellow]note:[/] {note}")
    plan = None
    if run_config.train.time is not None:
        plan = _plan(run_config, given_settings(config, flags), rule, started, nproc)
        run_config = plan.config
        if dist_rank_is_main():
            _show_plan(plan, say, dry_run and not as_json)
    elif rule is not None:
        from ..errors import UsageError

        raise UsageError("--rule is the rule --time plans with: give --time too")
    if dry_run:
        _dry_run(run_config, plan, as_json)
        return
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
                               threads=init_process(), started=started)
        _print_summary(result, dist, as_json, plan)
    finally:
        destroy_process_group()


def dist_rank_is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _plan(run_config, fixed: set[str], rule_path: Path | None, started: float, nproc: int | None):
    """The --time plan: the shape and iterations for the time (runs/timedial.py)."""
    from ..lifecycle import check_time_alone
    from ..runs.law import SHIPPED_RULE, load_rule
    from ..runs.timedial import plan_for_time
    from ..system.process import init_process

    check_time_alone(run_config, int(os.environ.get("WORLD_SIZE", nproc or 1)))
    with err.status("time dial: timing the candidate shapes on this machine..."):
        return plan_for_time(run_config, run_config.train.time, fixed, load_rule(rule_path or SHIPPED_RULE),
                             threads=init_process(), started=started)


def _dry_run(run_config, plan, as_json: bool) -> None:
    from ..params import param_report

    if as_json:
        print_json({"config": run_config.flat(), "params": param_report(run_config.model).total,
                    **({"time_plan": plan.to_dict()} if plan is not None else {})})
        return
    if plan is None:
        for name, value in run_config.flat().items():
            out.print(f"{name} = {value}", markup=False)
        out.print(f"{param_report(run_config.model).total:,} parameters", markup=False)
    out.print("dry run: nothing trained", markup=False)


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

