"""`tinygpt plot`, `tinygpt runs`, `tinygpt sweep` and `tinygpt scaling`: see and compare runs.

torch and matplotlib are imported inside the commands only, so `tinygpt --help` stays quick.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import typer

from ..runs.scaling import DEFAULT_SHAPES
from .config_flags import CONFIG_OPTION, PRESET_OPTION
from .console import err, format_duration, out, print_json, render_hint
from .options import DRY_RUN, JSON, say_deprecated
from .reporting import make_reporter, print_curve

STATUS_STYLE = {"finished": "green", "stopped": "yellow", "running": "cyan", "failed": "red", "aborted": "red", "crashed": "red",
                "unreadable": "red", "not started": "dim"}


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def runs_table(summaries, fields: list[str], title: str | None = None, skip: tuple[str, ...] = ()) -> None:
    """The runs as a table; columns of least interest go first when the terminal is narrow."""
    from rich.table import Table
    from rich.text import Text

    from ..runs.table import bits_per_byte_of, format_value, val_loss_of

    columns = [c for c in ("name", "updated", "status", "params", *fields, "iters", "val loss", "bits/byte", "time", "tok/s", "% peak") if c not in skip]
    rows = []

    def val(s, value) -> str:  # "~": training's estimate, the run has no final evaluation
        figure = value(s)
        return "-" if figure is None else f"{'~' * (s.final_val_loss is None)}{figure:.4f}"

    for s in summaries:
        iters = "-" if s.iteration is None else f"{s.iteration:,}" + (f"/{s.max_iters:,}" if s.max_iters else "")
        rows.append({
            "name": s.name, "status": s.status, "params": _fmt_count(s.n_params), "iters": iters, "time": format_duration(s.elapsed),
            "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(s.updated)) if s.updated else "-",
            "val loss": val(s, val_loss_of),
            "bits/byte": val(s, bits_per_byte_of),
            "tok/s": "-" if s.tokens_per_s is None else f"{s.tokens_per_s:,.0f}",
            "% peak": "-" if s.utilisation is None else f"{100 * s.utilisation:.0f}%",
            **{f: format_value(f, s.config[f]) if s.config else "-" for f in fields},
        })
    widths = {c: max([len(r[c]) for r in rows] + [len(c)]) for c in columns}

    def too_wide() -> bool:
        return sum(widths[c] + 3 for c in columns) + 1 > out.width

    for droppable in ("updated", "% peak", "tok/s", "time", "params"):  # names and numbers stay whole: drop these first
        if too_wide() and droppable in columns:
            columns.remove(droppable)
    if too_wide() and len(fields) > 1:  # then the differing settings share one column that wraps between them
        for r in rows:
            r["settings"] = "  ".join(f"{f}={r[f]}" for f in fields)
        at = columns.index(fields[0])
        columns = [c for c in columns if c not in fields]
        columns.insert(at, "settings")
        widths["settings"] = 10  # it wraps: between settings first, inside one if it must
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col in ("name", "updated", "status", "settings") else "right",
                         overflow="fold", no_wrap=col != "settings", min_width=widths[col])
    for r in rows:
        table.add_row(*[Text(r[c], style=STATUS_STYLE.get(r[c], "") if c == "status" else "") for c in columns])
    out.print(table)
    if any(r["val loss"].startswith("~") for r in rows):
        out.print("~: the best of the estimates taken during training (sampled windows); the other figures score the best "
                  "checkpoint over the validation split once the run finished, as tinygpt eval does", markup=False)
    for s in summaries:
        if s.error:
            out.print(Text.assemble((f"{s.name}", "bold"), f" is unreadable: {s.error}"), soft_wrap=True)




def plot(
    run: list[Path] = typer.Option(None, "--run", help="A run folder to plot (runs/NAME, or just NAME; default: the most recent run); repeat it to overlay runs; a sweep folder adds all its runs."),
    positional: list[Path] = typer.Argument(None, hidden=True, help="Runs, as earlier versions took them (deprecated: --run)."),
    out_path: Path = typer.Option(None, "--png", help="PNG file to write (default: RUN/loss.png for one run, loss.png here for several)."),
    old_out: Path = typer.Option(None, "--out", hidden=True, help="The PNG, as earlier versions named it (deprecated: --png)."),
    x: str = typer.Option("iter", "--x", help="Horizontal axis: iter (iterations) or time (wall-clock)."),
    terminal: bool = typer.Option(False, "--terminal", help="Draw the curves in the terminal instead (no matplotlib needed)."),
    title: str = typer.Option(None, "--title", help="Title of the plot."),
    bits_per_byte: bool = typer.Option(None, "--bits-per-byte/--nats", help="Losses in bits per byte, which compare across tokenizers (char and BPE runs), or in nats per token (default: bits per byte when the runs' vocabularies differ, else nats)."),
) -> None:
    """Plot train and validation loss of one or more runs, overlaid, labelled by what differs.

    Example: tinygpt plot --run runs/a --run runs/b --x time
    """
    from ..rundir import resolve_run
    from ..runs.plots import check_x_axis, plot_runs, require_matplotlib
    from ..runs.table import plot_series, run_paths

    if old_out is not None:
        err.print(f"note: --out is deprecated for plot: --png {old_out}", markup=False)
        out_path = out_path or old_out
    check_x_axis(x)  # before reading any run
    if not terminal:
        require_matplotlib()
    if positional:
        say_deprecated(positional)
        runs = [*positional, *(run or [])]
    else:
        runs = run or [resolve_run()]
    found = plot_series(run_paths(runs), bits_per_byte)
    if bits_per_byte is None and found.vocabulary_note():
        err.print(f"note: {found.vocabulary_note()} (--nats for the losses per token)", markup=False, soft_wrap=True)
    for label, why in found.skipped:
        err.print(f"skipped {label}: {why}", markup=False)
    series, summaries = found.series, found.summaries
    if terminal:
        for label, records in series:
            print_curve(records, label)
        return
    target = out_path or (summaries[0].path / "loss.png" if len(summaries) == 1 else Path("loss.png"))
    picture = plot_runs(series, x=x, title=title, y_label=found.y_label)
    picture.save(target)
    curves = [line for line in picture.figure.axes[0].get_lines() if line.get_linestyle() != "None"]  # not the final evaluations' stars
    out.print(f"wrote {target} ({len(curves)} curves, {len(series)} run{'s' * (len(series) > 1)})", markup=False)


def list_runs(
    folder: Path = typer.Option(None, "--runs-dir", "--dir", help="Folder holding run folders (default: runs/)."),
    sort: str = typer.Option("name", "--sort", help="Sort by name, date, status, params, iters, val_loss, bits_per_byte (compares runs with different tokenizers), time, tokens_per_s or a hyperparameter."),
    reverse: bool = typer.Option(False, "--reverse", help="Largest first."),
    remove: list[Path] = typer.Option(None, "--rm", help="Delete this run (a name under runs/ or a path; repeatable). Refused while it trains, or when its folder holds files that are not the run's."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking (needed when not on a terminal)."),
    as_json: bool = JSON,
) -> None:
    """List runs: status, size, the hyperparameters that differ, progress and best loss.

    Example: tinygpt runs --sort val_loss      (and: tinygpt runs --rm NAME)
    """
    from ..rundir import RUNS_DIR
    from ..runs.table import discover_exports, discover_runs, sort_runs, summarize_runs

    if remove:
        _remove_runs(remove, yes)
        return
    root = folder or RUNS_DIR
    summaries, fields = summarize_runs(discover_runs(root), root)
    summaries = sort_runs(summaries, sort, reverse)
    if as_json:
        print_json([s.to_dict() for s in summaries])
    elif not summaries:
        out.print(f"no runs under {root}/  (start one: tinygpt train --preset cpu)", markup=False)
    else:
        runs_table(summaries, fields, title=f"{len(summaries)} run{'s' * (len(summaries) > 1)} in {root}")
    exports = discover_exports(root)
    if exports and not as_json:
        out.print(f"also in {root}/: {len(exports)} transformers export{'s' * (len(exports) > 1)} (not runs): "
                  + ", ".join(p.name for p in exports), markup=False)


def _remove_runs(names: list[Path], yes: bool) -> None:
    from ..errors import UsageError
    from ..rundir import RUNS_DIR, RunDir

    # A name is a run under runs/ first; only run folders, never a folder searched for runs.
    runs = [RUNS_DIR / name if (RUNS_DIR / name).is_dir() else name for name in names]
    for path in runs:  # every one can go, before any does
        RunDir(path).check_removable()
    listed = ", ".join(str(p.resolve()) for p in runs)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"deleting {listed} needs a confirmation", "pass --yes to delete without asking")
        if not typer.confirm(f"delete {listed}?"):
            raise typer.Abort()
    for path in runs:
        RunDir(path).remove()
        out.print(f"deleted {path}", markup=False)


def _cell_reporter(interactive: bool):
    """The train display for one cell, ending with one line instead of train's closing block."""
    from ..lifecycle import TrainingReporter
    inner = make_reporter(interactive)

    class CellReporter(TrainingReporter):
        on_start, on_step, on_eval, on_final_eval, on_plan = inner.on_start, inner.on_step, inner.on_eval, inner.on_final_eval, inner.on_plan

        def on_end(self, status: str, result: dict) -> None:
            for display in (getattr(inner, "progress", None), getattr(inner, "final_bar", None)):
                if display is not None:
                    display.stop()
            final, best = result.get("final_eval"), result.get("best_val_loss")
            loss = f"val loss {final['val_loss']:.4f} (over the split)" if final else f"best val loss {'-' if best is None else f'~{best:.4f}'}"
            out.print(f"{status}: {result['iteration']:,} iterations in {format_duration(result['elapsed'])}, {loss}", markup=False)

    return CellReporter()


