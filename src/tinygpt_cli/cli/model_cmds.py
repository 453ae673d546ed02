"""`tinygpt params` and `tinygpt eval`: what a model costs (its parameters, memory and FLOPs)
and how good it is (its loss over a whole validation split)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import MODEL_FIELDS
from .config_flags import CONFIG_OPTION, PRESET_OPTION, with_config_flags
from .console import out, print_json, say_loaded
from .options import CHECKPOINT, DEVICE, JSON, RUN


MIN_NOTE_WIDTH = 16  # narrower than this, the notes column is left out


OPTIMIZER_STATE = {"adamw": "AdamW state (two moments per parameter)",
                   "muon": "Muon + AdamW state (one momentum per block-matrix weight, two moments for the rest)"}


def _params_table(report, optimizer: str) -> None:
    from rich.table import Table

    from ..params import ParamRow

    c = report.config
    table = Table(title=f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, block {c.block_size}, "
                        f"vocab {c.vocab_size}, bias {'on' if c.bias else 'off'}", title_justify="left")
    share = lambda n: f"{100 * n / report.total:.1f}%"  # noqa: E731
    rows = report.embedding + report.block + report.head
    # Names and numbers are never cut: their columns get their widest cell; the notes wrap, or
    # go under the table on a terminal too narrow for a column of them.
    part = max(len(f"  block: {r.name}") for r in rows)
    shape = max(len(r.shape) for r in rows + [ParamRow("", f"{c.n_layer} x {report.block_total:,}", 0)])
    count = len(f"{report.total:,}")
    essential = part + max(count, 10) + 6 + 10  # part, parameters, share and the borders
    with_shape = essential + shape + 3 <= out.width
    with_notes = with_shape and essential + shape + 6 + MIN_NOTE_WIDTH <= out.width
    table.add_column("part", no_wrap=True, min_width=part)
    if with_shape:
        table.add_column("shape", justify="right", no_wrap=True, min_width=shape)
    table.add_column("parameters", justify="right", no_wrap=True, min_width=max(count, len("parameters")))
    table.add_column("share", justify="right", no_wrap=True, min_width=6)
    if with_notes:
        table.add_column("note", style="dim", overflow="fold")
    notes_under: list[str] = []

    def add(name: str, shape: str, *numbers: str, note: str = "") -> None:
        table.add_row(name, *([shape] if with_shape else []), *numbers, *([note] if with_notes else []))
        if note and not with_notes:
            notes_under.append(f"  {name.strip()}: {note}")

    for row in report.embedding:
        add(row.name, row.shape, f"{row.count:,}", share(row.count), note=row.note)
    table.add_section()
    for row in report.block:
        add(f"  block: {row.name}", row.shape, f"{row.count:,}", "", note=row.note)
    blocks = report.block_total * c.n_layer
    add("[bold]one block[/]", "", f"{report.block_total:,}", share(report.block_total))
    add(f"[bold]{c.n_layer} blocks[/]", f"{c.n_layer} x {report.block_total:,}", f"{blocks:,}", share(blocks))
    table.add_section()
    for row in report.head:
        add(row.name, row.shape, f"{row.count:,}" if row.count else "(shared)", share(row.count) if row.count else "", note=row.note)
    table.add_section()
    add("[bold]total[/]", "", f"[bold]{report.total:,}[/]", "100%")
    out.print(table)
    if notes_under:
        out.print("notes:\n" + "\n".join(notes_under), markup=False, soft_wrap=False)
    d = report.to_dict()
    mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
    out.print(f"without position embeddings: {d['without_position_embedding']:,}")
    out.print(f"non-embedding (blocks + final norm): {d['non_embedding']:,}")
    out.print(f"memory in fp32: weights {mib(d['weights_bytes_fp32'])}, {OPTIMIZER_STATE[optimizer]} "
              f"{mib(report.optimizer_state_bytes(optimizer))} (+ gradients {mib(d['weights_bytes_fp32'])} while training)")
    out.print(f"training FLOPs per token: {d['training_flops_per_token']:,} (6N + 12·n_layer·n_embd·block_size, N = parameters without position embeddings)")


@with_config_flags(MODEL_FIELDS)
def params(
    flags: dict,
    preset: str = PRESET_OPTION,
    config: Path = CONFIG_OPTION,
    run: Path = typer.Option(None, "--run", help="Count the parameters of a trained run instead."),
    checkpoint: Path = CHECKPOINT,
    as_json: bool = JSON,
) -> None:
    """Count the model's parameters and show where they live (no training, no data needed).

    Example: tinygpt params --n-layer 12 --n-embd 768
    """
    from ..config import ModelConfig, resolve_config
    from ..params import param_report

    if run is not None or checkpoint is not None:
        from ..checkpoint import read_metadata
        from ..config import flag_name
        from ..errors import UsageError
        from ..rundir import resolve_checkpoint

        given = [flag_name(k) for k, v in flags.items() if v is not None] + [f for f, v in (("--preset", preset), ("--config", config)) if v]
        if given:
            raise UsageError(f"{', '.join(given)} cannot change a trained model: --run and --checkpoint count the saved one",
                             "leave out --run/--checkpoint to count a model of other settings")
        meta = read_metadata(resolve_checkpoint(run, checkpoint))
        model_config = ModelConfig(**meta["model_config_json"])
        optimizer = (meta.get("train_config") or {}).get("optimizer", "adamw")
    else:
        run_config = resolve_config(preset, config, flags)
        model_config, optimizer = run_config.model, run_config.train.optimizer
    report = param_report(model_config)
    if as_json:
        print_json({**report.to_dict(), "optimizer": optimizer, "optimizer_state_bytes_fp32": report.optimizer_state_bytes(optimizer)})
    else:
        _params_table(report, optimizer)


def evaluate(
    run: Path = RUN,
    checkpoint: Path = CHECKPOINT,
    data_dir: Path = typer.Option(None, "--data-dir", help="Dataset to score on (default: the one the run trained on)."),
    device: str = DEVICE,
    max_tokens: int = typer.Option(None, "--max-tokens", min=1, help="Score about this many validation tokens, in windows spread evenly through the split, instead of all (for a large corpus)."),
    task: Path = typer.Option(None, "--task", help="A task file (JSON Lines) to answer instead: multiple choice {\"context\", \"choices\", \"label\"} or exact match {\"prompt\" or \"messages\", \"answer\"}; reports the accuracy with a 95% interval."),
    as_json: bool = JSON,
) -> None:
    """Validation loss, perplexity, bits per token and bits per byte of a checkpoint, over the whole
    val split (a chat dataset: over the assistant's tokens); or with --task, the accuracy on a task.

    Example: tinygpt eval --run runs/demo     (and: tinygpt eval --run runs/chat --task questions.jsonl)
    """
    if task is not None:
        _task(run, checkpoint, device, task, as_json)
        return
    from ..checkpoint import load_model
    from ..system.devices import pick_device
    from ..evaluate import eval_dataset, predictions, score_sample, score_val, val_windows
    from ..system.process import init_process
    from ..rundir import resolve_checkpoint
    from ..data.tokenizer import byte_lengths

    path = resolve_checkpoint(run, checkpoint)
    model, ckpt = load_model(path, pick_device(device))
    dataset = eval_dataset(ckpt, path, data_dir)
    folder = dataset.info.path
    say_loaded(path, ckpt)
    init_process()  # the threads, chosen once from the load at the start
    token_bytes = byte_lengths(dataset.tokenizer)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .console import err

    # On stderr, and only on a terminal: --json output and logs stay clean.
    with Progress(TextColumn("scoring the validation split"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"),
                  TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("val", total=val_windows(model, dataset.val, max_tokens, dataset.val_mask))
        val = score_val(model, dataset.val, token_bytes, max_tokens, lambda n: bar.advance(task, n), dataset.val_mask)
    train = score_sample(model, dataset.train, token_bytes, mask=dataset.train_mask)
    result = {"checkpoint": str(path), "iteration": ckpt.iteration, "data_dir": str(folder),
              "val": val.to_dict(), "train_sample": train.to_dict()}
    if as_json:
        print_json(result)
        return
    from rich.table import Table

    table = Table(title=f"{path} (iteration {ckpt.iteration:,}) on {folder}", title_justify="left")
    for col in ("split", "tokens", "loss", "perplexity", "bits/token", "bits/byte"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name, score in (("val (sample)" if val.tokens < predictions(dataset.val, dataset.val_mask) else "val (all)", val),
                        ("train (sample)", train)):
        table.add_row(name, f"{score.tokens:,}", f"{score.loss:.4f}", f"{score.perplexity:.3f}", f"{score.bits_per_token:.4f}",
                      f"{score.bits_per_byte:.4f}")
    out.print(table)
    if dataset.val_mask is not None:
        out.print("(conversations: the tokens scored are the assistant's replies and their ends of turn)", markup=False)


def _task(run: Path | None, checkpoint: Path | None, device: str, task: Path, as_json: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..checkpoint import load_model
    from ..rundir import resolve_checkpoint
    from ..system.devices import pick_device
    from ..system.process import init_process
    from ..tasks import TaskRunner, read_task
    from .console import err

    items = read_task(task)
    path = resolve_checkpoint(run, checkpoint)
    model, ckpt = load_model(path, pick_device(device))
    say_loaded(path, ckpt)
    init_process()
    with Progress(TextColumn(f"answering {task}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as bar:
        progress = bar.add_task("task", total=len(items))
        result = TaskRunner(model, ckpt.tokenizer, ckpt.chat_template is not None).run(items, lambda n: bar.advance(progress, n))
    low, high = result.interval
    if as_json:
        print_json({"checkpoint": str(path), "iteration": ckpt.iteration, "task": str(task), "accuracy": result.accuracy,
                    "correct": result.correct, "total": result.total, "interval_95": [low, high], "kinds": result.kinds,
                    "answers": result.answers})
        return
    kinds = ", ".join(f"{n:,} {'multiple choice' if k == 'choice' else 'exact match'}" for k, n in result.kinds.items() if n)
    out.print(f"{task}: {result.correct:,} of {result.total:,} right ({kinds}): accuracy {result.accuracy:.1%}, "
              f"95% interval {low:.1%} to {high:.1%}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("params")(params)
    app.command("eval")(evaluate)
