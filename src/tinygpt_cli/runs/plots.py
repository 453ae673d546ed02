"""Loss curves: a PNG through matplotlib (an optional extra, imported only when asked for) and a
compact curve drawn with characters for the terminal (no dependencies).

Both read metrics.jsonl records: step records carry `loss` (the training batch loss every few
steps), eval records carry `train_loss` and `val_loss` (estimates over `eval_iters` batches), and
a finished run's last record carries `final_val_loss`: its best checkpoint over the validation
split, drawn as a star.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import TinyGPTError, UsageError
from ..system.fsutil import atomic_path
from ..rundir import finite_number

X_AXES = ("iter", "time")
PLOT_HINT = "pip install 'tinygpt[plot]'"


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TinyGPTError("matplotlib is not installed: plotting needs it", PLOT_HINT) from None


def check_x_axis(x: str) -> None:
    if x not in X_AXES:
        raise UsageError(f"--x {x!r}: choose iter or time")


def loss_series(records: list[dict[str, Any]], x: str = "iter") -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(train, val) as lists of (x, loss): train from step records (eval records' train_loss when
    there are none), val from eval records. `x` is "iter" or "time" (elapsed seconds)."""
    check_x_axis(x)
    key = "iter" if x == "iter" else "elapsed"
    def points(field: str) -> list[tuple[float, float]]:
        return [(r[key], r[field]) for r in records if finite_number(r.get(key)) is not None and finite_number(r.get(field)) is not None]

    return points("loss") or points("train_loss"), points("val_loss")


def final_point(records: list[dict[str, Any]], x: str = "iter") -> tuple[float, float] | None:
    """(x, loss) of the run's final evaluation (lifecycle.py), at the best checkpoint's iteration;
    None for a run that has not finished."""
    finals = [r for r in records if finite_number(r.get("final_val_loss")) is not None]
    if not finals:
        return None
    of = finals[-1].get("final_eval_of_iter")
    if x == "time":  # when the best checkpoint's evaluation was
        of = next((r.get("elapsed") for r in records if r.get("iter") == of and "val_loss" in r), None)
    where = finite_number(of)
    return None if where is None else (where, finals[-1]["final_val_loss"])


LOSS_FIELDS = ("loss", "train_loss", "val_loss", "final_val_loss")


def in_bits_per_byte(records: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The records with their losses in bits per byte, the unit that compares tokenizers; None for
    a run whose log has no bits per byte (tinygpt before 0.2). Train losses are converted with
    the validation split's bytes per token, the one ratio the log records."""
    both = [r for r in records if finite_number(r.get("val_bits_per_byte")) and finite_number(r.get("val_loss"))]
    if not both:
        return None
    factor = both[0]["val_bits_per_byte"] / both[0]["val_loss"]  # 1 / (ln 2 x bytes per token)
    return [{**r, **{k: r[k] * factor for k in LOSS_FIELDS if finite_number(r.get(k)) is not None}} for r in records]


class Picture:
    """A matplotlib figure that a notebook shows inline (Jupyter asks for `_repr_png_`) and that
    `save` writes as a PNG file. `figure` is the matplotlib Figure, to change or save otherwise.

    Only the object-oriented API is used (no pyplot), so no window system and no global figure
    state are involved, and nothing is drawn twice in a notebook."""

    DPI = 110

    def __init__(self, figure, title: str) -> None:
        self.figure, self.title = figure, title

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=self.DPI)
        return buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()

    def __repr__(self) -> str:
        return f"<Picture {self.title!r}: a notebook shows it; .save(path) writes it as a PNG>"

    def save(self, path: str | Path) -> Path:
        """Write the PNG to `path`, atomically."""
        return write_output(path, lambda tmp: tmp.write_bytes(self.png()))


