"""`tinygpt attention`, `predict`, `surprise` and `embeddings`: pictures of a trained model's inside."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import out, print_json
from .options import CHECKPOINT, DEVICE, JSON, RUN, TEMPERATURE, TOP_K, TOP_P

PROMPT = typer.Option(..., "--prompt", help="The text the model reads (its last block_size tokens, when longer).")
BAR = 20  # characters of a probability bar at 100%


def _load(run: Path | None, checkpoint: Path | None, device: str):
    from ..checkpoint import load_model
    from ..system.devices import pick_device
    from ..rundir import resolve_checkpoint
    from ..system.process import init_process

    path = resolve_checkpoint(run, checkpoint)
    model, ckpt = load_model(path, pick_device(device))
    init_process()
    return model, ckpt


def _prompt(tokenizer, text: str, block_size: int) -> list[int]:
    from ..inside.measure import prompt_ids
    from .console import err

    ids, dropped = prompt_ids(tokenizer, text, block_size)
    if dropped:
        err.print(f"[yellow]note:[/] the prompt is longer than the model's context: its first {dropped:,} tokens are left out")
    return ids


def _shade(value: float) -> str:
    """A background colour from white (0) to deep blue (1)."""
    v = max(0.0, min(1.0, value))
    return f"on rgb({int(255 - 215 * v)},{int(255 - 175 * v)},255)"


def _tenths(weight: float) -> str:
    return "·" if weight < 0.05 else str(min(9, max(1, int(weight * 10 + 0.5))))


def _heatmap(grid, labels: list[str], title: str) -> None:
    """One head's weights as shaded cells, the last tokens that fit the terminal's width (rows
    and columns), never a cut cell."""
    from rich.table import Table

    n = len(labels)
    # The position right-aligned, then the token left-aligned, each in a column of its own: the
    # labels line up however long a BPE token is.
    index, token = len(str(n - 1)), max(map(len, labels))
    rows = [f"{t:>{index}} {label:<{token}} " for t, label in enumerate(labels)]
    cell = max(3, len(str(n - 1)))
    shown = max(1, min(n, (out.width - max(map(len, rows))) // cell))
    first = n - shown
    table = Table(title=title, title_justify="left", show_header=True, box=None, padding=(0, 0))
    table.add_column("", justify="left", no_wrap=True)
    for s in range(first, n):
        table.add_column(str(s), justify="center", no_wrap=True, width=cell)
    for t in range(first, n):
        cells = [" " if s > t else _tenths(grid[t, s]) for s in range(first, n)]
        table.add_row(rows[t], *[f"[{_shade(grid[t, s])}]{c:^{cell}}[/]" for s, c in zip(range(first, n), cells)])
    out.print(table)
    if first:
        out.print(f"the last {shown} of {n} tokens, as many as fit this terminal (so a row here may sum to less than 1): "
                  "--png or --json shows them all")
    out.print("each row is a token looking back at the columns: the weight in tenths (9 for 0.85 or more, · under 0.05); a row sums to 1")


def attention(
    prompt: str = PROMPT,
    run: Path = RUN,
    checkpoint: Path = CHECKPOINT,
    layer: int = typer.Option(None, "--layer", min=0, help="The layer shown in the terminal (default: the last)."),
    head: int = typer.Option(0, "--head", min=0, help="The head shown in the terminal."),
    png: Path = typer.Option(None, "--png", help="Also write every layer and head, as a grid, to this PNG."),
    device: str = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Where each token of the prompt looks: the attention weights of every layer and head.

    Example: tinygpt attention --run runs/cpu --prompt "ROMEO: I" --layer 3 --head 1
    """
    from ..errors import UsageError
    from ..inside.measure import attention as weights_of
    from ..inside.measure import token_labels

    model, ckpt = _load(run, checkpoint, device)
    tokenizer = ckpt.tokenizer
    ids = _prompt(tokenizer, prompt, model.config.block_size)
    weights = weights_of(model, ids)  # (layers, heads, T, T)
    labels = token_labels(tokenizer, ids)
    n_layer, n_head = weights.shape[:2]
    layer = n_layer - 1 if layer is None else layer
    if layer >= n_layer or head >= n_head:
        raise UsageError(f"--layer {layer} --head {head}: the model has {n_layer} layers of {n_head} heads (numbered from 0)")
    if png is not None:
        from ..inside.pictures import attention_grid

        attention_grid(weights, labels).save(png)
    if as_json:
        print_json({"tokens": labels, "ids": ids, "weights": weights.tolist(), **({"png": str(png)} if png else {})})
        return
    _heatmap(weights[layer, head], labels, f"layer {layer}, head {head}")
    if png is not None:
        out.print(f"wrote {png}")


