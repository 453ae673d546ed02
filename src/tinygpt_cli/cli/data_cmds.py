"""`tinygpt prepare shakespeare|text` and `tinygpt vocab`."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import err, out, print_json
from .options import JSON

prepare_app = typer.Typer(
    help="Download or read a text and turn it into a dataset folder.\n\nExample: tinygpt prepare shakespeare",
    no_args_is_help=True,
)

VAL_FRACTION = typer.Option(0.1, "--val-fraction", min=0.0, max=1.0, help="Share of the text, taken from its end, held out for validation.")


def _summary(result, title: str, as_json: bool) -> None:
    info = result.info
    if as_json:
        print_json({**info.to_dict(), "path": str(info.path), "reused": result.reused})
        return
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right", overflow="fold")  # a long path or the SHA-256 wraps, never cut
    table.add_row("source", info.source)
    table.add_row("folder", str(info.path))
    table.add_row("characters (vocabulary)", f"{info.vocab_size:,}")
    table.add_row("text", f"{info.text_chars:,} characters, {info.text_bytes:,} bytes")
    table.add_row("train tokens", f"{info.train_tokens:,}")
    table.add_row("val tokens", f"{info.val_tokens:,}")
    table.add_row("sha256", info.sha256)
    out.print(table)
    if result.reused:
        out.print(f"{info.path} is already prepared and intact: nothing to do.")


@prepare_app.command("shakespeare")
def prepare_shakespeare(
    data_dir: Path = typer.Option(Path("data/shakespeare"), "--data-dir", help="Folder to write the dataset to."),
    source: str = typer.Option(
        None,
        "--source",
        envvar="TINYGPT_SHAKESPEARE_SOURCE",
        help="Local path or http(s) URL of a copy to use instead of the canonical download (works offline).",
    ),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the SHA-256 of the text (turn off for edited copies)."),
    val_fraction: float = VAL_FRACTION,
    as_json: bool = JSON,
) -> None:
    """Download tiny Shakespeare (1.1 MB), check it, build its vocabulary and train/val splits.

    Example: tinygpt prepare shakespeare --source path/to/input.txt
    """
    from ..data import prepare_shakespeare as run

    with err.status("preparing tiny Shakespeare…"):
        result = run(data_dir, source, verify, val_fraction)
    _summary(result, "tiny Shakespeare", as_json)


@prepare_app.command("text")
def prepare_text(
    file: Path = typer.Argument(..., help="A UTF-8 text file: your own corpus."),
    name: str = typer.Option(None, "--name", help="Dataset name (default: the file's name without extension)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Folder to write the dataset to (default: data/NAME)."),
    val_fraction: float = VAL_FRACTION,
    as_json: bool = JSON,
) -> None:
    """Turn any UTF-8 text file into a dataset folder.

    Example: tinygpt prepare text my_poems.txt --name poems
    """
    from ..data import check_name
    from ..data import prepare_text as run

    name = check_name(name or file.stem.replace(" ", "_"), "dataset name")
    result = run(file, data_dir or Path("data") / name, name, val_fraction)
    _summary(result, name, as_json)


def vocab(
    path: Path = typer.Argument(None, help="A prepared dataset folder or a UTF-8 text file (default: the most recently prepared dataset under data/)."),
    as_json: bool = JSON,
    limit: int = typer.Option(None, "--limit", min=1, help="Show only the first N rows of the table."),
) -> None:
    """Show the character vocabulary: id, character and count.

    Example: tinygpt vocab data/shakespeare
    """
    import numpy as np

    from ..data import DATA_DIR, decode_text, latest_dataset, load_dataset, read_source
    from ..errors import UsageError
    from ..vocab import Vocabulary, escape_char

    if path is None:
        path = latest_dataset()
        if path is None:
            raise UsageError(f"no prepared dataset under {DATA_DIR}/", "tinygpt prepare text FILE  (or tinygpt prepare shakespeare)")
        err.print(f"[dim]{path}: the most recently prepared dataset[/]")
    if path.is_dir():
        dataset = load_dataset(path)
        vocab = dataset.vocab
        counts = vocab.counts(np.concatenate([dataset.train, dataset.val]))
    elif path.exists():
        text = decode_text(read_source(str(path)), str(path))
        vocab = Vocabulary.from_text(text)
        counts = vocab.counts(vocab.encode_array(text))
    else:
        raise UsageError(f"no dataset folder or text file at {path}", "tinygpt prepare shakespeare")

    if as_json:
        print_json({**vocab.to_dict(), "counts": counts.tolist()})
        return
    from rich.table import Table

    out.print(f"vocabulary of {path}: {vocab.size} characters, {int(counts.sum()):,} in all")
    table = Table()
    table.add_column("id", justify="right")
    table.add_column("char")
    table.add_column("count", justify="right")
    shown = vocab.chars[:limit] if limit else vocab.chars
    for i, ch in enumerate(shown):
        table.add_row(str(i), escape_char(ch), f"{int(counts[i]):,}")
    if limit and limit < vocab.size:
        table.add_row("…", "", f"({vocab.size - limit} more)")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(prepare_app, name="prepare")
    app.command("vocab")(vocab)
