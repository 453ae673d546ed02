"""`tinygpt prepare shakespeare|text|chat` and `tinygpt vocab`."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import err, out, print_json
from .options import JSON

prepare_app = typer.Typer(
    help="Download or read a text and turn it into a dataset folder.\n\nExample: tinygpt prepare shakespeare",
    no_args_is_help=True,
)

VAL_FRACTION = typer.Option(0.1, "--val-fraction", min=0.0, max=1.0, help="Share of the text held out for validation (prepare shakespeare: its end; prepare text: where --val-split says).")
TOKENIZER = typer.Option("char", "--tokenizer", help="char (one token per character), bpe (a byte-level BPE trained on this text), "
                         "or the tokenizer of: a byte-level BPE tokenizer.json, a run or checkpoint, a transformers folder, "
                         "or a hub id such as gpt2 (to fine-tune it with train --init-from).")
NAME_OPTION = typer.Option(None, "--name", help="Dataset name (default: the first input's name without extension).")
DATA_DIR_OPTION = typer.Option(None, "--data-dir", help="Folder to write the dataset to (default: data/NAME).")
VOCAB_SIZE = typer.Option(None, "--vocab-size", help="Tokens of the BPE to train (with --tokenizer bpe; default 4096, at least 257).")


PHASES = {"scan": "reading", "merges": "learning the BPE's merges", "encode": "encoding"}


def _progress():
    """A progress bar on stderr (only on a terminal): the scan, a BPE's merges, then the encoding, in MB/s and time left."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    @contextmanager
    def show():
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                      console=err, transient=True, disable=not err.is_terminal) as bar:
            tasks: dict[str, int] = {}

            def update(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(PHASES.get(phase, phase), total=total or None)  # None: a pulse, no measure
                bar.update(tasks[phase], completed=done, total=total or None)

            yield update

    return show()


def _summary(result, title: str, as_json: bool) -> None:
    info = result.info
    if as_json:
        print_json({**info.to_dict(), "path": str(info.path), "reused": result.reused})
        return
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right", overflow="fold")  # a long path or the SHA-256 wraps, never cut
    table.add_row("source", info.source + (f" ({info.documents:,} documents)" if info.documents > 1 else ""))
    table.add_row("folder", str(info.path))
    if info.tokenizer == "char":
        table.add_row("characters (vocabulary)", f"{info.vocab_size:,}")
    else:
        table.add_row("tokenizer", f"byte-level BPE, {info.vocab_size:,} tokens")
    table.add_row("text", f"{info.text_chars:,} characters, {info.text_bytes:,} bytes")
    if info.tokenizer != "char":
        per_token = info.text_bytes / (info.train_tokens + info.val_tokens)
        table.add_row("bytes per token", f"{per_token:.2f}")
    table.add_row("train tokens", f"{info.train_tokens:,}")
    split = {"spread": "spread through the corpus", "end": "its end", "file": "a separate file"}[info.val_split]
    table.add_row("val tokens", f"{info.val_tokens:,} ({split})")
    table.add_row("sha256", info.sha256)
    out.print(table)
    if result.reused:
        out.print(f"{info.path} is already prepared and intact: nothing to do.")


def _dataset_name(inputs: list[str], name: str | None) -> str:
    """--name, else the first input's name without its extension."""
    from ..data.dataset import check_name

    first = Path(inputs[0])
    return check_name(name or ("stdin" if inputs[0] == "-" else (first.stem or first.name).replace(" ", "_")), "dataset name")


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
    tokenizer: str = TOKENIZER,
    vocab_size: int = VOCAB_SIZE,
    as_json: bool = JSON,
) -> None:
    """Download tiny Shakespeare (1.1 MB), check it, build its vocabulary and train/val splits.

    Example: tinygpt prepare shakespeare --source path/to/input.txt
    """
    from ..interop.pretrained import tokenizer_choice
    from ..data.prepare import prepare_shakespeare as run

    choice = tokenizer_choice(tokenizer, vocab_size)
    with _progress() as progress:
        result = run(data_dir, source, verify, val_fraction, choice, progress)
    _summary(result, "tiny Shakespeare", as_json)