def predict(
    prompt: str = PROMPT,
    run: Path = RUN,
    checkpoint: Path = CHECKPOINT,
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    show: int = typer.Option(10, "--show", min=1, help="Candidates to list."),
    device: str = DEVICE,
    as_json: bool = JSON,
) -> None:
    """The next token's probabilities after the prompt: the model's own, and as generate would draw
    them under --temperature, --top-k and --top-p.

    Example: tinygpt predict --run runs/cpu --prompt "ROMEO:" --temperature 0.5 --top-k 5
    """
    from ..inside.measure import candidates_report, sampling_settings, token_labels, top_candidates
    from ..inside.measure import predict as distribution

    model, ckpt = _load(run, checkpoint, device)
    tokenizer = ckpt.tokenizer
    ids = _prompt(tokenizer, prompt, model.config.block_size)
    shaped, raw = distribution(model, ids, temperature, top_k, top_p)
    candidates = top_candidates(shaped, raw, show)
    if as_json:
        print_json({"prompt": prompt, "settings": {"temperature": temperature, "top_k": top_k, "top_p": top_p},
                    "candidates": candidates_report(tokenizer, candidates)})
        return
    labels = token_labels(tokenizer, [c.token_id for c in candidates])
    from rich.table import Table

    table = Table(title=f"the next token after {prompt!r}", title_justify="left")
    for col, justify in (("token", "left"), ("model", "right"), ("", "left"), ("generate", "right"), (" ", "left")):
        table.add_column(col, justify=justify, no_wrap=True, min_width=len(col))
    for c, label in zip(candidates, labels):
        table.add_row(label, f"{c.model_probability:.1%}", "█" * round(c.model_probability * BAR),
                      f"{c.probability:.1%}", "[green]" + "█" * round(c.probability * BAR) + "[/]")
    out.print(table)
    out.print(f"model: its own probabilities; generate: what generate draws from with {sampling_settings(temperature, top_k, top_p)}")


def surprise(
    text: str = typer.Argument(..., help="The text to score, or the path of a UTF-8 text file."),
    run: Path = RUN,
    checkpoint: Path = CHECKPOINT,
    html: Path = typer.Option(None, "--html", help="Also write the coloured text as a standalone HTML page."),
    device: str = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Every token of a text, coloured by how surprised the model was (its loss there), with the
    total loss and bits per byte.

    Example: tinygpt surprise --run runs/cpu "ROMEO: What, ho! apothecary!"
    """
    from ..data.dataset import decode_text
    from ..system.fsutil import read_user_file
    from ..inside.measure import MAX_SURPRISE_BYTES, SURPRISE_TOO_LARGE
    from ..inside.measure import surprise as score

    path = Path(text)
    try:
        is_file = len(text) < 4096 and path.is_file()
    except OSError:  # a text too long to be a file name
        is_file = False
    if is_file:
        text = decode_text(read_user_file(path, MAX_SURPRISE_BYTES, "text to score", SURPRISE_TOO_LARGE), str(path))
    model, ckpt = _load(run, checkpoint, device)
    tokenizer = ckpt.tokenizer
    result = score(model, tokenizer, text)
    report = result.report(tokenizer)
    labels = report["tokens"]
    if html is not None:
        from ..inside.pictures import surprise_page

        surprise_page(labels, result.losses, result.loss, result.bits_per_byte).save(html)
    if as_json:
        print_json(report | ({"html": str(html)} if html else {}))
        return
    from rich.text import Text

    scale = max(float(result.losses.max()), 1e-9)
    coloured = Text(labels[0])
    for label, loss in zip(labels[1:], result.losses):
        coloured.append(label, style=f"on rgb(255,{int(255 - 200 * loss / scale)},{int(255 - 200 * loss / scale)})")
    out.print(coloured)
    out.print(f"{len(result.losses):,} tokens scored: loss {result.loss:.4f}, {result.bits_per_byte:.3f} bits per byte; "
              f"redder = more surprised (up to {scale:.2f} nats)")
    if html is not None:
        out.print(f"wrote {html}")


def embeddings(
    run: Path = RUN,
    checkpoint: Path = CHECKPOINT,
    png: Path = typer.Option(None, "--png", help="Write the map (and, with learned positions, their similarities) to this PNG."),
    show: int = typer.Option(8, "--show", min=1, help="Tokens listed at each end of each axis."),
    device: str = DEVICE,
    as_json: bool = JSON,
) -> None:
    """A 2-D map of the token embeddings (their two principal axes), each point labelled with its
    token; with learned positions, how alike the position embeddings are.

    Example: tinygpt embeddings --run runs/cpu --png embeddings.png
    """
    import numpy as np

    from ..inside.measure import embedding_report, position_embeddings, training_counts

    model, ckpt = _load(run, checkpoint, device)
    tokenizer = ckpt.tokenizer
    report = embedding_report(model, tokenizer)
    coords, explained, labels = np.array(report["coordinates"]), np.array(report["explained_variance"]), report["tokens"]
    positions = position_embeddings(model)
    if png is not None:
        from ..inside.pictures import embedding_map

        embedding_map(coords, explained, labels, positions, training_counts(ckpt)).save(png)
    if as_json:
        print_json(report | ({"png": str(png)} if png else {}))
        return
    for axis in range(coords.shape[1]):
        order = np.argsort(coords[:, axis])
        low = " ".join(labels[i] for i in order[:show])
        high = " ".join(labels[i] for i in order[::-1][:show])
        out.print(f"axis {axis + 1} ({explained[axis]:.0%} of the variance):  {low}  …  {high}", markup=False)
    if png is not None:
        out.print(f"wrote {png}")


def register(app: typer.Typer) -> None:
    for command in (attention, predict, surprise, embeddings):
        app.command(command.__name__)(command)