def _sweep_command(out_dir: Path) -> str:
    args = sys.argv[1:]
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", str(out_dir)]
    return "tinygpt " + shlex.join(a for a in args if a != "--dry-run")


def sweep(
    ctx: typer.Context,
    preset: str = PRESET_OPTION,
    config: Path = CONFIG_OPTION,
    out_dir: Path = typer.Option(None, "--out", help="Sweep folder, one run folder per cell (default: runs/sweep-<timestamp>)."),
    dry_run: bool = DRY_RUN,
    as_json: bool = JSON,
) -> None:
    """Train a grid of runs: any train flag takes comma-separated values, every combination runs.

    Grid flags: every flag of `tinygpt train --help` (e.g. --n-layer 2,4,6 --learning-rate 1e-3,3e-3);
    a flag with one value applies to every run.

    Rerun the same command with --out SWEEP_FOLDER to skip finished runs and resume stopped ones.

    Example: tinygpt sweep --preset cpu --n-layer 2,4 --muon-lr 0.01,0.02 --max-iters 500
    """
    from ..errors import TinyGPTError, TrainingStopped
    from ..runs.sweep import plan_sweep, project, run_sweep
    from ..system.process import init_process

    plan = plan_sweep(list(ctx.args), preset, config, out_dir)
    for warning in plan.warnings:
        err.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    axes = "  x  ".join(f"{k} {{{', '.join(map(str, v))}}}" for k, v in plan.axes.items())
    if dry_run:
        rows = project(plan, threads=init_process())
        total = sum(r["projected_seconds"] for r in rows)
        if as_json:
            print_json({**plan.to_dict(), "cells": rows, "projected_seconds": total})
            return
        from rich.table import Table

        table = Table(title=f"{len(rows)} runs into {plan.out}: {axes}", title_justify="left")
        for col in ("run", "action", "parameters", "iters", "ms/iter", "projected"):
            table.add_column(col, justify="left" if col in ("run", "action") else "right", overflow="fold")
        for r in rows:
            table.add_row(r["name"], r["action"], f"{r['n_params']:,}", f"{r['done_iters']:,}/{r['max_iters']:,}",
                          "-" if r["ms_per_iter"] is None else f"{r['ms_per_iter']:.1f}", format_duration(r["projected_seconds"]))
        out.print(table)
        out.print(f"projected total: {format_duration(total)} (timed on this machine; evaluations included)", markup=False)
        return
    say = err if as_json else out
    say.print(f"sweep of {len(plan.cells)} runs into {plan.out}: {axes}", markup=False)
    say.print(f"(stopped? the same command with --out {plan.out} resumes it)", markup=False)
    verbs = {"train": "training", "restart": "training", "resume": "resuming", "skip": "skipped (finished)"}

    def on_cell(i: int, cell, action: str) -> None:
        say.print(f"[bold]\\[{i + 1}/{len(plan.cells)}][/] {cell.name}: {verbs[action]}")

    from ..lifecycle import TrainingReporter

    interactive = sys.stdout.isatty() and not as_json
    try:
        result = run_sweep(plan, (lambda cell: TrainingReporter()) if as_json else (lambda cell: _cell_reporter(interactive)), on_cell,
                           init_process())
    except TrainingStopped as e:
        raise TrainingStopped(e.message, _sweep_command(plan.out), e.exit_code) from None
    _sweep_summary(plan, result, as_json)
    if result.failed:
        names = ", ".join(c.cell.name for c in result.failed)
        raise TinyGPTError(f"{len(result.failed)} of {len(plan.cells)} runs failed ({names}): {result.failed[0].error}",
                           f"{_sweep_command(plan.out)}  (resumes them from their last checkpoint)")


