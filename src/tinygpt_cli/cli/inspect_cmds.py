"""`tinygpt generate`, `tinygpt params` and `tinygpt eval`: use and inspect a trained model."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..config import MODEL_FIELDS
from .config_flags import CONFIG_OPTION, PRESET_OPTION, with_config_flags
from .console import out, print_json
from .options import CHECKPOINT, DEVICE, JSON, RUN


# generate's loops are the user's to size, within these (a typo of a few zeros is no hour-long run).
MAX_SAMPLES = 1000
MAX_NEW_TOKENS = 1_000_000


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    from ..data import decode_text, read_source
    from ..errors import UsageError

    if prompt is not None and prompt_file is not None:
        raise UsageError("pass either --prompt or --prompt-file, not both")
    if prompt_file is not None:
        return decode_text(read_source(str(prompt_file)), str(prompt_file))
    return prompt or ""


def _thread_policy(model):
    """On a CPU, the threads the load leaves us (threads.py); None elsewhere."""
    from ..threads import ThreadPolicy

    return ThreadPolicy() if next(model.parameters()).device.type == "cpu" else None


def _say_loaded(path: Path, ckpt) -> None:
    """One dim line on stderr naming the checkpoint read (so a default pick is never a surprise),
    and a note when its metadata has no digest (a file saved by an older tinygpt)."""
    from .console import err

    err.print(f"[dim]loaded {path} (iteration {ckpt.iteration:,})[/]", soft_wrap=True)
    if not ckpt.metadata_covered:
        err.print(f"[yellow]note:[/] {path} uses checkpoint format 1: its settings are not covered by its digest, "
                  "only its tensors are", soft_wrap=True)


def generate(
    prompt: str = typer.Option(None, "--prompt", help="Text to continue (empty: start from a newline)."),
    prompt_file: Path = typer.Option(None, "--prompt-file", help="Read the prompt from a UTF-8 file."),
    run: Path = RUN,
    checkpoint: Path = CHECKPOINT,
    max_new_tokens: int = typer.Option(500, "--max-new-tokens", min=0, max=MAX_NEW_TOKENS, help=f"Tokens to generate per sample (characters for a character vocabulary; at most {MAX_NEW_TOKENS:,})."),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0, help="Randomness: below 1 safer, above 1 wilder, 0 greedy."),
    top_k: int = typer.Option(None, "--top-k", min=1, help="Sample only among the k most likely tokens."),
    top_p: float = typer.Option(None, "--top-p", min=0.0, max=1.0, help="Sample from the smallest set of tokens whose probability reaches p."),
    num_samples: int = typer.Option(1, "--num-samples", min=1, max=MAX_SAMPLES, help=f"How many independent samples (at most {MAX_SAMPLES:,})."),
    seed: int = typer.Option(None, "--seed", min=0, max=2**32 - 1, help="Same seed and options give the same text (0 to 4294967295)."),
    device: str = DEVICE,
    kv_cache: bool = typer.Option(True, "--kv-cache/--no-kv-cache", help="Reuse past keys/values (fast); off recomputes each window."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (prompt, samples, settings) instead of streaming."),
    dtype: str = typer.Option("auto", "--dtype", help="Weights for sampling: auto (on a CPU, float16 when the model outgrows the CPU's cache: about twice as fast, text may differ slightly; float32 otherwise), float32 (exactly the checkpoint), float16 or bfloat16."),
) -> None:
    """Write text with a trained model, streamed as it is produced.

    Example: tinygpt generate --prompt "ROMEO:" --max-new-tokens 300 --seed 1
    """
    from ..checkpoint import load_model
    from ..devices import pick_device
    from ..runs import resolve_checkpoint
    from ..sampling import generate as generate_ids
    from ..sampling import set_sampling_precision
    from ..tokenizer import stream_text

    text = _read_prompt(prompt, prompt_file) or "\n"
    path = resolve_checkpoint(run, checkpoint)
    model, ckpt = load_model(path, pick_device(device))
    chosen = set_sampling_precision(model, dtype)
    prompt_ids = ckpt.tokenizer.encode(text)  # unknown characters: a one-line error, exit 2
    _say_loaded(path, ckpt)
    threads = _thread_policy(model)

    def sample(i: int):
        """The text of sample i (seed + i), as its tokens come: whole characters only."""
        def tokens():
            for token in generate_ids(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                      top_p=top_p, seed=None if seed is None else seed + i, kv_cache=kv_cache):
                if threads is not None:
                    threads.adjust()
                yield token

        return stream_text(ckpt.tokenizer, tokens())

    if as_json:  # whole samples, then one JSON object: the text and what made it
        samples = ["".join(sample(i)) for i in range(num_samples)]
        print_json({"checkpoint": str(path), "iteration": ckpt.iteration, "prompt": text, "samples": samples,
                    "settings": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                                 "seed": seed, "kv_cache": kv_cache, "dtype": str(chosen).removeprefix("torch.")}})
        return
    interactive = sys.stdout.isatty()
    for i in range(num_samples):
        if i:
            if interactive:
                out.rule(f"sample {i + 1}")
            else:
                sys.stdout.write(f"\n---------- sample {i + 1} ----------\n")
        sys.stdout.write(text)
        for char in sample(i):
            sys.stdout.write(char)
            if interactive:
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()


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
    # are left out on a terminal too narrow for them.
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
    def add(name: str, shape: str, *numbers: str, note: str = "") -> None:
        table.add_row(name, *([shape] if with_shape else []), *numbers, *([note] if with_notes else []))

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
    d = report.to_dict()
    mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
    out.print(f"without position embeddings: {d['without_position_embedding']:,}   non-embedding (blocks + final norm): {d['non_embedding']:,}")
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
        from ..runs import resolve_checkpoint

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
    as_json: bool = JSON,
) -> None:
    """Validation loss, perplexity, bits per token and bits per byte of a checkpoint, over the whole val split.

    Example: tinygpt eval --run runs/demo
    """
    from ..checkpoint import load_model
    from ..data import load_dataset
    from ..devices import pick_device
    from ..errors import TinyGPTError
    from ..evaluate import score_split, score_sample, split_windows
    from ..runs import resolve_checkpoint
    from ..tokenizer import byte_lengths

    path = resolve_checkpoint(run, checkpoint)
    model, ckpt = load_model(path, pick_device(device))
    folder = data_dir or Path((ckpt.train_config or {}).get("data_dir", "data/shakespeare"))
    dataset = load_dataset(folder)
    if dataset.tokenizer != ckpt.tokenizer:
        raise TinyGPTError(f"the vocabulary of {folder} differs from the one {path} was trained on: scores would be meaningless",
                           "pass the dataset the model was trained on with --data-dir")
    if len(dataset.val) <= 1:
        raise TinyGPTError(f"the validation split of {folder} is empty")
    _say_loaded(path, ckpt)
    _thread_policy(model)  # chosen once, from the load at the start
    token_bytes = byte_lengths(dataset.tokenizer)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .console import err

    # On stderr, and only on a terminal: --json output and logs stay clean.
    with Progress(TextColumn("scoring the validation split"), BarColumn(), MofNCompleteColumn(), TextColumn("windows"),
                  TimeRemainingColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
        if max_tokens is not None and max_tokens < len(dataset.val) - 1:
            windows = max(1, max_tokens // model.config.block_size)
            task = bar.add_task("val", total=windows)
            val = score_sample(model, dataset.val, token_bytes, windows, progress=lambda n: bar.advance(task, n))
        else:
            task = bar.add_task("val", total=split_windows(model, dataset.val))
            val = score_split(model, dataset.val, token_bytes, progress=lambda n: bar.advance(task, n))
    train = score_sample(model, dataset.train, token_bytes)
    result = {"checkpoint": str(path), "iteration": ckpt.iteration, "data_dir": str(folder),
              "val": val.to_dict(), "train_sample": train.to_dict()}
    if as_json:
        print_json(result)
        return
    from rich.table import Table

    table = Table(title=f"{path} (iteration {ckpt.iteration:,}) on {folder}", title_justify="left")
    for col in ("split", "tokens", "loss", "perplexity", "bits/token", "bits/byte"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name, score in (("val (sample)" if max_tokens is not None and val.tokens < len(dataset.val) - 1 else "val (all)", val),
                        ("train (sample)", train)):
        table.add_row(name, f"{score.tokens:,}", f"{score.loss:.4f}", f"{score.perplexity:.3f}", f"{score.bits_per_token:.4f}",
                      f"{score.bits_per_byte:.4f}")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("params")(params)
    app.command("eval")(evaluate)