@prepare_app.command("text")
def prepare_text(
    inputs: list[str] = typer.Argument(..., help="UTF-8 text files, folders (every file matching --glob, recursively) or - for standard input: each one a document."),
    name: str = NAME_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
    glob: str = typer.Option("*", "--glob", help="Files of a folder to take, e.g. '*.txt' or '*.py'."),
    val_fraction: float = VAL_FRACTION,
    val_split: str = typer.Option("spread", "--val-split", help="Where validation comes from: spread (blocks spread through the whole corpus) or end (its last part)."),
    val: str = typer.Option(None, "--val", help="A separate validation file instead of a share of the corpus."),
    tokenizer: str = TOKENIZER,
    vocab_size: int = VOCAB_SIZE,
    bpe_sample_mb: int = typer.Option(100, "--bpe-sample-mb", min=1, help="The most text (MB) a BPE learns its merges from: evenly spaced pieces of a larger corpus."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Also read a folder's symbolic links that lead out of it (skipped and counted otherwise)."),
    as_json: bool = JSON,
) -> None:
    """Turn your own text, of any size, into a dataset folder: files, folders or standard input.

    Example: tinygpt prepare text my_poems.txt --name poems --tokenizer bpe --vocab-size 1024
    """
    from ..interop.pretrained import tokenizer_choice
    from ..data.prepare import prepare_text as run

    name = _dataset_name(inputs, name)
    choice = tokenizer_choice(tokenizer, vocab_size, bpe_sample_mb * 2**20)
    with _progress() as progress:
        result = run(inputs, data_dir or Path("data") / name, name, val_fraction, choice, glob, val, val_split, progress,
                     follow_symlinks)
    if result.skipped_binary:
        err.print(f"[yellow]note:[/] skipped {result.skipped_binary} binary file(s) (not UTF-8 text)")
    if result.skipped_links:
        err.print(f"[yellow]note:[/] skipped {result.skipped_links} symbolic link(s) that lead out of the folder "
                  "(--follow-symlinks reads them)")
    _summary(result, name, as_json)


@prepare_app.command("chat")
def prepare_chat(
    inputs: list[str] = typer.Argument(..., help="Conversation files: JSON Lines of {\"messages\": [{\"role\", \"content\"}, ...]} or Alpaca's {\"instruction\", \"input\", \"output\"} (or a JSON array of them), folders of them (every file matching --glob), or - for standard input."),
    name: str = NAME_OPTION,
    data_dir: Path = DATA_DIR_OPTION,
    glob: str = typer.Option("*.jsonl", "--glob", help="Files of a folder to take, e.g. '*.json'."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=1.0, help="Share of the conversations held out for validation, evenly spaced."),
    tokenizer: str = TOKENIZER,
    vocab_size: int = VOCAB_SIZE,
    context: int = typer.Option(None, "--context", min=2, help="Tokens a conversation may take: longer ones are cut after their last exchange that fits, or dropped (default: the --tokenizer run's block size, else 256)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Leave out records that break a rule (and count them) instead of refusing the files."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Also read a folder's symbolic links that lead out of it (skipped and counted otherwise)."),
    as_json: bool = JSON,
) -> None:
    """Turn conversations into a dataset that trains a model to answer: the assistant's tokens only.

    Example: tinygpt prepare chat chats.jsonl --tokenizer runs/cpu --data-dir data/chat
    """
    from ..data.prepare_chat import prepare_chat as run
    from ..interop.pretrained import chat_context, tokenizer_choice

    name = _dataset_name(inputs, name)
    choice = tokenizer_choice(tokenizer, vocab_size)
    if context is None:
        context = chat_context(tokenizer, choice)
    result = run(inputs, data_dir or Path("data") / name, name, choice, context, val_fraction, skip_invalid, glob, follow_symlinks)
    for why in result.skipped[:5]:
        err.print(f"[yellow]skipped[/] {why}", markup=True, soft_wrap=True)
    if len(result.skipped) > 5:
        err.print(f"[yellow]skipped[/] {len(result.skipped) - 5:,} more records", markup=True)
    if as_json:
        print_json({**result.info.to_dict(), "path": str(result.info.path), "reused": result.reused, "skipped": result.skipped})
        return
    _chat_summary(result, name)


def _chat_summary(result, title: str) -> None:
    from rich.table import Table

    info, chat = result.info, result.info.chat
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right", overflow="fold")
    table.add_row("source", info.source + (f" ({info.documents:,} files)" if info.documents > 1 else ""))
    table.add_row("folder", str(info.path))
    table.add_row("tokenizer", f"{'characters' if info.tokenizer == 'char' else 'byte-level BPE'}, {info.vocab_size:,} tokens with the 4 chat tokens")
    for split in ("train", "val"):
        tokens = info.train_tokens if split == "train" else info.val_tokens
        table.add_row(f"{split}", f"{chat['conversations'][split]:,} conversations, {chat['turns'][split]:,} exchanges, "
                                  f"{tokens:,} tokens, {chat['trained_tokens'][split]:,} trained")
    table.add_row("context", f"{chat['context']:,} tokens: {chat['cut']:,} conversations cut, {chat['dropped']:,} dropped")
    if chat["skipped"]:
        table.add_row("skipped", f"{chat['skipped']:,} records (--skip-invalid)")
    out.print(table)
    if result.reused:
        out.print(f"{info.path} is already prepared and intact: nothing to do.")


def vocab(
    path: Path = typer.Argument(None, help="A prepared dataset folder or a UTF-8 text file (default: the most recently prepared dataset under data/)."),
    as_json: bool = JSON,
    limit: int = typer.Option(None, "--limit", min=1, help="Show only the first N rows of the table."),
    show_mask: int = typer.Option(None, "--show-mask", min=1, help="Show conversation N of a chat dataset's training split, its trained tokens told apart (green on a terminal, [[in brackets]] when piped)."),
) -> None:
    """Show the vocabulary: each character and its count, or a BPE's most frequent tokens and its merges.

    Example: tinygpt vocab data/shakespeare
    """
    from ..data.dataset import DATA_DIR, decode_text, latest_dataset, load_dataset, read_source
    from ..errors import UsageError
    from ..data.tokenizer import token_counts
    from ..data.vocab import Vocabulary

    if path is None:
        path = latest_dataset()
        if path is None:
            raise UsageError(f"no prepared dataset under {DATA_DIR}/", "tinygpt prepare text FILE  (or tinygpt prepare shakespeare)")
        err.print(f"[dim]{path}: the most recently prepared dataset[/]")
    if show_mask is not None:
        _show_mask(load_dataset(path), show_mask, as_json)
        return
    if path.is_dir():
        dataset = load_dataset(path)
        tokenizer = dataset.tokenizer
        counts = dataset.token_counts()
    elif path.exists():
        text = decode_text(read_source(str(path)), str(path))
        tokenizer = Vocabulary.from_text(text)
        counts = token_counts(tokenizer.encode_array(text), tokenizer.size)
    else:
        raise UsageError(f"no dataset folder or text file at {path}", "tinygpt prepare shakespeare")
    if tokenizer.kind == "char":
        _char_table(path, tokenizer, counts, as_json, limit)
    else:
        _bpe_tables(path, tokenizer, counts, as_json, limit)


def _show_mask(dataset, n: int, as_json: bool) -> None:
    """Conversation n of the training split, token by token, trained ones told apart (as nanochat's
    visualize_tokenization does): what the loss sees of it."""
    from rich.text import Text

    from ..data.chat import TRAINED, conversation_bounds
    from ..errors import UsageError

    if dataset.train_mask is None:
        raise UsageError(f"{dataset.info.path} holds text, not conversations: it has no loss mask", "tinygpt prepare chat FILE.jsonl")
    bounds = conversation_bounds(dataset.train_mask)
    if n > len(bounds) - 1:
        raise UsageError(f"--show-mask {n}: the training split holds {len(bounds) - 1:,} conversations")
    ids = dataset.train[bounds[n - 1] : bounds[n]].tolist()
    trained = ((dataset.train_mask[bounds[n - 1] : bounds[n]] & TRAINED) > 0).tolist()
    texts = [dataset.tokenizer.decode([i]) for i in ids]
    if as_json:
        print_json({"conversation": n, "tokens": [{"id": i, "text": t, "trained": m} for i, t, m in zip(ids, texts, trained)]})
        return
    line = Text()
    if out.is_terminal:
        for text, on in zip(texts, trained):
            line.append(text, style="bold green" if on else "dim")
    else:  # runs of trained tokens in [[...]]
        for k, (text, on) in enumerate(zip(texts, trained)):
            before, after = k and trained[k - 1], k + 1 < len(trained) and trained[k + 1]
            line.append(("[[" if on and not before else "") + text + ("]]" if on and not after else ""))
    out.print(f"conversation {n} of {len(bounds) - 1:,}: {len(ids):,} tokens, {sum(trained):,} trained "
              f"({'green' if out.is_terminal else 'in [[brackets]]'}); the rest is context the loss skips", markup=False)
    out.print(line, soft_wrap=True)


def _char_table(path: Path, vocab, counts, as_json: bool, limit: int | None) -> None:
    from rich.table import Table

    from ..data.vocab import escape_char

    if as_json:
        print_json({**vocab.to_dict(), "counts": counts.tolist()})
        return
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


def _bpe_tables(path: Path, tokenizer, counts, as_json: bool, limit: int | None) -> None:
    """The most frequent tokens, the first merges, and how many bytes a token covers on average."""
    import numpy as np

    from rich.table import Table

    from ..data.tokenizer import byte_lengths, token_label

    n_bytes = int((counts * byte_lengths(tokenizer)).sum())
    total = int(counts.sum())
    shown = limit or 20
    frequent = [int(i) for i in np.argsort(-counts, kind="stable")[:shown]]
    merges = tokenizer.merges()
    if as_json:
        print_json({"tokenizer": "bpe", "size": tokenizer.size, "tokens": total, "bytes": n_bytes,
                    "bytes_per_token": n_bytes / total,
                    "most_frequent": [{"id": i, "token": tokenizer.token_bytes(i).decode("utf-8", "replace"), "count": int(counts[i])}
                                      for i in frequent],
                    "merges": [list(m) for m in merges[:shown]]})
        return
    out.print(f"byte-level BPE of {path}: {tokenizer.size:,} tokens ({len(merges):,} merges), "
              f"{total:,} tokens for {n_bytes:,} bytes: {n_bytes / total:.2f} bytes per token")
    table = Table(title="most frequent tokens", title_justify="left")
    for col in ("id", "token", "bytes", "count", "share"):
        table.add_column(col, justify="left" if col == "token" else "right")
    for i in frequent:
        table.add_row(str(i), token_label(tokenizer, i), str(len(tokenizer.token_bytes(i))), f"{int(counts[i]):,}",
                      f"{counts[i] / total:.1%}")
    out.print(table)
    first = Table(title="first merges", title_justify="left")
    for col in ("#", "left", "right", "new token"):
        first.add_column(col, justify="right" if col == "#" else "left")
    for n, (left, right) in enumerate(merges[:shown], 1):
        merged = tokenizer.hf.token_to_id(left + right)
        first.add_row(str(n), token_label(tokenizer, tokenizer.hf.token_to_id(left)), token_label(tokenizer, tokenizer.hf.token_to_id(right)),
                      token_label(tokenizer, merged) if merged is not None else "?")
    out.print(first)


def register(app: typer.Typer) -> None:
    app.add_typer(prepare_app, name="prepare")
    app.command("vocab")(vocab)