def _sweep_summary(plan, result, as_json: bool) -> None:
    """The comparison table (best first) and sweep.png in the sweep folder."""
    from ..errors import TinyGPTError
    from ..runs.plots import plot_runs
    from ..runs.table import labelled_metrics, sort_runs, summarize_runs

    summaries, fields = summarize_runs([c.path for c in plan.cells], plan.out)
    png: Path | None = plan.out / "sweep.png"
    try:
        plot_runs([s for s in labelled_metrics(summaries, fields) if s[1]], title=f"sweep {plan.out.name}").save(png)
    except TinyGPTError as e:
        err.print(f"no sweep.png: {e.message}" + (f" ({render_hint(e.hint)})" if e.hint else ""), markup=False)
        png = None
    ranked = sort_runs(summaries, "val_loss")
    if as_json:
        outcomes = {c.cell.name: c for c in result.cells}
        print_json({"out": str(plan.out), "plot": str(png) if png else None,
                    "runs": [{**s.to_dict(), "outcome": outcomes[s.name].outcome, "outcome_error": outcomes[s.name].error}
                             for s in ranked]})
        return
    runs_table(ranked, fields, title=f"sweep {plan.out} (best first)", skip=("name", "updated") if fields else ("updated",))
    if png is not None:
        out.print(f"wrote {png}", markup=False)


