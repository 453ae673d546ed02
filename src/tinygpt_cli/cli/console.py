"""Shared rendering helpers: one console for output, one for errors and progress."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

from rich.console import Console

from ..errors import Command, Hint

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _json_safe(obj: object) -> object:
    """`obj` with NaN and infinities as null: JSON has no spelling for them (Python's `NaN` is
    not JSON, and strict parsers refuse it)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def print_json(obj: object) -> None:
    """Machine-readable output: plain, strict JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(_json_safe(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def format_duration(seconds: float | None) -> str:
    """m:ss, or h:mm:ss past an hour; "-" when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def rough_duration(seconds: float) -> str:
    """A duration as a person says it: "45 s", "12 min", "8.0 hours", "3.5 days"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def _option(name: str, value: object) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):  # a switch, on or off
        return flag if value else flag.replace("--", "--no-", 1)
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{flag} {shlex.quote(shown)}"


def render_hint(hint: Hint | None) -> str | None:
    """A core error's hint as the user types it: a `Command` becomes a tinygpt command line."""
    if not isinstance(hint, Command):
        return hint
    words = ["tinygpt", hint.name, *map(shlex.quote, hint.args)]
    words += [_option(name, value) for name, value in hint.options.items()]
    line = " ".join(words)
    if hint.before:
        line = f"{hint.before} {line}"
    return f"{line}  ({hint.why})" if hint.why else line


def say_loaded(path: Path, ckpt) -> None:
    """One dim line on stderr naming the checkpoint read (so a default pick is never a surprise),
    and a note when its metadata has no digest (a file saved by an older tinygpt)."""
    err.print(f"[dim]loaded {path} (iteration {ckpt.iteration:,})[/]", soft_wrap=True)
    if not ckpt.metadata_covered:
        err.print(f"[yellow]note:[/] {path} uses checkpoint format 1: its settings are not covered by its digest, "
                  "only its tensors are", soft_wrap=True)
