"""Shared rendering helpers: one console for output, one for errors and progress."""

from __future__ import annotations

import json
import sys

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_json(obj: object) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def format_duration(seconds: float | None) -> str:
    """m:ss, or h:mm:ss past an hour; "-" when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