def scaling(
    total: str = typer.Option(..., "--time", help="The whole grid's time (1h, 90m): each size trains for t, 2t and 4t, which add up to it."),
    shapes: str = typer.Option(DEFAULT_SHAPES, "--shapes", help="The model sizes, LAYERSxWIDTH, comma-separated (heads 32 wide)."),
    preset: str = PRESET_OPTION,
    data_dir: Path = typer.Option(Path("data/shakespeare"), "--data-dir", help="Prepared dataset folder, as the prepare command writes it."),
    out_dir: Path = typer.Option(None, "--out", help="Folder of the grid's runs, rule.json and scaling.png (default: runs/scaling-<timestamp>)."),
    dry_run: bool = DRY_RUN,
    as_json: bool = JSON,
) -> None:
    """Measure your own scaling law: a grid of model sizes and times on your data, here.

    Each size trains for t, 2t and 4t; the law L(N, D) = E + A/N^alpha + B/D^beta is fitted on
    their final losses. rule.json then plans train --time with it; scaling.png shows loss against
    compute, one curve per size, and the compute-optimal frontier.

    Rerun the same command with --out FOLDER to skip finished runs and resume stopped ones.

    Example: tinygpt scaling --time 1h --out runs/scaling
    """
    from ..config import TIME_PRESET, parse_duration, resolve_config
    from ..errors import TrainingStopped, UsageError
    from ..lifecycle import TrainingReporter, prepare_training
    from ..rundir import RUNS_DIR, default_run_name
    from ..runs.law import SHIPPED_RULE, load_rule
    from ..runs.scaling import parse_shapes, plan_scaling, run_scaling
    from ..system.process import init_process

    try:
        seconds = parse_duration(total)
    except ValueError as e:
        raise UsageError(f"--time: {e}") from None
    config = prepare_training(resolve_config(preset or TIME_PRESET, None, {"data_dir": str(data_dir)}))[0]  # the data first
    plan = plan_scaling(config, seconds, parse_shapes(shapes), out_dir or RUNS_DIR / f"scaling-{default_run_name()}")
    again = (f"tinygpt scaling --time {shlex.quote(total)} --shapes {shapes}" + (f" --preset {preset}" if preset else "")
             + f" --data-dir {shlex.quote(str(data_dir))} --out {shlex.quote(str(plan.out))}")
    if dry_run:
        _show_scaling_plan(plan, as_json)
        return
    say = err if as_json else out
    say.print(f"scaling: {len(plan.cells)} runs into {plan.out}, {total} in all (stopped? {again} resumes it)", markup=False, soft_wrap=True)
    verbs = {"train": "training", "resume": "resuming", "finished": "finished before"}

    def on_cell(i: int, cell, state: str) -> None:
        say.print(f"[bold]\\[{i + 1}/{len(plan.cells)}][/] {cell.name}: {verbs[state]}")

    interactive = sys.stdout.isatty() and not as_json
    try:
        run_scaling(plan, load_rule(SHIPPED_RULE), (lambda cell: TrainingReporter()) if as_json else (lambda cell: _cell_reporter(interactive)),
                    on_cell, init_process())
    except TrainingStopped as e:
        raise TrainingStopped(e.message, again, e.exit_code) from None
    _scaling_summary(plan, as_json)