class Page:
    """An HTML picture (coloured text): inline in a notebook (`_repr_html_`), or `save`d as a
    standalone page."""

    def __init__(self, title: str, body: str) -> None:
        self.title, self.body = title, body

    def _repr_html_(self) -> str:
        return self.body

    def __repr__(self) -> str:
        return f"<Page {self.title!r}: a notebook shows it; .save(path) writes it as a web page>"

    def html(self) -> str:
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>
<style>body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; }}</style></head>
<body>{self.body}</body></html>
"""

    def save(self, path: str | Path) -> Path:
        """Write the standalone page to `path`, atomically."""
        return write_output(path, lambda tmp: tmp.write_text(self.html(), encoding="utf-8"))


def plot_runs(runs: list[tuple[str, list[dict[str, Any]]]], x: str = "iter", title: str | None = None,
              y_label: str = "loss (cross-entropy, nats per token)") -> Picture:
    """A train (dashed) and a val (solid) curve per run that has them, as a Picture.

    `runs` holds (label, metrics records) pairs."""
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    series = [(label, *loss_series(records, x)) for label, records in runs]
    seconds = max((p[0] for _, t, v in series for p in t + v), default=0.0)
    scale, unit = (60.0, "min") if x == "time" and seconds > 180 else (1.0, "s")
    single = len(runs) == 1
    for i, (label, train, val) in enumerate(series):
        color = f"C{i % 10}"
        if train:
            ax.plot([p[0] / scale for p in train] if x == "time" else [p[0] for p in train], [p[1] for p in train],
                    color=color, linestyle="--", linewidth=1, alpha=0.7, label="train" if single else f"{label} (train)")
        if val:
            ax.plot([p[0] / scale for p in val] if x == "time" else [p[0] for p in val], [p[1] for p in val],
                    color=color, linestyle="-", linewidth=2, marker="o", markersize=3, label="val (estimates)" if single else f"{label} (val)")
        final = final_point(runs[i][1], x)
        if final is not None:
            ax.plot([final[0] / scale if x == "time" else final[0]], [final[1]], color=color, linestyle="none", marker="*", markersize=12,
                    label="val over the split, best checkpoint" if single else f"{label} (val over the split)")
    ax.set_xlabel("iteration" if x == "iter" else f"wall time ({unit})")
    ax.set_ylabel(y_label)
    title = title or ("loss" if single else "loss by run")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")
    return Picture(fig, title)


def write_output(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file the user asked for (a PNG, an HTML page) with `write(temporary path)`,
    atomically (a reader never sees half a file); a path that cannot be written is one error line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            write(tmp)
    except OSError as e:
        raise TinyGPTError(f"cannot write {path}: {e.strerror or e}", "pass a path in a folder you can write to") from e
    return path


def _fmt_loss(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.3g}"


def terminal_curve(records: list[dict[str, Any]], width: int = 60, height: int = 12, ascii: bool = False) -> str:
    """Train and val loss against iteration, drawn with characters; "" when there is nothing to draw.

    Train points are averaged per column (batch losses are noisy); val points are drawn on top.
    """
    width, height = max(8, width), max(3, height)
    train, val = loss_series(records, "iter")
    points = train + val
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    lo, hi = min(p[1] for p in points), max(p[1] for p in points)
    if hi - lo < 1e-9:
        pad = max(abs(hi) * 0.05, 0.05)
        lo, hi = lo - pad, hi + pad
    col = lambda it: 0 if x1 == x0 else round((it - x0) / (x1 - x0) * (width - 1))  # noqa: E731
    row = lambda y: round((hi - y) / (hi - lo) * (height - 1))  # noqa: E731
    train_mark, val_mark = (".", "o") if ascii else ("·", "●")
    grid = [[" "] * width for _ in range(height)]
    columns: dict[int, list[float]] = {}
    for it, loss in train:
        columns.setdefault(col(it), []).append(loss)
    for c, losses in columns.items():
        grid[row(sum(losses) / len(losses))][c] = train_mark
    for it, loss in val:
        grid[row(loss)][col(it)] = val_mark
    mid = (height - 1) // 2
    labels = {0: _fmt_loss(hi), height - 1: _fmt_loss(lo), mid: _fmt_loss(hi - mid / (height - 1) * (hi - lo))}
    pad = max(len(s) for s in labels.values())
    tick, bar, corner, dash = ("+", "|", "+", "-") if ascii else ("┤", "│", "└", "─")
    lines = [f"{labels[r]:>{pad}} {tick}" + "".join(grid[r]).rstrip() if r in labels else " " * pad + f" {bar}" + "".join(grid[r]).rstrip()
             for r in range(height)]
    lines.append(" " * pad + f" {corner}" + dash * width)
    left, right = f"{x0:g}", f"{x1:g} iter"
    lines.append(" " * (pad + 2) + left + " " * max(1, width - len(left) - len(right)) + right)
    legend = f"{train_mark} train" + (f"   {val_mark} val" if val else "")
    lines.append(" " * (pad + 2) + legend)
    return "\n".join(lines)