def _show_scaling_plan(plan, as_json: bool) -> None:
    if as_json:
        print_json(plan.to_dict())
        return
    from rich.table import Table

    from ..config import describe_duration
    from ..params import param_report

    out.print(f"{len(plan.cells)} runs into {plan.out}, {describe_duration(plan.total_s)} in all", markup=False, soft_wrap=True)
    table = Table()
    for col in ("run", "heads", "parameters", "state"):
        table.add_column(col, justify="left" if col in ("run", "state") else "right", no_wrap=True)
    for cell in plan.cells:
        model = plan.config.model.model_copy(update=dict(zip(("n_layer", "n_embd", "n_head"), cell.shape)))
        table.add_row(cell.name, str(cell.shape[2]), f"{param_report(model).non_embedding:,}", cell.state())
    out.print(table)
    out.print("parameters: outside the embeddings, the N of the law", markup=False)


def _scaling_summary(plan, as_json: bool) -> None:
    """The fitted law, rule.json and scaling.png, and what to do with them."""
    from ..errors import TinyGPTError
    from ..runs.law import describe_law
    from ..runs.scaling import fit_scaling, scaling_picture

    rule = fit_scaling(plan)
    rule.save(plan.out / "rule.json")
    png: Path | None = plan.out / "scaling.png"
    try:
        scaling_picture(rule, f"scaling law of {rule.fitted_on['corpus']}, {len(rule.points)} runs").save(png)
    except TinyGPTError as e:
        err.print(f"no scaling.png: {e.message}" + (f" ({render_hint(e.hint)})" if e.hint else ""), markup=False)
        png = None
    law, spread = rule.law, rule.uncertainty
    if as_json:
        print_json({**rule.to_dict(), "rule": str(plan.out / "rule.json"), "plot": str(png) if png else None})
        return
    out.print(describe_law(law), markup=False)
    for name in ("alpha", "beta"):
        out.print(f"  {name} = {getattr(law, name):.3f} ± {spread.get(name, float('nan')):.3f} (bootstrap standard deviation)", markup=False)
    out.print(f"the best size grows as compute^{law.beta / (law.alpha + law.beta):.2f}, the tokens as "
              f"compute^{law.alpha / (law.alpha + law.beta):.2f}", markup=False)
    out.print(f"wrote {plan.out / 'rule.json'}" + (f" and {png}" if png else ""), markup=False)
    out.print(f"next: tinygpt train --time 10m --rule {shlex.quote(str(plan.out / 'rule.json'))}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)
    app.command("runs")(list_runs)
    app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(sweep)
    app.command("scaling")(scaling)
